"""`softprompt export --merge`: fold LoRA (or a full fine-tune) into a plain model directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from softprompt.config.run import ConfigError
from softprompt.inference.loaded import LoadedModel


def export_merged(bundle: str | Path, output: str | Path, model: str | None = None) -> Path:
    """Write the bundle's model with LoRA merged into its weights, loadable by `from_pretrained`.

    The written directory is the model PEFT users wrap (the language model of a composed
    model, the whole BLIP-2 model, the text model itself) plus its tokenizer. A soft prompt
    or prefix in the bundle stays one: it is copied to `OUTPUT/prompt/` (`OUTPUT/prefix/`),
    for `softprompt predict --prompt OUTPUT/prompt --model OUTPUT`.

    Raises:
        ConfigError: the bundle has neither LoRA nor a full fine-tune to merge.
    """
    loaded = LoadedModel.from_bundle(bundle, model=model, device="cpu")
    lora, full = loaded.tuners.get("lora"), loaded.tuners.get("full")
    if lora is None and full is None:
        raise ConfigError(f"{bundle}: nothing to merge (no LoRA or full fine-tune adapter)")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    merged = lora.merge_into_base() if lora is not None else full.target
    merged.save_pretrained(str(output), safe_serialization=True)
    loaded.backbone.tokenizer.save_pretrained(str(output))
    for adapter in ("prompt", "prefix"):  # they act on the merged model as they did before
        if loaded.tuners.get(adapter) is not None:
            shutil.copytree(Path(bundle) / adapter, output / adapter, dirs_exist_ok=True)
    return output
