"""Fashion-MNIST anchor: the embedded VLM's soft prompt against a linear probe and zero-shot.

    python bench/anchor_fashion_mnist.py [--train-per-class 200] [--test-per-class 100]
        [--steps 300] [--seed 0]

Fashion-MNIST (Debian's `dataset-fashion-mnist`: `/usr/share/datasets/fashion-mnist/*.gz`)
is written as image folders, one per class (the first N images of each class of the
official train and test files), and the same frozen EfficientNet-Lite0 features feed
three rows, all scored on the same test images:

* zero-shot: `softprompt baseline` on the frozen VLM (projection as initialised, the
  config's hard prompt), ranking the 10 class words;
* soft prompt: `softprompt train` of the demo's recipe (11-token prompt + MLP projection)
  with `task.type: classify`, scored the same way;
* linear probe: scikit-learn's logistic regression on the very features the projection
  reads (the 4 pooled encoder tokens, flattened), C picked on a fifth of the train
  images: the ceiling of a frozen encoder with a linear read-out.

The three share one disk feature cache, so the encoder runs once per image.
Results: stdout and bench/results/fashion_mnist_anchor.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from machine import machine  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = HERE / "results" / "fashion_mnist_anchor.json"
WORK = ROOT / "runs" / "bench" / "fashion_mnist"
# Folder name -> the words the model says, in the official label order.
CLASSES = {
    "t_shirt": "t-shirt", "trouser": "trousers", "pullover": "pullover", "dress": "dress",
    "coat": "coat", "sandal": "sandal", "shirt": "shirt", "sneaker": "sneaker",
    "bag": "bag", "ankle_boot": "ankle boot",
}  # fmt: skip
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def read_idx(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of one official split."""
    images_file, labels_file = (
        SOURCE / f"{prefix}-images-idx3-ubyte.gz",
        SOURCE / f"{prefix}-labels-idx1-ubyte.gz",
    )
    if not images_file.is_file():
        raise SystemExit(f"{images_file}: not found; apt-get install dataset-fashion-mnist")
    with gzip.open(images_file) as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_file) as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    return images, labels


def write_folders(prefix: str, split: str, per_class: int) -> Path:
    """The first `per_class` images of each class as PNGs under WORK/<split>/<class>/."""
    images, labels = read_idx(prefix)
    root = WORK / split
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            path = folder / f"{k:04d}.png"
            if not path.is_file():
                Image.fromarray(images[index], mode="L").save(path)
    return root


def write_config(train: Path, test: Path, steps: int, seed: int) -> Path:
    """The demo's recipe (configs/easyvqa_effnet_smollm2.yaml) turned to classification."""
    labels = "\n".join(f"    {name}: {words!r}" for name, words in CLASSES.items())
    text = f"""model:
  name_or_path: embedded:effnet-smollm2
  projection: mlp
  train_projection: true
  num_image_tokens: 4
  dtype: bfloat16
method:
  prompt_tuning:
    num_virtual_tokens: 11
    init_method: TEXT
    init_text: "Answer the question about the picture. The picture shows a"
    placement: before_image
data:
  train_path: {train}
  test_path: {test}
  validation: false
  template: ".\\n{{instruction}}"
  feature_cache: disk
  cache_dir: {WORK / "features"}
task:
  type: classify
  instruction: "What piece of clothing is it?"
  labels:
{labels}
training:
  output_dir: {WORK / "prompt"}
  overwrite_output_dir: true
  max_steps: {steps}
  batch_size: 16
  learning_rate: 0.01
  projection_learning_rate: 0.003
  warmup_steps: 20
  save_steps: {steps}
  eval_batch_size: 64
  bf16: true
  seed: {seed}
"""
    path = WORK / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def softprompt(*args: str) -> float:
    """Run one `softprompt` command; its wall seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "softprompt", *args]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def folder_features(config_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (flattened frozen features the projection reads, class indices)."""
    from softprompt.backbones.from_config import backbone_from_config
    from softprompt.config.run import load_config

    backbone = backbone_from_config(load_config(config_path))
    out = {}
    for split in ("train", "test"):
        paths, labels = [], []
        for label, name in enumerate(CLASSES):
            files = sorted((WORK / split / name).glob("*.png"))
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        features = backbone.image_features(paths).float().flatten(1).numpy()
        out[split] = (features, np.asarray(labels))
    return out


def linear_probe(features: dict, seed: int) -> dict:
    """Logistic regression, C chosen on a held-out fifth of train, refitted on all of it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(x, y, c):
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        return make_pipeline(StandardScaler(), model).fit(x, y)

    (x, y), (x_test, y_test) = features["train"], features["test"]
    held = np.random.default_rng(seed).permutation(len(y)) % 5 == 0
    scores = {c: fit(x[~held], y[~held], c).score(x[held], y[held]) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    started = time.perf_counter()
    accuracy = 100 * fit(x, y, best).score(x_test, y_test)
    return {
        "test_accuracy": accuracy,
        "C": best,
        "held_out_accuracy_by_C": {str(c): 100 * s for c, s in scores.items()},
        "fit_seconds": time.perf_counter() - started,
        "feature_dim": int(x.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    host = machine(threads=os.cpu_count() or 1)  # torch's default: one thread per core
    train = write_folders("train", "train", args.train_per_class)
    test = write_folders("t10k", "test", args.test_per_class)
    config = write_config(train, test, args.steps, args.seed)
    started = time.perf_counter()
    probe = linear_probe(folder_features(config), args.seed)
    probe["seconds"] = time.perf_counter() - started
    zero_seconds = softprompt("baseline", str(config), "--split", "test", "--no-progress")
    zero = json.loads((WORK / "prompt" / "baseline" / "metrics.json").read_text("utf-8"))["test"]
    train_seconds = softprompt("train", str(config), "--no-progress")
    tuned = json.loads((WORK / "prompt" / "all_results.json").read_text("utf-8"))
    rows = {
        "zero_shot": {"test_accuracy": zero["accuracy"], "seconds": zero_seconds},
        "soft_prompt": {"test_accuracy": tuned["test_accuracy"], "seconds": train_seconds},
        "linear_probe": probe,
    }
    for name, row in rows.items():
        print(f"{name}: {row['test_accuracy']:.2f}% ({row['seconds']:.0f} s)")
    result = {
        "benchmark": "Fashion-MNIST: soft prompt vs linear probe vs zero-shot",
        "machine": host,
        "settings": {**vars(args), "classes": CLASSES, "C_grid": list(C_GRID)},
        "rows": rows,
        "gap_to_linear_probe": probe["test_accuracy"] - tuned["test_accuracy"],
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
