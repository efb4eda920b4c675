"""`make demo`: zero-shot vs prompt-tuned, on the embedded offline models.

Evaluates the bare model on the test split (saved as the run's zero-shot baseline),
trains the config's soft prompt, evaluates the trained prompt on the same split, prints
both and writes the run's HTML report (`softprompt report`). Everything runs offline
from weights and data that ship inside Python packages.

    python demo/run_demo.py [CONFIG] [key.sub=value ...]

Default config: configs/easyvqa_effnet_smollm2.yaml (EfficientNet-Lite0 -> projection ->
SmolLM2-135M on easy-VQA). configs/aclsum_smollm2.yaml runs the text demo.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from softprompt.commands.cli import _setup_logging
from softprompt.config.run import load_config
from softprompt.train.loop import train
from softprompt.workflows.report.baseline import run_baseline
from softprompt.workflows.report.build import write_report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "easyvqa_effnet_smollm2.yaml"
# The headline metric of each task, and how the table names it.
HEADLINE = {
    "text2text": [("rougeL", "ROUGE-L"), ("rouge1", "ROUGE-1")],
    "vqa": [("exact_match", "accuracy (exact match)"), ("vqa_accuracy", "VQA accuracy")],
    "classify": [("accuracy", "accuracy"), ("f1_macro", "macro F1")],
    "caption": [("cider", "CIDEr"), ("bleu", "BLEU")],
}


def main(argv: list[str]) -> int:
    _setup_logging(verbose=False)
    log = logging.getLogger("softprompt")
    config_path = Path(argv[0]) if argv and argv[0].endswith(".yaml") else DEFAULT_CONFIG
    overrides = argv[1:] if argv and argv[0].endswith(".yaml") else argv
    # A second `make demo` trains again from scratch in the same directory.
    config = load_config(config_path, ["training.overwrite_output_dir=true", *overrides])
    started = time.perf_counter()

    log.info("Zero-shot: the bare model on the test split (same template)")
    # Saved under <output_dir>/baseline with its predictions: the report reuses them.
    zero_shot = run_baseline(config, splits=("test",), progress=True)["test"]
    zero_minutes = (time.perf_counter() - started) / 60

    log.info("Prompt tuning with %s", config_path.name)
    started = time.perf_counter()
    results = train(config, progress=True)
    train_minutes = (time.perf_counter() - started) / 60
    tuned = {k.removeprefix("test_"): v for k, v in results.items() if k.startswith("test_")}

    # Metrics a split does not define (VQA accuracy without annotator sets) are left out.
    columns = [(key, name) for key, name in HEADLINE[config.task.type] if key in tuned]
    print()
    print(
        f"{config.data.train_path} test split, {zero_shot['num_samples']} examples, "
        f"{config.model.name_or_path}"
    )
    print("| model | " + " | ".join(name for _, name in columns) + " | loss |")
    print("|---|" + "---|" * (len(columns) + 1))
    pt = config.method.prompt_tuning
    for label, metrics in (
        ("zero-shot (no prompt)", zero_shot),
        (f"soft prompt ({pt.num_virtual_tokens} tokens), {results['global_step']} steps", tuned),
    ):
        cells = " | ".join(f"{metrics.get(key, float('nan')):.2f}" for key, _ in columns)
        print(f"| {label} | {cells} | {metrics['loss']:.3f} |")
    print(
        f"Time: zero-shot eval {zero_minutes:.1f} min, training + test eval "
        f"{train_minutes:.1f} min. Run directory: {config.training.output_dir}"
    )
    out = Path(config.training.output_dir) / "demo_results.json"
    out.write_text(json.dumps({"zero_shot": zero_shot, "tuned": tuned}, indent=2), "utf-8")
    report = write_report(config.training.output_dir)
    print(f"Report: {report.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
