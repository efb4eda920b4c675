"""The training loop: one explicit function, no hooks.

Only the soft prompt (and a backbone's small trainable extras) trains. An optimizer
step consumes `batch_size x processes x gradient_accumulation_steps` examples; their
loss is normalised by the label tokens of the whole step, over all processes, so the
update depends only on that number: k accumulated batches of b, k processes with
batches of b, and one batch of k*b all give the same prompt (up to float rounding).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from softprompt.backbones.base import input_lengths
from softprompt.backbones.vision_base import move_batch
from softprompt.config import ConfigError, RunConfig, save_config
from softprompt.data.batching import epoch_batches, position_in_epoch
from softprompt.evaluate import EvalShard, evaluate
from softprompt.evaluate_vision import evaluate_vision
from softprompt.runtime import (
    backbone_from_config,
    encode_settings,
    is_vision,
    load_split,
    load_split_with_info,
)
from softprompt.tasks import VisionTask
from softprompt.train.checkpoint import (
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from softprompt.train.interrupt import DeferredInterrupt, StopRequested
from softprompt.train.parallel import (
    TrainableParts,
    global_max,
    global_sum,
    make_accelerator,
    micro_batches,
)
from softprompt.train.run_files import (
    MetricsLog,
    prompt_task_record,
    replace_dir_atomically,
    write_json_atomically,
    write_prompt_dir,
)
from softprompt.tuners.prompt_tuning.io import fingerprint, load_prompt
from softprompt.tuners.prompt_tuning.model import SoftPrompt, count_parameters, log_parameter_counts
from softprompt.tuners.splice import IGNORE_INDEX

logger = logging.getLogger("softprompt")


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "perplexity" in metric


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """`auto` -> newest complete checkpoint of the run (None if there is none)."""
    if resume == "auto":
        return find_latest_checkpoint(run_dir)
    return Path(resume)


def train(config: RunConfig, resume: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Prompt-tune `config.model` on `config.data`; returns the all_results.json content.

    Args:
        config: validated run configuration.
        resume: a checkpoint directory, or "auto" for the newest complete one in
            `training.output_dir` (starts fresh when there is none).
        progress: show a progress bar (the CLI turns it on).
    """
    t = config.training
    pt = config.method.prompt_tuning
    if not pt.enabled:
        raise ConfigError(
            "method.prompt_tuning.enabled is false: there is nothing to train "
            "(enable the soft prompt)"
        )
    run_dir = Path(t.output_dir)
    accelerator = make_accelerator(t)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    set_seed(t.seed)

    backbone = backbone_from_config(config)
    backbone.model.to(accelerator.device)
    backbone.model.train()
    if t.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    settings = encode_settings(config)
    raw_train, train_info = load_split_with_info(config, "train")
    val_examples = load_split(config, "val")
    if not raw_train:
        raise ConfigError(f"data.train_path {config.data.train_path!r} has no examples")
    task = VisionTask.from_config(config, train_info.get("classes")) if is_vision(config) else None
    if task is not None:
        train_examples = task.prepare(raw_train)
        lengths = [len(e.text) + len(e.target or "") for e in train_examples]
    else:
        train_examples = raw_train
        lengths = input_lengths(train_examples, backbone.tokenizer)
    skipped = train_info.get("skipped")
    logger.info(
        "Data: %d train / %d validation examples%s",
        len(train_examples),
        len(val_examples),
        f" ({skipped.count} unreadable inputs skipped)" if skipped and skipped.count else "",
    )
    task_info = prompt_task_record(config, backbone, task)

    prompt = SoftPrompt(pt.num_virtual_tokens, backbone.hidden_size)
    prompt.initialize(
        pt,
        backbone.word_embeddings(),
        backbone.tokenizer,
        generator=torch.Generator().manual_seed(t.seed),
    )
    log_parameter_counts(backbone.model, prompt)
    trainable, total = count_parameters(backbone.model, prompt)
    fp = fingerprint(backbone.word_embeddings(), backbone.tokenizer)

    extras = getattr(backbone, "trainable_modules", dict)()
    groups = [{"params": list(prompt.parameters()), "lr": t.learning_rate}]
    for module in extras.values():
        groups.append(
            {
                "params": [p for p in module.parameters() if p.requires_grad],
                "lr": t.projection_learning_rate or t.learning_rate / 10,
            }
        )
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
    trainable_params = [p for g in groups for p in g["params"]]
    ga = t.gradient_accumulation_steps
    examples_per_step = t.batch_size * world * ga
    steps_per_epoch = math.ceil(len(train_examples) / examples_per_step)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    logger.info(
        "Training: %d process(es) x batch_size %d x gradient_accumulation_steps %d = "
        "%d examples per optimizer step; %d steps",
        world,
        t.batch_size,
        ga,
        examples_per_step,
        total_steps,
    )
    scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.warmup_steps,
        num_training_steps=total_steps,
    )
    # The scheduler is not prepared: accelerate would step it once per process.
    parts, optimizer = accelerator.prepare(TrainableParts(backbone, prompt, extras), optimizer)
    raw_prompt: SoftPrompt = accelerator.unwrap_model(parts).prompt

    state = TrainState()
    if resume:
        path = resolve_resume(resume, run_dir)
        if path is not None:
            loaded = load_prompt(path)
            with torch.no_grad():
                raw_prompt.embedding.weight.copy_(loaded.weight)
            if loaded.extra:
                backbone.load_saved_state(loaded.extra)
            state = load_checkpoint(
                path, optimizer, scheduler, process_index=rank, batch_size=t.batch_size
            )
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
    state.examples_per_step = examples_per_step

    metric_name = t.metric_for_best_model
    greater = t.greater_is_better
    if greater is None:
        greater = not lower_is_better(metric_name)
    log = MetricsLog(run_dir / "metrics.jsonl", main)
    if resume:
        log.forget_after(state.global_step)

    def write_prompt(directory: Path) -> None:
        write_prompt_dir(directory, raw_prompt.embedding.weight, backbone, config, fp, task_info)

    shard = EvalShard(rank, world, gather_object)

    def evaluate_split(examples, weight: torch.Tensor, predict: bool) -> dict[str, Any]:
        batch_size = t.eval_batch_size or t.batch_size
        if task is not None:
            return evaluate_vision(
                backbone,
                weight,
                examples,
                task,
                settings,
                batch_size=batch_size,
                predict=predict or task.options() is not None,
                progress=progress and main,
                autocast=accelerator.autocast,
                shard=shard,
            )[0]
        return evaluate(
            backbone,
            weight,
            examples,
            settings,
            batch_size=batch_size,
            max_new_tokens=config.task.max_new_tokens,
            generate=predict,
            progress=progress and main,
            autocast=accelerator.autocast,
            shard=shard,
        )[0]

    def checkpoint() -> None:
        # Collective: every process calls it at the same step (a stop is agreed first).
        rng_states = gather_object([rng_state()])
        if main:
            save_checkpoint(run_dir, state, write_prompt, optimizer, scheduler, rng_states)
            prune_checkpoints(run_dir, t.save_total_limit)
        accelerator.wait_for_everyone()

    def run_eval(epoch_float: float) -> bool:
        """Evaluate, update best/; returns True when early stopping triggers."""
        if not val_examples:
            return False
        metrics = evaluate_split(val_examples, raw_prompt.embedding.weight, t.eval_generate)
        record = {"event": "eval", "step": state.global_step, "epoch": round(epoch_float, 4)}
        record.update({f"eval_{k}": v for k, v in metrics.items()})
        log.write(record)
        state.evaluations.append(record)
        logger.info("eval step %d: %s", state.global_step, _fmt(record))
        if metric_name not in record:
            raise ConfigError(
                f"training.metric_for_best_model {metric_name!r} is not an eval metric here; "
                f"available: {', '.join(k for k in record if k.startswith('eval_'))}"
            )
        value = float(record[metric_name])
        best = state.best_metric
        improved = best is None or (value > best if greater else value < best)
        if improved:
            state.best_metric, state.best_step, state.bad_evals = value, state.global_step, 0
            if main:
                replace_dir_atomically(run_dir / "best", write_prompt)
        else:
            state.bad_evals += 1
        patience = t.early_stopping_patience
        return patience is not None and state.bad_evals >= patience

    device = accelerator.device

    def backward_step(step: list[int]) -> tuple[float, int]:
        """Forward and backward of this process's part of one optimizer step.

        Returns:
            (summed loss of this process's examples, label tokens of the whole step).
        """
        micro = []
        for idx in micro_batches(step, rank, world, ga):
            # An empty share still runs (on the step's first example, weight 0): every
            # process must take part in the gradient synchronisation of the last pass.
            chunk = [train_examples[i] for i in (idx or step[:1])]
            batch = backbone.collate(chunk, settings, with_targets=True)
            micro.append((move_batch(batch, device), 1.0 if idx else 0.0))
        own_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b, w in micro if w)
        step_tokens = int(global_sum(accelerator, own_tokens))
        # DDP averages gradients over processes; scaling by their number makes that
        # average the gradient of (everyone's summed loss) / (the whole step's label
        # tokens), the same update one process would make on the whole step.
        scale = world / max(step_tokens, 1)
        loss_total = 0.0
        for i, (batch, weight) in enumerate(micro):
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(parts):
                with accelerator.autocast():
                    loss_sum, _ = parts(batch)
                accelerator.backward(loss_sum * (weight * scale))
            loss_total += weight * float(loss_sum.detach())
        return loss_total, step_tokens

    bar = tqdm(
        total=total_steps, initial=state.global_step, desc="train", disable=not (progress and main)
    )
    started = time.perf_counter()
    samples_done, window_loss, window_tokens = 0, 0.0, 0
    stop = False
    last_saved = state.global_step if resume else -1
    n_train = len(train_examples)
    # A stop asked of any process is one for all, at the same step boundary: a process
    # leaving alone would leave the others waiting in a collective call for ever.
    agree = (lambda signum: global_max(accelerator, signum)) if world > 1 else None
    interrupt = DeferredInterrupt().install()
    try:
        while state.global_step < total_steps and not stop:
            steps = epoch_batches(
                lengths, examples_per_step, t.seed, state.epoch, group_by_length=t.group_by_length
            )
            for step in steps[position_in_epoch(steps, state.samples_in_epoch) :]:
                if state.global_step >= total_steps:
                    break
                loss_total, step_tokens = backward_step(step)
                if t.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trainable_params, t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                window_loss += loss_total
                window_tokens += step_tokens
                samples_done += len(step)
                state.global_step += 1
                state.samples_in_epoch += len(step)
                bar.update(1)
                epoch_float = state.epoch + state.samples_in_epoch / n_train
                if state.global_step % t.logging_steps == 0 or state.global_step == total_steps:
                    elapsed = time.perf_counter() - started
                    record = {
                        "event": "train",
                        "step": state.global_step,
                        "epoch": round(epoch_float, 4),
                        "loss": global_sum(accelerator, window_loss) / max(window_tokens, 1),
                        "learning_rate": scheduler.get_last_lr()[0],
                        "samples_per_second": samples_done / max(elapsed, 1e-9),
                    }
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    logger.debug("train %s", _fmt(record))
                    window_loss, window_tokens = 0.0, 0
                epoch_end = state.samples_in_epoch >= n_train
                due_eval = (
                    state.global_step % t.eval_steps == 0 if t.eval_steps else epoch_end
                ) or state.global_step == total_steps
                if due_eval:
                    stop = run_eval(epoch_float)
                due_save = state.global_step % t.save_steps == 0 if t.save_steps else due_eval
                if due_save or stop:
                    checkpoint()
                    last_saved = state.global_step
                if stop:
                    logger.info(
                        "Early stopping at step %d: no improvement in %s for %d evaluations",
                        state.global_step,
                        metric_name,
                        state.bad_evals,
                    )
                    break
                interrupt.raise_if_requested(agree)
            if state.samples_in_epoch >= n_train:
                state.epoch += 1
                state.samples_in_epoch = 0
    except KeyboardInterrupt as stopped:
        # Only a stop at a step boundary has a state that resumes exactly, and only there
        # do all processes stand at the same point (see interrupt.py): else save nothing.
        if isinstance(stopped, StopRequested):
            logger.warning("Interrupted: saving checkpoint-%d before exiting", state.global_step)
            if last_saved != state.global_step:
                checkpoint()
        raise
    finally:
        interrupt.uninstall()
        bar.close()
    train_runtime = time.perf_counter() - started
    if last_saved != state.global_step:
        checkpoint()
    if main and not (run_dir / "best").exists():
        replace_dir_atomically(run_dir / "best", write_prompt)
    accelerator.wait_for_everyone()  # best/ is complete before any process reads it

    results: dict[str, Any] = {
        "global_step": state.global_step,
        "epoch": state.epoch + state.samples_in_epoch / n_train,
        "metric_for_best_model": metric_name,
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "best_model_checkpoint": str(run_dir / "best"),
        "train_runtime": train_runtime,
        "train_samples_per_second": samples_done / max(train_runtime, 1e-9),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "evaluations": state.evaluations,
        "skipped_inputs": skipped.count if skipped else 0,
    }
    if main and skipped and skipped.count:
        (run_dir / "skipped_inputs.json").write_text(
            json.dumps(skipped.skipped, indent=2), encoding="utf-8"
        )
    test_examples = (
        load_split(config, "test") if config.data.test_path or _has_builtin_test(config) else []
    )
    if test_examples:
        best_dir = load_prompt(run_dir / "best")
        if best_dir.extra:
            backbone.load_saved_state(best_dir.extra)
        metrics = evaluate_split(test_examples, best_dir.weight.to(device), predict=True)
        test_metrics = {f"test_{k}": v for k, v in metrics.items()}
        results.update(test_metrics)
        log.write({"event": "test", "step": state.global_step, **test_metrics})
    if main:
        write_json_atomically(run_dir / "all_results.json", results)
    return results


def _has_builtin_test(config: RunConfig) -> bool:
    return bool(config.data.train_path and config.data.train_path.startswith("builtin:"))


def _fmt(record: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k != "event" and isinstance(v, int | float | str)
    )
