"""Accuracy of an easy-VQA predictions file by question type.

    softprompt eval configs/easyvqa_effnet_smollm2.yaml --prompt RUN/best --split test \\
        --predictions preds
    python tools/easyvqa_by_type.py preds.test.jsonl

Types: "what shape", "what colour", yes/no ("is there a red shape?") and negated yes/no
("is there not a circle?"). Each record needs `question`, `prediction` and `references`
(what `softprompt eval --predictions` writes).
"""

from __future__ import annotations

import collections
import json
import sys


def question_type(question: str) -> str:
    q = question.lower()
    if q.startswith("what"):
        return "colour" if "color" in q or "colour" in q else "shape"
    return "negated yes/no" if " not " in q or q.startswith("is no ") else "yes/no"


def main(path: str) -> None:
    total: collections.Counter[str] = collections.Counter()
    right: collections.Counter[str] = collections.Counter()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            kind = question_type(record["question"])
            total[kind] += 1
            answers = [a.strip().lower() for a in record["references"]]
            right[kind] += record["prediction"].strip().lower() in answers
    for kind in ("shape", "colour", "yes/no", "negated yes/no"):
        if total[kind]:
            print(f"{kind:>15}: {100 * right[kind] / total[kind]:5.1f}% of {total[kind]}")
    print(f"{'all':>15}: {100 * sum(right.values()) / sum(total.values()):5.1f}%")


if __name__ == "__main__":
    main(sys.argv[1])
