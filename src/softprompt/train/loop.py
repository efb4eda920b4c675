"""The training loop: one explicit function over named steps, no hooks.

Only the tuners train (a soft prompt, LoRA, a projection, or the whole language model
for the full fine-tuning baseline). An optimizer step consumes `batch_size x processes x
gradient_accumulation_steps` examples; their loss is normalised by the label tokens of the
whole step, over all processes, so the update depends only on that number: k accumulated
batches of b, k processes with batches of b, and one batch of k*b all give the same
result (up to float rounding).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from softprompt.artifacts.bundle import read_bundle
from softprompt.backbones.splice import IGNORE_INDEX
from softprompt.backbones.vision_base import move_batch
from softprompt.config.run import ConfigError, RunConfig
from softprompt.data.batching import epoch_batches, position_in_epoch
from softprompt.data.splits import load_split
from softprompt.inference.evaluate import EvalShard
from softprompt.inference.execute import EvalOptions, evaluate_plan
from softprompt.inference.predict_io import write_records
from softprompt.train.banks import test_examples as tagged_test_examples
from softprompt.train.banks import training_plan
from softprompt.train.base_to_novel import novel_test_metrics, wants_novel
from softprompt.train.checkpoint import prune_checkpoints, rng_state, save_checkpoint
from softprompt.train.dashboards import show_progress
from softprompt.train.interrupt import DeferredInterrupt, StopRequested
from softprompt.train.launch import is_main_process
from softprompt.train.parallel import global_max, global_sum, micro_batches
from softprompt.train.run_files import replace_dir_atomically, write_json_atomically
from softprompt.train.run_lock import run_dir_lock
from softprompt.train.setup import Run, lower_is_better, resolve_resume, setup_run

logger = logging.getLogger("softprompt")

__all__ = ["lower_is_better", "resolve_resume", "train"]


def train_step(run: Run, step: list[int]) -> tuple[float, int]:
    """Forward and backward of this process's part of one optimizer step, then the update.

    Returns:
        (summed loss of this process's examples, label tokens of the whole step).
    """
    acc, rank, world = run.accelerator, run.rank, run.world
    micro = []
    for idx in micro_batches(step, rank, world, run.training.gradient_accumulation_steps):
        # An empty share still runs (on the step's first example, weight 0): every
        # process must take part in the gradient synchronisation of the last pass.
        rows = idx or step[:1]
        chunk = [run.train_examples[i] for i in rows] * run.replicas  # member-major
        batch = run.backbone.collate(chunk, run.settings, with_targets=True)
        ids = row_prompt_ids(run, rows)
        ids = ids.to(acc.device) if ids is not None else None
        micro.append((move_batch(batch, acc.device), 1.0 if idx else 0.0, ids))
    own_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b, w, _ in micro if w)
    # An ensemble's members each see every row: each member's gradient is its own loss
    # over the step's tokens, as if it trained alone.
    step_tokens = int(global_sum(acc, own_tokens)) // run.replicas
    # DDP averages gradients over processes; scaling by their number makes that average
    # the gradient of (everyone's summed loss) / (the whole step's label tokens), the
    # same update one process would make on the whole step.
    scale = world / max(step_tokens, 1)
    loss_total = 0.0
    for i, (batch, weight, ids) in enumerate(micro):
        last = i == len(micro) - 1
        with contextlib.nullcontext() if last else acc.no_sync(run.parts):
            with acc.autocast():
                loss_sum, _ = run.parts(batch, ids)
            acc.backward(loss_sum * (weight * scale))
        loss_total += weight * float(loss_sum.detach())
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    run.sharding.sync_gradients(params)
    if run.training.max_grad_norm is not None:
        run.sharding.clip_grad_norm(acc, params, run.training.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_total / run.replicas, step_tokens


def row_prompt_ids(run: Run, rows: list[int]) -> torch.Tensor | None:
    """(B,) each training row's prompt in a bank, or None when every row has one prompt."""
    if run.prompt_ids is not None:
        return torch.tensor([run.prompt_ids[i] for i in rows], dtype=torch.long)
    if run.replicas > 1:
        return torch.arange(run.replicas).repeat_interleave(len(rows))
    return None


def evaluate_split(
    run: Run, examples: list, predict: bool, predictions: Path | None = None
) -> dict[str, Any]:
    """The run's metrics of the tuners as they are now, over every process's share: the
    task's, a multi-task run's per task and mean, or an ensemble's per member and combined
    (see `softprompt.inference.execute.evaluate_plan`).

    Args:
        examples: raw examples; (task index, example) pairs in a multi-task run.
        predictions: also write the per-example records here (JSONL, main process).
    """
    t = run.training
    plan, tasks = training_plan(run), None
    if plan.multitask:
        names = {view.index: view.name for view in run.task_views}
        tasks = [names[index] for index, _ in examples]
        examples = [example for _, example in examples]
    options = EvalOptions(
        batch_size=t.eval_batch_size or t.batch_size,
        predict=predict,
        progress=run.progress and run.main,
        autocast=run.accelerator.autocast,
        shard=EvalShard(run.rank, run.world, gather_object),
    )
    metrics, records = evaluate_plan(run.backbone, run.tuners, plan, examples, options, tasks)
    if predictions is not None and run.main:
        write_records(records, predictions)
    return metrics


def evaluate_run(run: Run, epoch_float: float) -> bool:
    """Evaluate on the validation split, update best/; True when early stopping triggers."""
    if not run.val_examples:
        return False
    with run.sharding.gathered():  # whole weights: evaluation, and best/ below
        return _evaluate_gathered(run, epoch_float)


def _evaluate_gathered(run: Run, epoch_float: float) -> bool:
    t, state = run.training, run.state
    metrics = evaluate_split(run, run.val_examples, t.eval_generate)
    record = {"event": "eval", "step": state.global_step, "epoch": round(epoch_float, 4)}
    record.update({f"eval_{k}": v for k, v in metrics.items()})
    run.log.write(record)
    state.evaluations.append(record)
    logger.info("eval step %d: %s", state.global_step, _fmt(record))
    name = t.metric_for_best_model
    if name not in record:
        raise ConfigError(
            f"training.metric_for_best_model {name!r} is not an eval metric here; "
            f"available: {', '.join(k for k in record if k.startswith('eval_'))}"
        )
    value, best = float(record[name]), state.best_metric
    if best is None or (value > best if run.greater_is_better else value < best):
        state.best_metric, state.best_step, state.bad_evals = value, state.global_step, 0
        if run.main:
            replace_dir_atomically(run.run_dir / "best", run.save_adapters)
    else:
        state.bad_evals += 1
    patience = t.early_stopping_patience
    return patience is not None and state.bad_evals >= patience


def save_run_checkpoint(run: Run) -> None:
    """Collective: every process calls it at the same step (a stop is agreed first)."""
    rng_states = gather_object([rng_state()])
    with run.sharding.gathered():  # whole weights and optimizer state: the unsharded format
        optimizer_state = run.sharding.full_optimizer_state(run.optimizer)
        if run.main:
            save_checkpoint(
                run.run_dir, run.state, run.save_adapters, run.optimizer, run.scheduler,
                rng_states, optimizer_state=optimizer_state,
            )  # fmt: skip
            prune_checkpoints(run.run_dir, run.training.save_total_limit)
    run.accelerator.wait_for_everyone()
    run.loop.last_saved = run.state.global_step


class Window:
    """Loss and label tokens since the last log line; samples and time since the start."""

    def __init__(self) -> None:
        self.loss, self.tokens, self.samples = 0.0, 0, 0
        self.started = time.perf_counter()

    def add(self, loss: float, tokens: int, samples: int) -> None:
        self.loss += loss
        self.tokens += tokens
        self.samples += samples


def log_train(run: Run, window: Window, epoch_float: float, bar) -> None:
    elapsed = time.perf_counter() - window.started
    record = {
        "event": "train",
        "step": run.state.global_step,
        "epoch": round(epoch_float, 4),
        "loss": global_sum(run.accelerator, window.loss) / max(window.tokens, 1),
        "learning_rate": run.scheduler.get_last_lr()[0],
        "samples_per_second": window.samples / max(elapsed, 1e-9),
    }
    run.log.write(record)
    show_progress(run, record, bar)  # loss, lr, samples/s, ETA (train/dashboards.py)
    logger.debug("train %s", _fmt(record))
    window.loss, window.tokens = 0.0, 0


def after_step(run: Run, epoch_float: float) -> bool:
    """Evaluate / checkpoint when due; True when early stopping triggers."""
    t, state = run.training, run.state
    epoch_end = state.samples_in_epoch >= len(run.train_examples)
    last = state.global_step == run.total_steps
    due_eval = (state.global_step % t.eval_steps == 0 if t.eval_steps else epoch_end) or last
    stop = evaluate_run(run, epoch_float) if due_eval else False
    due_save = state.global_step % t.save_steps == 0 if t.save_steps else due_eval
    if due_save or stop:
        save_run_checkpoint(run)
    if stop:
        logger.info(
            "Early stopping at step %d: no improvement in %s for %d evaluations",
            state.global_step,
            t.metric_for_best_model,
            state.bad_evals,
        )
    return stop


def run_epochs(run: Run, bar, window: Window) -> None:
    """The step loop until max steps or early stopping."""
    t, state, n_train = run.training, run.state, len(run.train_examples)
    # A stop asked of any process is one for all, at the same step boundary: a process
    # leaving alone would leave the others waiting in a collective call for ever.
    agree = (lambda signum: global_max(run.accelerator, signum)) if run.world > 1 else None
    interrupt = run.loop.interrupt
    stop = False
    while state.global_step < run.total_steps and not stop:
        steps = epoch_batches(
            run.lengths,
            run.examples_per_step,
            t.seed,
            state.epoch,
            group_by_length=t.group_by_length,
        )
        for step in steps[position_in_epoch(steps, state.samples_in_epoch) :]:
            if state.global_step >= run.total_steps:
                break
            loss_total, step_tokens = train_step(run, step)
            window.add(loss_total, step_tokens, len(step))
            state.global_step += 1
            state.samples_in_epoch += len(step)
            bar.update(1)
            epoch_float = state.epoch + state.samples_in_epoch / n_train
            if state.global_step % t.logging_steps == 0 or state.global_step == run.total_steps:
                log_train(run, window, epoch_float, bar)
            stop = after_step(run, epoch_float)
            if stop:
                break
            interrupt.raise_if_requested(agree)
        if state.samples_in_epoch >= n_train:
            state.epoch += 1
            state.samples_in_epoch = 0


def train(config: RunConfig, resume: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Train the config's tuners on `config.data`; returns the all_results.json content.

    The run directory is locked for the whole run (train/run_lock.py): from before it is
    checked for an earlier run to the last write, no other process trains into it.

    Args:
        config: validated run configuration.
        resume: a checkpoint directory, or "auto" for the newest complete one in
            `training.output_dir` (starts fresh when there is none).
        progress: show a progress bar (the CLI turns it on).

    Raises:
        RunDirInUse: another process is training into `training.output_dir`.
    """
    with run_dir_lock(config.training.output_dir, main=is_main_process()):
        return train_locked(config, resume, progress)


def train_locked(config: RunConfig, resume: str | None, progress: bool) -> dict[str, Any]:
    """`train` with the run directory's lock held by the caller."""
    run = setup_run(config, resume, progress)
    state = run.state
    bar = tqdm(
        total=run.total_steps,
        initial=state.global_step,
        desc="train",
        disable=not (progress and run.main),
    )
    window, loop = Window(), run.loop
    loop.interrupt = DeferredInterrupt().install()
    try:
        run_epochs(run, bar, window)
    except KeyboardInterrupt as stopped:
        # Only a stop at a step boundary has a state that resumes exactly, and only there
        # do all processes stand at the same point (see interrupt.py): else save nothing.
        if isinstance(stopped, StopRequested):
            logger.warning("Interrupted: saving checkpoint-%d before exiting", state.global_step)
            if loop.last_saved != state.global_step:
                save_run_checkpoint(run)
        raise
    finally:
        loop.interrupt.uninstall()
        bar.close()
    train_runtime = time.perf_counter() - window.started
    if loop.last_saved != state.global_step:
        save_run_checkpoint(run)
    return finish(run, train_runtime, window.samples)


def finish(run: Run, train_runtime: float, samples_done: int) -> dict[str, Any]:
    """best/, the skipped inputs, best/'s validation and test metrics, all_results.json."""
    sharding = run.sharding.report(run.optimizer)  # counted while still sharded
    run.sharding.gather_for_good()  # no more training: best/ loads into whole weights
    write_final_best(run)
    results = results_record(run, train_runtime, samples_done)
    results["sharding"] = sharding
    write_skipped_inputs(run)
    results.update(evaluate_best(run))
    if run.main:
        write_json_atomically(run.run_dir / "all_results.json", results)
    return results


def write_final_best(run: Run) -> None:
    """Collective: best/ complete on disk before any process reads it."""
    state, best = run.state, run.run_dir / "best"
    # Without an evaluation that chose it, best/ is the last step's state: also after a
    # resume that trained further than the run that first wrote it.
    if run.main and (state.best_metric is None or not best.exists()):
        replace_dir_atomically(best, run.save_adapters)
    run.accelerator.wait_for_everyone()


def results_record(run: Run, train_runtime: float, samples_done: int) -> dict[str, Any]:
    """all_results.json's training part: position, best step, speed, sizes, evaluations."""
    state = run.state
    per_tuner, trainable, total = run.tuners.count_parameters()
    return {
        "global_step": state.global_step,
        "epoch": state.epoch + state.samples_in_epoch / len(run.train_examples),
        "metric_for_best_model": run.training.metric_for_best_model,
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "best_model_checkpoint": str(run.run_dir / "best"),
        "train_runtime": train_runtime,
        "train_samples_per_second": samples_done / max(train_runtime, 1e-9),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_parameters_by_method": per_tuner,
        "peak_memory_mb": peak_memory_mb(),
        "methods": run.config.method.enabled_methods(),
        "evaluations": state.evaluations,
        "skipped_inputs": run.skipped.count if run.skipped else 0,
    }


def write_skipped_inputs(run: Run) -> None:
    """skipped_inputs.json: the unreadable inputs the data readers left out, if any."""
    skipped = run.skipped
    if run.main and skipped and skipped.count:
        write_json_atomically(run.run_dir / "skipped_inputs.json", skipped.skipped)


def final_test_examples(run: Run) -> list:
    """The test split (each task's, tagged, in a multi-task run); [] when there is none."""
    if run.task_views is not None:
        return tagged_test_examples(run.task_views)
    config = run.config
    has_test = config.data.test_path or _has_builtin_test(config)
    return load_split(config, "test") if has_test else []


def evaluate_best(run: Run) -> dict[str, Any]:
    """best/'s `val_*` and `test_*` metrics, with predictions.{val,test}.jsonl beside them."""
    test_examples = final_test_examples(run)
    if not (test_examples or run.val_examples):
        return {}
    run.tuners.load(read_bundle(run.run_dir / "best"))
    results: dict[str, Any] = {}
    if run.val_examples:
        results.update(best_val_predictions(run))
    if test_examples:
        results.update(evaluate_test_split(run, test_examples))
        if wants_novel(run):
            results.update(novel_test_metrics(run, results))
    return results


def evaluate_test_split(run: Run, examples: list) -> dict[str, Any]:
    """`test_*` metrics of the adapters loaded now, logged as the run's test event."""
    path = run.run_dir / "predictions.test.jsonl"
    metrics = evaluate_split(run, examples, predict=True, predictions=path)
    test_metrics = {f"test_{k}": v for k, v in metrics.items()}
    run.log.write({"event": "test", "step": run.state.global_step, **test_metrics})
    return test_metrics


def best_val_predictions(run: Run) -> dict[str, Any]:
    """`val_*` metrics of best/ with generation, and predictions.val.jsonl beside them.

    Evaluations during training may skip generation (`eval_generate: false`) and score the
    adapters of their step; this one scores best/, one record per example, so reports
    can set it row by row beside the zero-shot baseline's `predictions.val.jsonl`.
    """
    path = run.run_dir / "predictions.val.jsonl"
    metrics = evaluate_split(run, run.val_examples, predict=True, predictions=path)
    return {f"val_{k}": v for k, v in metrics.items()}


def peak_memory_mb() -> float:
    """This process's peak memory: resident set on the CPU, allocated memory on CUDA."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _has_builtin_test(config: RunConfig) -> bool:
    return bool(config.data.train_path and config.data.train_path.startswith("builtin:"))


def _fmt(record: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k != "event" and isinstance(v, int | float | str)
    )
