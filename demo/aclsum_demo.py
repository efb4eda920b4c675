"""`make demo`: prompt-tune the embedded SmolLM2-135M on aclsum and report ROUGE-L.

Evaluates the bare model (zero-shot, same template) on the aclsum test split, trains a
20-token soft prompt, then evaluates the best prompt on the same split. Everything runs
offline from weights and data that ship inside Python packages.

    python demo/aclsum_demo.py [key.sub=value ...]
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from softprompt.cli import _setup_logging
from softprompt.config import load_config
from softprompt.evaluate import evaluate
from softprompt.runtime import backbone_from_config, encode_settings, load_split
from softprompt.train.loop import train

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "aclsum_smollm2.yaml"


def main(overrides: list[str]) -> int:
    _setup_logging(verbose=False)
    log = logging.getLogger("softprompt")
    config = load_config(CONFIG, overrides)
    started = time.perf_counter()

    log.info("Zero-shot: the bare model with the same template on the test split")
    backbone = backbone_from_config(config)
    test = load_split(config, "test")
    zero_shot, _ = evaluate(
        backbone,
        None,
        test,
        encode_settings(config),
        batch_size=config.training.eval_batch_size or config.training.batch_size,
        max_new_tokens=config.task.max_new_tokens,
        progress=True,
    )
    del backbone

    log.info("Prompt tuning (%s)", CONFIG.name)
    results = train(config, progress=True)
    minutes = (time.perf_counter() - started) / 60

    rows = [
        ("zero-shot (no prompt)", zero_shot["rougeL"], zero_shot["rouge1"], zero_shot["loss"]),
        (
            f"soft prompt ({config.method.prompt_tuning.num_virtual_tokens} tokens)",
            results["test_rougeL"],
            results["test_rouge1"],
            results["test_loss"],
        ),
    ]
    print()
    print(f"aclsum/outcome test split, {len(test)} papers, embedded:smollm2-135m")
    print("| model | ROUGE-L | ROUGE-1 | loss |")
    print("|---|---|---|---|")
    for name, rouge_l, rouge_1, loss in rows:
        print(f"| {name} | {rouge_l:.2f} | {rouge_1:.2f} | {loss:.3f} |")
    print(f"Total time: {minutes:.1f} min. Run directory: {config.training.output_dir}")
    summary = {
        "zero_shot": zero_shot,
        "tuned": {k: v for k, v in results.items() if k.startswith("test_")},
    }
    out = Path(config.training.output_dir) / "demo_results.json"
    out.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
