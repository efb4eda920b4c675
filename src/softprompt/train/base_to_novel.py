"""Base-to-novel evaluation (CoOp's): a run trained on the `base` half of the classes is
also scored on the test split's `new` half, which it never saw, and the two accuracies
are summarised by their harmonic mean.

The `new` classes are a task of their own (their class words are the options), so a
prompt that reads any class names (soft prompts, CoOp's shared context, CoCoOp) is
scored on them unchanged; a class-specific context has nothing for them and is skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from accelerate.utils import gather_object

from softprompt.data.splits import load_split_with_info
from softprompt.inference.evaluate import EvalShard
from softprompt.inference.execute import EvalOptions, evaluate_plan
from softprompt.inference.plan import InferencePlan
from softprompt.inference.predict_io import write_records
from softprompt.tasks.kinds import task_from_config

logger = logging.getLogger("softprompt")


def harmonic_mean(base: float, new: float) -> float:
    """2 * base * new / (base + new); 0 when both are 0."""
    return 2 * base * new / (base + new) if base + new else 0.0


def wants_novel(run) -> bool:
    """A classify run on the base classes with a test split to score the new ones on."""
    config = run.config
    return (
        config.task.type == "classify"
        and config.data.subsample_classes == "base"
        and bool(config.data.test_path)
    )


def novel_test_metrics(run, base: dict[str, Any]) -> dict[str, Any]:
    """`test_new_*` of the adapters loaded now, `test_base_accuracy` and `test_hm`.

    Args:
        base: the run's `test_*` metrics on the base classes.
    """
    config = run.config.model_copy(deep=True)
    config.data.subsample_classes = "new"
    examples, info = load_split_with_info(config, "test")
    task = task_from_config(config, info.get("classes"))
    plan = InferencePlan.single(task, run.settings)
    t = run.training
    options = EvalOptions(
        batch_size=t.eval_batch_size or t.batch_size,
        autocast=run.accelerator.autocast,
        shard=EvalShard(run.rank, run.world, gather_object),
    )
    try:
        metrics, records = evaluate_plan(run.backbone, run.tuners, plan, examples, options)
    except ValueError as err:  # a class-specific context has no vectors for new classes
        logger.warning("base-to-novel: the new classes are not scored: %s", err)
        return {}
    finally:
        run.backbone.bind_task(run.task)
    if run.main:
        write_records(records, run.run_dir / "predictions.test_new.jsonl")
    out = {f"test_new_{k}": v for k, v in metrics.items()}
    if "accuracy" in metrics and "test_accuracy" in base:
        out["test_base_accuracy"] = base["test_accuracy"]
        out["test_hm"] = harmonic_mean(base["test_accuracy"], metrics["accuracy"])
        logger.info(
            "base-to-novel: base %.4f, new %.4f, harmonic mean %.4f",
            base["test_accuracy"], metrics["accuracy"], out["test_hm"],
        )  # fmt: skip
    return out
