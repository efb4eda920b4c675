"""Sharded training (`training.sharding: fsdp`): FSDP2 over the transformer blocks that train.

Data parallelism keeps everything that trains, its gradients and its AdamW state whole on
every process: about 16 bytes per trained parameter (float32 weights, gradients and two
moments), 112 GB for a 7B full fine-tune. Sharding splits the big part of that over the
processes:

- every transformer block (the model's `_no_split_modules`, as accelerate's transformer
  wrap policy picks them) that holds a trainable parameter or LoRA layers becomes an FSDP2
  unit (`fully_shard`): its parameters, gradients and optimizer state are split on dim 0,
  all-gathered for each forward and backward, gradients reduce-scattered;
- the rest of what trains (soft prompts, prefix encoders, a VLM's projection, a full
  fine-tune's embeddings and head) is replicated, as PEFT's FSDP wrap policy keeps the
  tuners apart: the prompt splice reads the embedding table outside the model's forward,
  where FSDP's hooks do not run, and these parts are small. Their gradients are averaged
  with one all-reduce per step.

Evaluation, generation and saving run on gathered weights (`Sharding.gathered`): each unit
is all-gathered once and kept whole, so every process evaluates its own share with no
collective per forward (processes generate different lengths), and state dicts hold whole
tensors. Checkpoints and best/ are therefore the unsharded format: a sharded run resumes
under another process count, unsharded, and PEFT loads its best/.

The same code runs on CPUs (gloo) and GPUs (NCCL): the device mesh takes the run's device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import PreTrainedModel

logger = logging.getLogger("softprompt")


class Sharding:
    """No sharding: every process holds the whole model (the hooks below do nothing)."""

    strategy = "none"

    def sync_gradients(self, params: list[nn.Parameter]) -> None:
        """Average the replicated parameters' gradients (DDP already did)."""

    def clip_grad_norm(self, accelerator: Accelerator, params: list, max_norm: float) -> None:
        accelerator.clip_grad_norm_(params, max_norm)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Whole weights inside (for evaluation and saving)."""
        yield

    def gather_for_good(self) -> None:
        """Whole weights from now on (the run's last evaluations, loading best/)."""

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state dict with whole tensors (collective when sharded)."""
        return optimizer.state_dict()

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Let `optimizer.load_state_dict` take whole (unsharded) state."""

    def report(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {"strategy": self.strategy}


class FsdpSharding(Sharding):
    """FSDP2 units over the blocks that train; see the module docstring."""

    strategy = "fsdp"

    def __init__(self, units: list[FSDPModule], estimate: list[dict[str, int]]) -> None:
        self.units = units
        self.world = dist.get_world_size()
        self.estimate = estimate  # per process, from the shapes before sharding
        self._gathered_for_good = False

    def sync_gradients(self, params: list[nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None and not isinstance(p, DTensor)]
        for dtype in sorted({g.dtype for g in grads}, key=str):
            same = [g for g in grads if g.dtype == dtype]
            flat = torch._utils._flatten_dense_tensors(same)  # one collective per dtype
            dist.all_reduce(flat)
            flat /= self.world
            for grad, synced in zip(
                same, torch._utils._unflatten_dense_tensors(flat, same), strict=True
            ):
                grad.copy_(synced)

    def clip_grad_norm(self, accelerator: Accelerator, params: list, max_norm: float) -> None:
        # torch's clip_grad_norm_ over a mix of sharded and whole gradients: the squared
        # norms of the local shards are summed over processes, the replicated ones counted once.
        grads = [p.grad for p in params if p.grad is not None]
        sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
        whole = [g for g in grads if not isinstance(g, DTensor)]
        squares = torch.zeros((), dtype=torch.float32, device=accelerator.device)
        for g in sharded:
            squares += g.detach().float().pow(2).sum()
        dist.all_reduce(squares)
        for g in whole:
            squares += g.detach().float().pow(2).sum()
        coefficient = torch.clamp(max_norm / (squares.sqrt() + 1e-6), max=1.0)
        for g in grads:
            g.mul_(float(coefficient))

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        if self._gathered_for_good:
            yield
            return
        hooks = self._unshard_all()
        try:
            yield
        finally:
            _restore_state_dict_hooks(hooks)
            for unit in self.units:
                unit.reshard()
                unit.set_reshard_after_forward(True)

    def gather_for_good(self) -> None:
        if not self._gathered_for_good:
            self._unshard_all()
            self._gathered_for_good = True

    def _unshard_all(self) -> list:
        # Every process all-gathers every unit in the same order; afterwards a forward
        # runs no collective, since nothing is resharded after it.
        for unit in self.units:
            unit.set_reshard_after_forward(False)
            unit.unshard()
        return _suppress_state_dict_hooks(self.units)

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        packed = optimizer.state_dict()
        # New dicts: the packed entries are the optimizer's own state objects.
        state = {
            index: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in entry.items()}
            for index, entry in packed["state"].items()
        }
        return {**packed, "state": state}

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_load_state_dict_pre_hook(_shard_loaded_state)

    def report(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = [
            v
            for entry in optimizer.state.values()
            for v in entry.values()
            if isinstance(v, torch.Tensor) and v.dim() > 0
        ]
        own = {
            "trainable_parameters": sum(_local_numel(p) for p in params),
            "optimizer_state_elements": sum(_local_numel(v) for v in state),
        }
        ranks = [None] * self.world
        dist.all_gather_object(ranks, own)
        return {
            "strategy": self.strategy,
            "processes": self.world,
            "units": len(self.units),
            "trainable_parameters": sum(p.numel() for p in params),
            "sharded_trainable_parameters": sum(p.numel() for p in params if _is_shard(p)),
            "optimizer_state_elements": sum(v.numel() for v in state),
            "per_process": ranks,
            "estimate": self.estimate,
        }


def _is_shard(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


# nn.Module's tables of the hooks FSDP2 adds around state dicts (see below).
_STATE_DICT_HOOKS = (
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _suppress_state_dict_hooks(units: list[nn.Module]) -> list:
    """Let `state_dict` / `load_state_dict` see the gathered weights.

    FSDP2 hooks both to reshard first (state dicts of sharded tensors, `load_state_dict`
    into shards), which would free the gathered weights on the one process that saves
    and leave the others waiting for it at the next forward. While gathered, the saved
    bundle is built, and best/ loaded, from the whole weights instead; the hooks come
    back when the weights are resharded.
    """
    saved = []
    for unit in units:
        for module in unit.modules():
            hooks = {name: module.__dict__[name] for name in _STATE_DICT_HOOKS}
            saved.append((module, hooks))
            for name, table in hooks.items():
                setattr(module, name, type(table)())
    return saved


def _restore_state_dict_hooks(saved: list) -> None:
    for module, hooks in saved:
        for name, table in hooks.items():
            setattr(module, name, table)


def _local_numel(tensor: torch.Tensor) -> int:
    return tensor.to_local().numel() if isinstance(tensor, DTensor) else tensor.numel()


def _shard_loaded_state(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """Whole saved moments -> this process's shards of the parameters they belong to.

    Every process reads the same checkpoint, so each takes its own chunk locally
    (`src_data_rank=None`: no communication).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in state_dict["state"].items():
        param = params[int(index)]
        state[index] = {
            key: _as_shard(value, param) if key != "step" else value for key, value in entry.items()
        }
    return {**state_dict, "state": state}


def _as_shard(value: Any, param: torch.Tensor) -> Any:
    if not isinstance(param, DTensor) or not isinstance(value, torch.Tensor):
        return value
    if isinstance(value, DTensor) or value.dim() == 0:
        return value
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"optimizer state of shape {tuple(value.shape)} for {tuple(param.shape)}")
    return distribute_tensor(
        value.to(param.device), param.device_mesh, param.placements, src_data_rank=None
    )


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks: modules of the classes its `_no_split_modules` names."""
    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            names.update(module._no_split_modules or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard: those holding a trainable parameter or LoRA layers."""
    return [
        block
        for block in transformer_blocks(model)
        if any(p.requires_grad for p in block.parameters())
        or any(isinstance(m, LoraLayer) for m in block.modules())
    ]


def shard_for_training(
    sharding: str, accelerator: Accelerator, model: nn.Module, trainable: list[nn.Parameter]
) -> Sharding:
    """The run's sharding, applied to `model` (before its optimizer is built).

    Args:
        trainable: every parameter that trains, inside `model` or not (a soft prompt).

    With one process, or nothing in a block that trains, nothing is sharded (logged).
    """
    if sharding != "fsdp":
        return Sharding()
    if accelerator.num_processes == 1:
        logger.info("training.sharding: fsdp with one process: nothing to shard")
        return Sharding()
    units = shard_units(model)
    if not units:
        logger.warning(
            "training.sharding: fsdp: no transformer block trains here (only prompts, a "
            "prefix or a projection), so everything that trains is replicated, as without "
            "sharding"
        )
    world = accelerator.num_processes
    params = _unique([*model.parameters(), *trainable])
    estimate = [elements_per_process(params, units, world, rank) for rank in range(world)]
    mesh = init_device_mesh(accelerator.device.type, (world,))
    for unit in reversed(units):  # inner blocks first: a unit owns what its children do not
        fully_shard(unit, mesh=mesh)
    logger.info(
        "training.sharding: fsdp: %d transformer blocks sharded over %d processes",
        len(units),
        accelerator.num_processes,
    )
    return FsdpSharding(units, estimate)


def shard_rows(rows: int, world: int, rank: int) -> int:
    """Rows of a dim-0 shard: FSDP2 splits as `torch.chunk` does (the last may be short)."""
    size = -(-rows // world)
    return max(0, min(size, rows - rank * size))


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    return list({id(p): p for p in params}.values())  # tied weights count once


def elements_per_process(
    params: list[nn.Parameter], units: list[nn.Module], world: int, rank: int
) -> dict[str, int]:
    """What process `rank` holds of `params` (each once) once `units` are sharded over
    `world` processes, in elements: trainable and frozen, sharded (a dim-0 slice) and
    replicated (whole).

    Counted from the parameters' shapes, so it works on a model built on the meta device.
    """
    in_units = {id(p) for unit in units for p in unit.parameters()}
    held = dict.fromkeys(
        ("trainable_parameters", "trainable_sharded", "frozen_sharded", "frozen_replicated"), 0
    )
    for param in params:
        sharded = id(param) in in_units
        count = param.numel()
        if sharded and param.dim() > 0:
            count = shard_rows(param.shape[0], world, rank) * (param.numel() // param.shape[0])
        if param.requires_grad:
            held["trainable_parameters"] += count
            held["trainable_sharded"] += count if sharded else 0
        else:
            held["frozen_sharded" if sharded else "frozen_replicated"] += count
    return held


def bytes_per_process(held: dict[str, int], frozen_bytes: int = 2) -> int:
    """Memory of `elements_per_process`: each trainable element has float32 weights,
    gradients and two AdamW moments (16 bytes); frozen ones their storage dtype."""
    frozen = held["frozen_sharded"] + held["frozen_replicated"]
    return 16 * held["trainable_parameters"] + frozen_bytes * frozen
