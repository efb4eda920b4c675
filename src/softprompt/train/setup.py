"""Setting a training run up: everything the loop needs, gathered in one `Run` object.

The loop (loop.py) is a few named steps over this object: `train_step`, `evaluate_run`,
`save_run_checkpoint`, `finish`. None of them closes over mutable state; each reads and
updates the `Run` it is given.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from softprompt.artifacts.bundle import read_bundle
from softprompt.artifacts.prompt_dir import fingerprint
from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.from_config import backbone_from_config, encode_settings
from softprompt.config.run import ConfigError, RunConfig, TrainingConfig, save_config
from softprompt.data.splits import load_split, load_split_with_info
from softprompt.tasks.kinds import Task, VisionTask, task_from_config
from softprompt.train.banks import bank_records, load_multitask_data
from softprompt.train.checkpoint import TrainState, find_latest_checkpoint, load_checkpoint
from softprompt.train.parallel import TrainableParts, make_accelerator
from softprompt.train.run_files import (
    MetricsLog,
    clear_earlier_run,
    earlier_run_outputs,
    prompt_task_record,
    save_context,
    save_initial_prompt,
)
from softprompt.tuners.prompt_tuning.bank import PromptBank
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
class Run:
    """One training run's objects and position (the loop's only state)."""

    config: RunConfig
    accelerator: Accelerator
    run_dir: Path
    backbone: Any
    tuners: TunerSet
    parts: torch.nn.Module  # the trainable tuners, DDP-wrapped when several processes
    optimizer: torch.optim.Optimizer
    scheduler: Any
    task: Task
    settings: EncodeSettings
    train_examples: list
    val_examples: list
    lengths: list[int]
    state: TrainState
    log: MetricsLog
    context: dict[str, Any]  # what saved adapters record (base model, fingerprint, task)
    examples_per_step: int
    total_steps: int
    greater_is_better: bool
    progress: bool
    skipped: Any = None
    interrupt: Any = None  # the DeferredInterrupt installed while the loop runs
    # Several prompts (train/banks.py): a multi-task run's tasks and each training
    # example's prompt id; an ensemble's member count (each row runs once per member).
    task_views: list | None = None
    prompt_ids: list[int] | None = None
    replicas: int = 1

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


def load_training_data(config: RunConfig, backbone) -> tuple[Task, list, list, list[int], Any]:
    """(task, train examples (prepared), validation examples, lengths, skipped-input report)."""
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
    return task, train_examples, val_examples, lengths, skipped


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
    tuners = TunerSet.from_config(config, backbone)
    if not tuners.trainable():
        raise ConfigError(
            "nothing to train: enable method.prompt_tuning, method.prefix_tuning, method.lora "
            "(with trainable: true) or method.full"
        )
    tuners.log_counts()
    return tuners


def _optimization(t: TrainingConfig, tuners: TunerSet, total_steps: int):
    optimizer = torch.optim.AdamW(
        tuners.param_groups(), lr=t.learning_rate, weight_decay=t.weight_decay
    )
    scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=total_steps
    )
    return optimizer, scheduler


def setup_run(config: RunConfig, resume: str | None, progress: bool) -> Run:
    """Build the backbone, tuners, data, optimizer and state of a run (resumed if asked)."""
    t = config.training
    run_dir = Path(t.output_dir)
    accelerator = make_accelerator(t)
    if not resume:
        start_fresh(run_dir, t.overwrite_output_dir, accelerator)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    set_seed(t.seed)
    backbone = backbone_from_config(config, device=accelerator.device.type)
    if not config.method.lora.quantization_bit:  # bitsandbytes places quantized weights itself
        backbone.model.to(accelerator.device)
    fp = fingerprint(backbone.word_embeddings(), backbone.tokenizer)  # before any training
    multi = load_multitask_data(config, backbone) if config.tasks else None
    if multi is not None:
        task, train_examples, lengths = multi.views[0].task, multi.train_examples, multi.lengths
        val_examples, skipped = multi.val_examples, multi.skipped
    else:
        task, train_examples, val_examples, lengths, skipped = load_training_data(config, backbone)
    vision_task = task if isinstance(task, VisionTask) else None
    context = save_context(config, backbone, fp, prompt_task_record(config, backbone, vision_task))
    tuners = build_tuners(config, backbone)
    if isinstance(tuners.prompt, PromptBank):
        bank = tuners.prompt
        bank.records = (
            bank_records(multi.views, backbone)
            if multi
            else dict.fromkeys(bank.names, context["task"])
        )
    if accelerator.is_main_process:  # kept from the first start: `softprompt inspect` drift
        save_initial_prompt(run_dir, tuners, context, keep_existing=bool(resume))
    if t.bf16 and accelerator.device.type == "cpu":
        use_eager_attention(backbone)
    backbone.model.train()
    if t.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    world = accelerator.num_processes
    examples_per_step = t.batch_size * world * t.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(train_examples) / examples_per_step)
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
    optimizer, scheduler = _optimization(t, tuners, total_steps)
    # The scheduler is not prepared: accelerate would step it once per process.
    parts, optimizer = accelerator.prepare(TrainableParts(backbone, tuners), optimizer)
    greater = t.greater_is_better
    if greater is None:
        greater = not lower_is_better(t.metric_for_best_model)
    run = Run(
        config, accelerator, run_dir, backbone, tuners, parts, optimizer, scheduler, task,
        encode_settings(config), train_examples, val_examples, lengths, TrainState(),
        MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process, t.report_to), context,
        examples_per_step, total_steps, greater, progress, skipped,
    )  # fmt: skip
    if multi is not None:
        run.task_views, run.prompt_ids = multi.views, multi.prompt_ids
    elif isinstance(tuners.prompt, PromptBank):
        run.replicas = len(tuners.prompt.members)
    if resume:
        restore(run, resume)
    run.state.examples_per_step = examples_per_step
    return run


def restore(run: Run, resume: str) -> None:
    """Load the newest (or given) checkpoint into the run: weights, optimizer, position."""
    path = resolve_resume(resume, run.run_dir)
    if path is not None:
        run.tuners.load(read_bundle(path))
        t = run.training
        run.state = load_checkpoint(
            path, run.optimizer, run.scheduler, process_index=run.rank, batch_size=t.batch_size
        )
        logger.info("Resumed from %s at step %d", path, run.state.global_step)
        state = run.state
        if state.samples_in_epoch and state.examples_per_step != run.examples_per_step:
            logger.warning(
                "The checkpoint was written with %d examples per optimizer step, this run "
                "takes %d: the rest of epoch %d follows a new order (a few examples may be "
                "repeated or skipped). Keep batch_size x processes x "
                "gradient_accumulation_steps equal to resume exactly.",
                state.examples_per_step,
                run.examples_per_step,
                state.epoch,
            )
    run.log.forget_after(run.state.global_step)
