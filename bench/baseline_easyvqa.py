"""easy-VQA's classic baseline: a small CNN + bag-of-words model trained from scratch.

    python bench/baseline_easyvqa.py [--seeds 0 1 2] [--epochs 8] [--threads 2]

The model easy-VQA was published with (github.com/vzhou842/easy-VQA): the 64x64 image
through conv 8 (3x3) - max-pool - conv 16 (3x3) - max-pool - dense 32 (tanh); the question
as a bag of words through dense 32 - dense 32 (tanh); their element-wise product through
dense 32 (tanh) - softmax over the 13 answers. As there: Glorot-uniform weights and zero
biases (Keras' defaults; PyTorch's defaults left it near 66% for 8 epochs), Adam (lr 5e-4),
batch 32, 8 epochs over the whole train split (38,575 questions over 4,000 images), in
plain PyTorch. Scored by exact answer on the
first 2,000 test questions (the demo's `data.max_eval_samples`) and on all 9,673, with no
validation split (easy-VQA has none; the demo has none either), after the last epoch.
It anchors the demo's soft prompt on the frozen embedded VLM: same data, same questions.
Results: stdout and bench/results/easyvqa_cnn_baseline.json (every seed, median, min-max).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from easy_vqa import (
    get_answers,
    get_test_image_paths,
    get_test_questions,
    get_train_image_paths,
    get_train_questions,
)
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "easyvqa_cnn_baseline.json"
DEMO_QUESTIONS = 2000
LEARNING_RATE, BATCH = 5e-4, 32  # configs/easyvqa_effnet_smollm2.yaml: data.max_eval_samples


def words(question: str) -> list[str]:
    return re.findall(r"[a-z]+", question.lower())


def images(paths: dict[int, str]) -> dict[int, torch.Tensor]:
    """Each image id -> (3, 64, 64) floats in [-0.5, 0.5], as the original preprocesses."""
    out = {}
    for image_id, path in paths.items():
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255 - 0.5
        out[image_id] = torch.from_numpy(pixels).permute(2, 0, 1)
    return out


def encode(split, vocab: dict[str, int], answers: list[str], pixels: dict[int, torch.Tensor]):
    questions, targets, image_ids = split
    bags = torch.zeros(len(questions), len(vocab))
    for row, question in enumerate(questions):
        for word in words(question):
            if word in vocab:
                bags[row, vocab[word]] = 1.0
    index = {answer: i for i, answer in enumerate(answers)}
    labels = torch.tensor([index[a] for a in targets])
    return torch.stack([pixels[i] for i in image_ids]), bags, labels


class CnnBagOfWords(nn.Module):
    def __init__(self, vocab_size: int, num_answers: int) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 16 * 16, 32), nn.Tanh(),
        )  # fmt: skip
        self.question = nn.Sequential(
            nn.Linear(vocab_size, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh()
        )
        self.head = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, num_answers))
        for layer in self.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, image: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        return self.head(self.image(image) * self.question(bag))


def accuracy(model: nn.Module, data, rows: int | None = None) -> float:
    image, bag, labels = (t[:rows] for t in data)
    with torch.no_grad():
        predicted = torch.cat(
            [
                model(image[i : i + 512], bag[i : i + 512]).argmax(-1)
                for i in range(0, len(labels), 512)
            ]
        )
    return float((predicted == labels).float().mean() * 100)


def train_one(seed: int, epochs: int, train, test, vocab_size: int, num_answers: int) -> dict:
    torch.manual_seed(seed)
    model = CnnBagOfWords(vocab_size, num_answers)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    image, bag, labels = train
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), BATCH):
            rows = order[start : start + BATCH]
            loss = nn.functional.cross_entropy(model(image[rows], bag[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    return {
        "seed": seed,
        "train_seconds": seconds,
        "test_accuracy_first_2000": accuracy(model, test, DEMO_QUESTIONS),
        "test_accuracy_all": accuracy(model, test),
    }


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_split, test_split, answers = get_train_questions(), get_test_questions(), get_answers()
    vocab = {w: i for i, w in enumerate(sorted({w for q in train_split[0] for w in words(q)}))}
    train = encode(train_split, vocab, answers, images(get_train_image_paths()))
    test = encode(test_split, vocab, answers, images(get_test_image_paths()))
    runs = [train_one(s, args.epochs, train, test, len(vocab), len(answers)) for s in args.seeds]
    for run in runs:
        print(
            f"seed {run['seed']}: {run['test_accuracy_first_2000']:.2f}% on the first 2,000 test "
            f"questions, {run['test_accuracy_all']:.2f}% on all 9,673, {run['train_seconds']:.0f} s"
        )
    result = {
        "benchmark": "easy-VQA CNN + bag-of-words from scratch",
        "machine": machine(args.threads),
        "settings": {"epochs": args.epochs, "batch_size": BATCH, "learning_rate": LEARNING_RATE},
        "runs": runs,
        "test_accuracy_first_2000": summary([r["test_accuracy_first_2000"] for r in runs]),
        "test_accuracy_all": summary([r["test_accuracy_all"] for r in runs]),
        "train_seconds": summary([r["train_seconds"] for r in runs]),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
