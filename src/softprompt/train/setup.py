"""Setting a training run up: named steps that wire everything the loop needs into a `Run`.

`setup_run` runs the steps in order (run directory, model, data, tuners, optimizer,
state) and builds the `Run` complete, by keyword. The `Run` is the wiring and is never
reassigned; what the loop changes lives apart from it, in `Run.state` (the position,
saved with every checkpoint) and `Run.loop` (the loop's own bookkeeping). The loop
(loop.py) is a few named steps over this object: `train_step`, `evaluate_run`,
`save_run_checkpoint`, `finish`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from transformers import get_scheduler

from softprompt.artifacts.bundle import read_bundle
from softprompt.artifacts.fingerprint import fingerprint
from softprompt.artifacts.manifest import write_bytes_atomically
from softprompt.backbones.base import Backbone, EncodeSettings
from softprompt.backbones.from_config import backbone_from_config, encode_settings
from softprompt.config.run import ConfigError, RunConfig, TrainingConfig, config_yaml
from softprompt.data.splits import load_split, load_split_with_info
from softprompt.tasks.kinds import Task, task_from_config
from softprompt.train.banks import bank_records, load_multitask_data
from softprompt.train.checkpoint import (
    CheckpointError,
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    validate_checkpoint,
)
from softprompt.train.interrupt import DeferredInterrupt
from softprompt.train.parallel import TrainableParts, make_accelerator
from softprompt.train.resume_fit import check_fits_run
from softprompt.train.run_files import (
    MetricsLog,
    clear_earlier_run,
    earlier_run_outputs,
    prompt_task_record,
    save_context,
    save_initial_prompt,
)
from softprompt.train.sharding import Sharding, shard_for_training
from softprompt.tuners.spec import family_method_problem
from softprompt.tuners.tuner_set import TunerSet

logger = logging.getLogger("softprompt")


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "perplexity" in metric


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """`auto` -> newest complete checkpoint of the run (None if there is none)."""
    if resume == "auto":
        return find_latest_checkpoint(run_dir)
    return Path(resume)


@dataclass
class LoopState:
    """What the loop changes besides the saved position (`Run.state`); never saved."""

    # The step of the newest checkpoint on disk (written, or resumed from); -1: none yet.
    last_saved: int = -1
    interrupt: DeferredInterrupt | None = None  # installed while the step loop runs


@dataclass(frozen=True, kw_only=True, eq=False)
class Run:
    """One training run's wiring, built complete by `setup_run` and never reassigned.

    The mutable parts are `state` (TrainState: the position and bookkeeping saved with
    every checkpoint) and `loop` (LoopState); the loop steps update those only.
    """

    config: RunConfig
    accelerator: Accelerator
    run_dir: Path
    backbone: Backbone
    tuners: TunerSet
    parts: torch.nn.Module  # the trainable tuners, DDP-wrapped when several processes
    sharding: Sharding  # training.sharding: how the processes split what trains
    optimizer: torch.optim.Optimizer
    scheduler: Any
    task: Task
    settings: EncodeSettings
    train_examples: list
    val_examples: list
    lengths: list[int]
    log: MetricsLog
    context: dict[str, Any]  # what saved adapters record (base model, fingerprint, task)
    examples_per_step: int
    total_steps: int
    greater_is_better: bool
    progress: bool
    skipped: Any = None
    # Several prompts (train/banks.py): a multi-task run's tasks and each training
    # example's prompt id; an ensemble's member count (each row runs once per member).
    task_views: list | None = None
    prompt_ids: list[int] | None = None
    replicas: int = 1
    state: TrainState = field(default_factory=TrainState)
    loop: LoopState = field(default_factory=LoopState)

    @property
    def training(self) -> TrainingConfig:
        return self.config.training

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def save_adapters(self, directory: Path) -> None:
        self.tuners.save(directory, self.context)


@dataclass(frozen=True)
class TrainingData:
    """A run's examples: one task's, or a multi-task run's mixed (with its task views)."""

    task: Task  # a multi-task run's first task
    train_examples: list  # prepared by their task
    val_examples: list  # raw; (task index, example) pairs in a multi-task run
    lengths: list[int]
    skipped: Any = None  # the skipped-input report
    task_views: list | None = None
    prompt_ids: list[int] | None = None  # each training example's prompt in the bank


def setup_run(config: RunConfig, resume: str | None, progress: bool) -> Run:
    """Build the backbone, data, tuners, optimizer and state of a run (resumed if asked).

    The order of the steps is part of reproducibility: the seed is set before the
    backbone is built, the tuners are initialised after the data is read, and a resumed
    checkpoint's random state is restored last.
    """
    t = config.training
    if not config.tasks and config.data.train_path is None:
        # Said before the model loads, which can take minutes.
        raise ConfigError("data.train_path is required for training")
    accelerator = make_accelerator(t)
    run_dir = _setup_run_dir(config, resume, accelerator)
    backbone = _setup_model(config, accelerator)
    fp = fingerprint(backbone.word_embeddings(), backbone.tokenizer)  # before any training
    data = load_training_data(config, backbone)
    context = save_context(config, backbone, fp, prompt_task_record(config, backbone, data.task))
    tuners, replicas = _setup_tuners(config, backbone, data, context)
    if accelerator.is_main_process:  # kept from the first start: `softprompt inspect` drift
        save_initial_prompt(run_dir, tuners, context, keep_existing=bool(resume))
    _setup_training_modes(t, backbone, accelerator)
    examples_per_step, total_steps = _step_counts(t, accelerator, len(data.train_examples))
    checkpoint = agreed_checkpoint(resume, run_dir, accelerator)
    payload = validate_checkpoint(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:  # whole weights load before they are sharded
        load_resumed_adapters(checkpoint, tuners, context)
    trainable = [p for group in tuners.param_groups() for p in group["params"]]
    sharding = shard_for_training(t.sharding, accelerator, backbone.model, trainable)
    parts, optimizer, scheduler = _setup_optimizer(
        t, accelerator, TrainableParts(backbone, tuners), tuners, total_steps, sharding
    )
    log = MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process, t.report_to)
    state = _setup_state(
        resume, checkpoint, payload, optimizer, scheduler, log,
        rank=accelerator.process_index, batch_size=t.batch_size,
        examples_per_step=examples_per_step,
    )  # fmt: skip
    return Run(
        config=config, accelerator=accelerator, run_dir=run_dir, backbone=backbone,
        tuners=tuners, parts=parts, sharding=sharding, optimizer=optimizer,
        scheduler=scheduler,
        task=data.task, settings=encode_settings(config),
        train_examples=data.train_examples, val_examples=data.val_examples,
        lengths=data.lengths, skipped=data.skipped,
        task_views=data.task_views, prompt_ids=data.prompt_ids, replicas=replicas,
        log=log, context=context,
        examples_per_step=examples_per_step, total_steps=total_steps,
        greater_is_better=_greater_is_better(t), progress=progress,
        state=state, loop=LoopState(last_saved=state.global_step if resume else -1),
    )  # fmt: skip


def _setup_run_dir(config: RunConfig, resume: str | None, accelerator: Accelerator) -> Path:
    """The run directory, checked (a fresh run) and holding the run's config.yaml."""
    t = config.training
    run_dir = Path(t.output_dir)
    if not resume:
        start_fresh(run_dir, t.overwrite_output_dir, accelerator)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    return run_dir


def _setup_model(config: RunConfig, accelerator: Accelerator) -> Backbone:
    """The frozen backbone on the run's device, built under the run's seed."""
    set_seed(config.training.seed)
    backbone = backbone_from_config(config, device=accelerator.device.type)
    if not config.method.lora.quantization_bit:  # bitsandbytes places quantized weights itself
        backbone.model.to(accelerator.device)
    return backbone


def load_training_data(config: RunConfig, backbone: Backbone) -> TrainingData:
    """The run's training and validation data: the one task's, or every task's mixed."""
    if config.tasks:
        multi = load_multitask_data(config, backbone)
        return TrainingData(
            task=multi.views[0].task,
            train_examples=multi.train_examples,
            val_examples=multi.val_examples,
            lengths=multi.lengths,
            skipped=multi.skipped,
            task_views=multi.views,
            prompt_ids=multi.prompt_ids,
        )
    raw_train, info = load_split_with_info(config, "train")
    val_examples = load_split(config, "val")
    if not raw_train:
        raise ConfigError(f"data.train_path {config.data.train_path!r} has no examples")
    task = task_from_config(config, info.get("classes"))
    train_examples = task.prepare(raw_train)
    lengths = task.lengths(train_examples, backbone.tokenizer)
    skipped = info.get("skipped")
    logger.info(
        "Data: %d train / %d validation examples%s",
        len(train_examples),
        len(val_examples),
        f" ({skipped.count} unreadable inputs skipped)" if skipped and skipped.count else "",
    )
    return TrainingData(task, train_examples, val_examples, lengths, skipped)


def _setup_tuners(
    config: RunConfig, backbone: Backbone, data: TrainingData, context: dict[str, Any]
) -> tuple[TunerSet, int]:
    """The tuners, a prompt bank's per-prompt task records, and the rows' replica count
    (an ensemble runs each row once per member; 1 otherwise)."""
    backbone.bind_task(data.task)  # a CLIP model's loss is over the task's classes
    tuners = build_tuners(config, backbone)
    replicas = 1
    if tuners.prompt is not None and tuners.prompt.kind != "single":  # a bank
        bank = tuners.prompt
        if data.task_views is not None:
            bank.records = bank_records(data.task_views, backbone)
        else:
            bank.records = dict.fromkeys(bank.names, context["task"])
            replicas = len(bank.members)
    return tuners, replicas


def _setup_training_modes(t: TrainingConfig, backbone: Backbone, accelerator: Accelerator) -> None:
    """Train mode, and the attention / checkpointing the training config asks for."""
    if t.bf16 and accelerator.device.type == "cpu":
        use_eager_attention(backbone)
    backbone.model.train()
    if t.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )


def _step_counts(t: TrainingConfig, accelerator: Accelerator, n_train: int) -> tuple[int, int]:
    """(examples per optimizer step, optimizer steps of the run), logged."""
    world = accelerator.num_processes
    examples_per_step = t.batch_size * world * t.gradient_accumulation_steps
    steps_per_epoch = math.ceil(n_train / examples_per_step)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    logger.info(
        "Training: %d process(es) x batch_size %d x gradient_accumulation_steps %d = "
        "%d examples per optimizer step; %d steps",
        world,
        t.batch_size,
        t.gradient_accumulation_steps,
        examples_per_step,
        total_steps,
    )
    return examples_per_step, total_steps


def _setup_optimizer(
    t: TrainingConfig,
    accelerator: Accelerator,
    parts: TrainableParts,
    tuners: TunerSet,
    total_steps: int,
    sharding: Sharding,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """(the trainable parts, prepared for the processes; the optimizer; the scheduler).

    Built after sharding: the optimizer must hold the sharded parameters.
    """
    optimizer = torch.optim.AdamW(
        tuners.param_groups(), lr=t.learning_rate, weight_decay=t.weight_decay
    )
    sharding.attach(optimizer)
    scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=total_steps
    )
    if sharding.strategy == "none":
        # The scheduler is not prepared: accelerate would step it once per process.
        # Sharded parts are not wrapped for DDP: FSDP and Sharding.sync_gradients average.
        parts, optimizer = accelerator.prepare(parts, optimizer)
    return parts, optimizer, scheduler


def _greater_is_better(t: TrainingConfig) -> bool:
    if t.greater_is_better is not None:
        return t.greater_is_better
    return not lower_is_better(t.metric_for_best_model)


def _setup_state(
    resume: str | None,
    path: Path | None,
    payload: dict[str, Any] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    log: MetricsLog,
    *,
    rank: int,
    batch_size: int,
    examples_per_step: int,
) -> TrainState:
    """A fresh position, or the checkpoint's at `path` (`payload`: its validated state;
    its weights already loaded by `load_resumed_adapters`): its optimizer, scheduler and random state are loaded, and
    the log forgets the steps after it."""
    state = TrainState()
    if path is not None:
        state = load_checkpoint(
            path, optimizer, scheduler, process_index=rank, batch_size=batch_size,
            payload=payload,
        )  # fmt: skip
        logger.info("Resumed from %s at step %d", path, state.global_step)
        if state.samples_in_epoch and state.examples_per_step != examples_per_step:
            logger.warning(
                "The checkpoint was written with %d examples per optimizer step, this run "
                "takes %d: the rest of epoch %d follows a new order (a few examples may be "
                "repeated or skipped). Keep batch_size x processes x "
                "gradient_accumulation_steps equal to resume exactly.",
                state.examples_per_step,
                examples_per_step,
                state.epoch,
            )
    if resume:
        log.forget_after(state.global_step)
    state.examples_per_step = examples_per_step
    return state


def agreed_checkpoint(resume: str | None, run_dir: Path, accelerator: Accelerator) -> Path | None:
    """The checkpoint to resume from, the same for every process.

    Each process looks in its own `training.output_dir`; on several machines that must be
    one shared directory, or they would start from different steps and wait on each other.

    Raises:
        ConfigError: the processes see different checkpoints.
    """
    checkpoint = resolve_resume(resume, run_dir) if resume else None
    if accelerator.num_processes == 1:
        return checkpoint
    seen = gather_object([checkpoint.name if checkpoint is not None else None])
    if len(set(seen)) > 1:
        views = ", ".join(f"process {i}: {name or 'none'}" for i, name in enumerate(seen))
        raise ConfigError(
            f"the processes see different checkpoints to resume in {str(run_dir)!r} ({views}): "
            "training.output_dir must be one directory that every machine reads and writes "
            "(a shared filesystem)"
        )
    return checkpoint


def load_resumed_adapters(path: Path, tuners: TunerSet, context: dict[str, Any]) -> None:
    """A checkpoint's adapters into this run's tuners, once they are known to fit.

    Raises:
        CheckpointError: the checkpoint is of another run, or its files do not load.
    """
    try:
        bundle = read_bundle(path)
        check_fits_run(path, bundle, tuners, context)
        tuners.load(bundle)
    except CheckpointError:
        raise
    except (ValueError, RuntimeError) as err:  # UserErrors of the adapters' loaders too
        raise CheckpointError(f"checkpoint {path} does not load into this run: {err}") from None


def use_eager_attention(backbone) -> None:
    """bf16 training on a CPU: the language model's attention as plain matmuls.

    Under bf16 autocast, PyTorch's CPU flash-attention backward runs about 3.6x slower
    than in fp32 (profiled on the embedded VLM at the demo's shape: 393 vs 110 ms per two
    steps) and its casts add as much again, which ate the bf16 matmul gain; eager
    attention's matmuls take the bf16 speed (0.87-0.89 s per step against 1.19-1.38 s in
    fp32 there, where sdpa under bf16 gave 1.02 s).
    """
    model = backbone.peft_model()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
        logger.info("bf16 on the CPU: eager attention in the language model")


def start_fresh(run_dir: Path, overwrite: bool, accelerator: Accelerator) -> None:
    """Refuse (or, with overwrite, clear) an earlier run's files in a fresh run's directory.

    Every process checks, so all of them raise the same error; only the first deletes.
    """
    earlier = earlier_run_outputs(run_dir)
    if earlier and not overwrite:
        names = ", ".join(p.name for p in earlier[:6]) + (", ..." if len(earlier) > 6 else "")
        raise ConfigError(
            f"training.output_dir {str(run_dir)!r} holds an earlier run ({names}): continue it "
            "with --resume auto, train into another training.output_dir, or replace it with "
            "training.overwrite_output_dir=true"
        )
    if earlier and accelerator.is_main_process:
        logger.info("Replacing the earlier run in %s (training.overwrite_output_dir)", run_dir)
        clear_earlier_run(earlier)
    accelerator.wait_for_everyone()


def build_tuners(config: RunConfig, backbone) -> TunerSet:
    """The config's tuners; refuses a run in which nothing would train."""
    problem = family_method_problem(backbone.family, config.method.enabled_methods())
    if problem:
        raise ConfigError(problem)
    tuners = TunerSet.from_config(config, backbone)
    if not tuners.trainable():
        raise ConfigError(
            "nothing to train: enable method.prompt_tuning, method.prefix_tuning, method.lora "
            "(with trainable: true) or method.full"
        )
    tuners.log_counts()
    return tuners


def save_config(config: RunConfig, path: Path) -> None:
    """The run's config.yaml, written whole or not at all (a full disk: one line)."""
    write_bytes_atomically(path, config_yaml(config).encode("utf-8"))
