"""Hot adapter switches vs reloading: what turning a bundle's prompt or LoRA off costs.

Builds a prompt + LoRA bundle on the embedded SmolLM2-135M (a 20-token prompt, LoRA r=8 on
q_proj/v_proj with non-zero B so it changes outputs), then measures in the same run:
  * reload: `LoadedModel.from_bundle` + `set_adapters` (what a user without switches does:
    load the model again with the other adapter set);
  * switch: `LoadedModel.set_adapters` on the already loaded model.
After each, 8 aclsum rows are scored (untimed): the two models must give identical scores.
Prints the median of --rounds and the ratio reload / switch; writes bench/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from softprompt.artifacts.prompt_dir import fingerprint  # noqa: E402
from softprompt.backbones.base import EncodeSettings  # noqa: E402
from softprompt.backbones.loading import load_backbone  # noqa: E402
from softprompt.data.text import load_text_examples  # noqa: E402
from softprompt.inference.loaded import LoadedModel  # noqa: E402
from softprompt.tuners.lora.config import LoraSettings  # noqa: E402
from softprompt.tuners.lora.tuner import LoraTuner  # noqa: E402
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig  # noqa: E402
from softprompt.tuners.prompt_tuning.tuner import PromptTuner  # noqa: E402
from softprompt.tuners.tuner_set import TunerSet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "embedded:smollm2-135m"


def make_bundle(directory: Path) -> Path:
    backbone = load_backbone(MODEL)
    fp = fingerprint(backbone.word_embeddings(), backbone.tokenizer)
    pt = PromptTuningConfig(num_virtual_tokens=20, init_method="VOCAB")
    prompt = PromptTuner.for_backbone(pt, backbone, learning_rate=0.03, seed=0)
    lora = LoraTuner.create(LoraSettings(enabled=True, r=8, dropout=0.0), backbone)
    with torch.no_grad():
        for module in lora.modules()["lora"].modules():
            if isinstance(module, torch.nn.Linear) and module.weight.shape[1] == 8:
                module.weight.normal_(0, 0.02)  # lora_B: make LoRA change the outputs
    context = {"family": backbone.family, "base_model": MODEL, "fingerprint": fp, "task": {}}
    TunerSet([prompt, lora], backbone).save(directory, context)
    return directory


def score(loaded: LoadedModel, rows) -> torch.Tensor:
    batch = loaded.backbone.collate(rows, EncodeSettings(max_input_length=128), True)
    with torch.no_grad():
        return loaded.backbone.sequence_logprobs(batch, loaded.tuners.prompt_input(len(rows)))


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("softprompt").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    rows = load_text_examples("builtin:aclsum/outcome", split="val", max_samples=8)
    reloads, switches, same = [], [], True
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "bundle")
        loaded = LoadedModel.from_bundle(bundle, device="cpu")
        for round_ in range(args.rounds):
            state = {"prompt": round_ % 2 == 1, "lora": True}

            def reload(state=state):
                fresh = LoadedModel.from_bundle(bundle, device="cpu")
                fresh.set_adapters(state)
                return fresh

            reload_s, fresh = timed(reload)
            switch_s, _ = timed(lambda state=state: loaded.set_adapters(state))
            same = same and torch.equal(score(fresh, rows), score(loaded, rows))
            reloads.append(reload_s)
            switches.append(switch_s)
    result = {
        "reload_s_median": statistics.median(reloads),
        "switch_s_median": statistics.median(switches),
        "ratio": statistics.median(reloads) / statistics.median(switches),
        "identical_scores": same,
        "rounds": args.rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "switch.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("| path | seconds (median) |\n|---|---:|")
    print(f"| reload the model with the other adapters | {result['reload_s_median']:.3f} |")
    print(f"| hot switch (set_adapters) | {result['switch_s_median']:.5f} |")
    print(f"\nreload / switch: {result['ratio']:,.0f}x; identical scores: {same}")
    if not same:
        raise SystemExit("switched and reloaded models disagree")


if __name__ == "__main__":
    main()
