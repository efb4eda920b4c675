"""`softprompt linear-probe`: logistic regression on a frozen CLIP's image features.

CLIP's and CoOp's linear-probe baseline: the image features of the training split are
computed once (through the backbone's feature cache), scikit-learn's
`LogisticRegression` is fitted for every regularisation strength C of a log-spaced grid,
and the C with the best validation accuracy is refined by a few bisection steps in log
space, as CoOp's `lpclip` does. The chosen probe is saved as an adapter (`best/`), scored
on the validation and test splits by the same evaluator as every tuned method, and
summarised in `all_results.json`, so `softprompt compare` shows it as a row.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from softprompt.artifacts.fingerprint import fingerprint
from softprompt.backbones.clip import ClipBackbone
from softprompt.backbones.from_config import backbone_from_config, encode_settings
from softprompt.config.run import ConfigError, RunConfig
from softprompt.data.splits import load_split, load_split_with_info
from softprompt.inference.execute import EvalOptions, evaluate_plan
from softprompt.inference.plan import InferencePlan
from softprompt.inference.predict_io import write_records
from softprompt.tasks.kinds import task_from_config
from softprompt.train.loop import peak_memory_mb
from softprompt.train.run_files import (
    prompt_task_record,
    replace_dir_atomically,
    save_context,
    write_json_atomically,
)
from softprompt.train.run_lock import run_dir_lock
from softprompt.train.setup import save_config
from softprompt.tuners.linear_probe.tuner import LinearProbe, LinearProbeTuner
from softprompt.tuners.tuner_set import TunerSet

logger = logging.getLogger("softprompt")

# CoOp's search: powers of ten from 1e-6 to 1e6, then bisection around the best.
C_GRID = tuple(10.0**k for k in range(-6, 7))
BISECTION_STEPS = 4
MAX_ITER = 1000


def fit(features: np.ndarray, labels: np.ndarray, c: float, seed: int) -> LogisticRegression:
    """scikit-learn's logistic regression at strength `c` (lbfgs, multinomial)."""
    model = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
    return model.fit(features, labels)


def accuracy(model: LogisticRegression, features: np.ndarray, labels: np.ndarray) -> float:
    return float((model.predict(features) == labels).mean())


def search_c(train, val, seed: int) -> tuple[float, dict[float, float]]:
    """(the C with the best validation accuracy, every C tried -> its accuracy).

    Ties go to the C nearest 1.0 in log space (scikit-learn's default), so a task every C
    gets right is not fitted with a needlessly flat probe. The bisection stays inside the
    grid. Without validation data C is 1.0.
    """
    if val is None:
        logger.warning("linear probe: no validation split; C = 1.0 (scikit-learn's default)")
        return 1.0, {}
    scores: dict[float, float] = {}

    def score(c: float) -> float:
        if c not in scores:
            scores[c] = accuracy(fit(*train, c, seed), *val)
        return scores[c]

    def rank(c: float) -> tuple[float, float]:
        return score(c), -abs(math.log10(c))

    best = max(C_GRID, key=rank)
    low, high = max(best / 10, C_GRID[0]), min(best * 10, C_GRID[-1])
    for _ in range(BISECTION_STEPS):  # keep the better neighbour of `best`, halve the gap
        left, right = math.sqrt(low * best), math.sqrt(best * high)
        best = max((best, left, right), key=rank)
        low, high = math.sqrt(low * best), math.sqrt(best * high)
    return best, scores


def split_features(backbone: ClipBackbone, examples, classes: list[str]):
    """(features, labels) of labelled examples as float64 / int arrays."""
    labelled = [e for e in examples if e.label in classes]
    if not labelled:
        return None
    feats = backbone.image_features([e.image_path for e in labelled]).double().numpy()
    labels = np.array([classes.index(e.label) for e in labelled])
    return feats, labels


def linear_probe(config: RunConfig) -> dict[str, Any]:
    """Fit, choose C, save `best/` and score; returns what `all_results.json` holds."""
    out = Path(config.training.output_dir)
    with run_dir_lock(out):
        return _linear_probe(config, out)


def _linear_probe(config: RunConfig, out: Path) -> dict[str, Any]:
    if config.task.type != "classify":
        raise ConfigError("softprompt linear-probe needs task.type: classify")
    torch.manual_seed(config.training.seed)
    backbone = backbone_from_config(config)
    if not isinstance(backbone, ClipBackbone):
        raise ConfigError(
            f"softprompt linear-probe fits on CLIP / SigLIP image features; "
            f"{config.model.name_or_path} is a {backbone.family} model"
        )
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    raw_train, info = load_split_with_info(config, "train")
    task = task_from_config(config, info.get("classes"))
    backbone.bind_task(task)
    started = time.perf_counter()
    train = split_features(backbone, raw_train, task.classes)
    if train is None:
        raise ConfigError(f"data.train_path {config.data.train_path!r} has no labelled images")
    val_examples = load_split(config, "val")
    c, scores = search_c(train, split_features(backbone, val_examples, task.classes),
                         config.training.seed)  # fmt: skip
    model = fit(*train, c, config.training.seed)
    fit_seconds = time.perf_counter() - started
    logger.info("linear probe: C = %.4g (%d values tried) in %.1f s", c, len(scores), fit_seconds)
    tuner = LinearProbeTuner(backbone, LinearProbe.from_sklearn(model, task.classes), c)
    tuners = TunerSet([tuner], backbone)
    fp = fingerprint(backbone.word_embeddings(), backbone.tokenizer)
    context = save_context(config, backbone, fp, prompt_task_record(config, backbone, task))
    replace_dir_atomically(out / "best", lambda d: tuners.save(d, context))
    results = _summary(config, tuners, len(raw_train), fit_seconds, c, scores)
    results.update(_scored(config, backbone, tuners, task, out, val_examples))
    # The row's "best" is the run config's own metric, as for every trained method.
    metric = config.training.metric_for_best_model
    results["best_metric"] = results.get(f"val_{metric.removeprefix('eval_')}")
    write_json_atomically(out / "all_results.json", results)
    return results


def _summary(config, tuners, n_train: int, seconds: float, c: float, scores) -> dict[str, Any]:
    per_tuner, trainable, total = tuners.count_parameters()
    probe_size = sum(p.numel() for p in tuners.tuners[0].probe.parameters())
    return {
        "methods": ["linear_probe"],
        "global_step": 0,
        "metric_for_best_model": config.training.metric_for_best_model,
        "best_step": None,
        "best_model_checkpoint": str(Path(config.training.output_dir) / "best"),
        "train_runtime": seconds,
        "train_samples_per_second": n_train / max(seconds, 1e-9),
        # The probe is fitted in closed form, not trained: its weights are what it learns.
        "trainable_parameters": probe_size,
        "total_parameters": total,
        "peak_memory_mb": peak_memory_mb(),
        "linear_probe_C": c,
        "linear_probe_search": {f"{k:.6g}": v for k, v in sorted(scores.items())},
    }


def _scored(config, backbone, tuners, task, out: Path, val_examples) -> dict[str, Any]:
    """`val_*` and `test_*` of the probe, with predictions.{val,test}.jsonl."""
    plan = InferencePlan.single(task, encode_settings(config))
    t = config.training
    options = EvalOptions(batch_size=t.eval_batch_size or t.batch_size)
    splits = {"val": val_examples}
    if config.data.test_path:
        splits["test"] = load_split(config, "test")
    results: dict[str, Any] = {}
    for split, examples in splits.items():
        if not examples:
            continue
        metrics, records = evaluate_plan(backbone, tuners, plan, examples, options)
        write_records(records, out / f"predictions.{split}.jsonl")
        results.update({f"{split}_{k}": v for k, v in metrics.items()})
    return results
