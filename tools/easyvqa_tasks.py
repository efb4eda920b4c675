"""Write easy-VQA as two tasks for a prompt bank: yes/no questions and "what" questions.

    python tools/easyvqa_tasks.py runs/easyvqa_tasks [--test-questions 2000]
    softprompt train configs/easyvqa_two_task_bank.yaml

Each task gets `<task>_train.jsonl` (all training questions of that kind) and
`<task>_test.jsonl` (its questions among the first N test questions, the ones the
single-prompt config evaluates), as image-text VQA records: image_path, question, answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from softprompt.data.vqa import load_easy_vqa


def task_of(question: str) -> str:
    return "what" if question.lower().startswith("what") else "yesno"


def write(directory: Path, split: str, limit: int | None) -> dict[str, int]:
    examples = load_easy_vqa(split)[:limit] if limit else load_easy_vqa(split)
    handles = {
        t: open(directory / f"{t}_{split}.jsonl", "w", encoding="utf-8") for t in ("yesno", "what")
    }
    counts = dict.fromkeys(handles, 0)
    for e in examples:
        kind = task_of(e.text)
        record = {"id": e.id, "image_path": e.image_path, "question": e.text, "answer": e.target}
        handles[kind].write(json.dumps(record) + "\n")
        counts[kind] += 1
    for handle in handles.values():
        handle.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--test-questions", type=int, default=2000)
    args = parser.parse_args()
    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    print("train", write(directory, "train", None))
    print("test", write(directory, "test", args.test_questions))


if __name__ == "__main__":
    main()
