"""Data-parallel training: what each process trains on and how their gradients agree.

The loop runs unchanged in one process or in many started by `accelerate launch`.
Every process builds the same epoch order of optimizer steps (`batch_size x processes
x gradient_accumulation_steps` examples each) and trains on its own slice of every
step; only the trainable parts (the tuners: soft prompt, LoRA layers, a VLM's
projection) are wrapped for gradient averaging. The frozen backbone stays a plain
replica on every device: it has no gradients to synchronise.
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator, DistributedType
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, get_int_from_env
from torch import nn

from softprompt.backbones.base import Backbone
from softprompt.config.run import ConfigError, TrainingConfig
from softprompt.data.batching import split_step
from softprompt.tuners.tuner_set import TunerSet

logger = logging.getLogger("softprompt")

# accelerate's own sharding engines: they would wrap the whole model and own saving and
# evaluation; the loop shards itself (`training.sharding: fsdp`, train/sharding.py) and
# keeps checkpoints in one unsharded format. On a CPU accelerate even drops FSDP silently
# for DDP, so its config is read from the launcher's variables too.
UNSUPPORTED = {
    DistributedType.FSDP: "FSDP",
    DistributedType.DEEPSPEED: "DeepSpeed",
    DistributedType.MEGATRON_LM: "Megatron-LM",
}
LAUNCHER_FLAGS = {
    "ACCELERATE_USE_FSDP": "FSDP",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}


def sharding_engine_problem(name: str) -> str:
    """The message for an accelerate config that asks for a sharding engine."""
    return (
        f"accelerate's {name} is not used by softprompt: set training.sharding: fsdp (FSDP2 "
        "over the transformer blocks that train, checkpoints saved whole) and launch with "
        "a plain multi-process config, configs/accelerate/ddp.yaml or cpu_2proc.yaml, or "
        "torchrun (see the README's 'Multi-process training')"
    )


def _launched_processes() -> int:
    # The variables torchrun and the MPI launchers set (accelerate reads the same ones).
    names = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]
    return get_int_from_env(names, 1)


def _has_device() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6 knows every device type
    return probe.is_available() if probe is not None else torch.cuda.is_available()


def make_accelerator(t: TrainingConfig) -> Accelerator:
    """The run's Accelerator, refusing set-ups the loop would not train correctly.

    Raises:
        ConfigError: an accelerate FSDP/DeepSpeed/Megatron config, or processes that did not join
            one group (each would train alone and overwrite the others' files).
    """
    launched = _launched_processes()
    for variable, engine in LAUNCHER_FLAGS.items():
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise ConfigError(sharding_engine_problem(engine))
    if os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1") != "1":
        logger.warning(
            "accelerate's gradient_accumulation_steps is ignored; "
            "set training.gradient_accumulation_steps instead"
        )
    precision = "bf16" if t.bf16 else "no"
    if launched == 1:
        release_precision(precision)
    accelerator = Accelerator(
        mixed_precision=precision,
        # Passed explicitly so an accelerate config cannot change it: the loop
        # accumulates itself and normalises the loss by the step's tokens.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
        # accelerate runs several processes on CPU (gloo) only when told to; without
        # any GPU that is the only way they can work together.
        cpu=launched > 1 and not _has_device(),
    )
    name = UNSUPPORTED.get(accelerator.distributed_type)
    if name is not None:
        raise ConfigError(sharding_engine_problem(name))
    if accelerator.num_processes != launched:
        raise ConfigError(
            f"launched as {launched} processes but they did not form one group "
            f"(accelerate sees {accelerator.num_processes}, {accelerator.distributed_type}); "
            "use one of the configs in configs/accelerate/"
        )
    return accelerator


def release_precision(precision: str) -> None:
    """Let one process train in one precision after another (a notebook, a script of runs).

    accelerate keeps one AcceleratorState per process and refuses a second precision. In a
    single process nothing else depends on it, so it is set anew; the process group
    (PartialState) is left alone.
    """
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != precision:
        AcceleratorState._reset_state()


class TrainableParts(nn.Module):
    """Everything that trains, as one module whose forward is the training loss.

    Gradient averaging (DDP) hooks into the module that is called, so the loss must be
    computed through it: the trainable tuners' modules (prompt, LoRA layers, a projection)
    are its submodules, wherever they live (LoRA layers sit inside the backbone); the frozen
    backbone is only referenced, never registered (it needs no synchronising and would
    otherwise be broadcast at start-up).

    Args:
        backbone: the model the tuners act on.
        tuners: the run's tuners.
    """

    def __init__(self, backbone: Backbone, tuners: TunerSet) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(tuners.trainable_modules())
        self._backbone = backbone  # plain objects: not registered as submodules
        self._tuners = tuners

    def forward(
        self, batch: dict, prompt_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed label-token cross-entropy of the batch and its label-token count.

        Args:
            prompt_ids: (B,) each row's prompt in a bank; None: one prompt for all rows.
        """
        rows = len(batch["labels"])  # training batches always have targets
        return self._backbone.loss_sum(batch, self._tuners.prompt_input(rows, prompt_ids))


def micro_batches(
    step: list[int], process_index: int, num_processes: int, accumulation: int
) -> list[list[int]]:
    """This process's `accumulation` micro-batches of one optimizer step.

    The step is cut into `accumulation x num_processes` chunks; round r gives process p
    chunk `r * num_processes + p`. A short last step can leave a chunk empty: every
    process must still run as many backward passes as the others (the last one
    synchronises gradients), so the caller runs an empty one as a zero-weighted pass.
    """
    chunks = split_step(step, accumulation * num_processes)
    return [chunks[r * num_processes + process_index] for r in range(accumulation)]


def global_sum(accelerator: Accelerator, value: float) -> float:
    """`value` summed over all processes (itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    total = torch.tensor(value, dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(total, reduction="sum"))


def global_max(accelerator: Accelerator, value: int) -> int:
    """The largest of every process's `value` (itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    largest = torch.tensor(value, dtype=torch.int64, device=accelerator.device)
    return int(accelerator.reduce(largest, reduction="max"))
