"""`softprompt export --merge`: fold LoRA (or a full fine-tune) into a plain model directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from softprompt.config.run import ConfigError
from softprompt.inference.loaded import LoadedModel


def export_merged(
    bundle: str | Path, output: str | Path, model: str | None = None, overwrite: bool = False
) -> Path:
    """Write the bundle's model with LoRA merged into its weights, loadable by `from_pretrained`.

    The written directory is the model PEFT users wrap (the language model of a composed
    model, the whole BLIP-2 model, the text model itself) plus its tokenizer. A soft prompt
    or prefix in the bundle stays one: it is copied to `OUTPUT/prompt/` (`OUTPUT/prefix/`),
    for `softprompt predict --prompt OUTPUT/prompt --model OUTPUT`.

    OUTPUT is written whole or not at all: into a hidden sibling directory first, which
    then takes OUTPUT's place, so no file of an earlier export (or anything else) stays
    beside the new model, and a failed export leaves OUTPUT as it was.

    Raises:
        ConfigError: the bundle has neither LoRA nor a full fine-tune to merge; OUTPUT is
            a file, holds the bundle, or is a non-empty directory and `overwrite` is false;
            OUTPUT cannot be written (names it and the OS's reason).
    """
    output = Path(output)
    check_output(bundle, output, overwrite)
    loaded = LoadedModel.from_bundle(bundle, model=model, device="cpu")
    lora, full = loaded.tuners.get("lora"), loaded.tuners.get("full")
    if lora is None and full is None:
        raise ConfigError(f"{bundle}: nothing to merge (no LoRA or full fine-tune adapter)")
    merged = lora.merge_into_base() if lora is not None else full.target
    adapters = [a for a in ("prompt", "prefix") if loaded.tuners.get(a) is not None]

    def write(directory: Path) -> None:
        merged.save_pretrained(str(directory), safe_serialization=True)
        loaded.backbone.tokenizer.save_pretrained(str(directory))
        for adapter in adapters:  # they act on the merged model as they did before
            shutil.copytree(Path(bundle) / adapter, directory / adapter)

    replace_directory(output, write)
    return output


def check_output(bundle: str | Path, output: Path, overwrite: bool) -> None:
    """Refuse an OUTPUT that an export would wrongly replace (before any model is loaded).

    Raises:
        ConfigError: OUTPUT is not a directory, holds the bundle (replacing it would delete
            the bundle), or is not empty while `overwrite` is false.
    """
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: is a file, not a directory; pick a directory")
    if not output.is_dir():
        return
    target, source = output.resolve(), Path(bundle).resolve()
    if target == source or target in source.parents:
        raise ConfigError(
            f"--output {output}: holds the bundle {bundle}, which replacing it would delete; "
            "pick another directory"
        )
    if not overwrite and any(output.iterdir()):
        raise ConfigError(
            f"--output {output}: directory is not empty; pass --overwrite to replace it "
            "(its files are removed), or pick an empty or new directory"
        )


def replace_directory(output: Path, write, what: str = "the merged model") -> None:
    """Call `write(tmp)` on a fresh sibling of `output`, then rename it to `output`.

    An existing `output` is moved aside first and removed after the rename; if anything
    fails, the sibling is removed and `output` is left as it was.

    Args:
        what: what is written, for the error message.

    Raises:
        ConfigError: the directory cannot be written or renamed (names it and why).
    """
    real = output.resolve()  # through a symlink: the directory it names is replaced
    tmp = real.parent / f".{real.name}.tmp-{os.getpid()}"
    old = real.parent / f".{real.name}.old-{os.getpid()}"
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier process of this PID
        tmp.mkdir()
        write(tmp)
        _swap_in(tmp, real, old)
    except OSError as err:
        raise ConfigError(
            f"--output {output}: cannot write {what} ({err.strerror or err}); "
            "the directory is unchanged"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _swap_in(tmp: Path, output: Path, old: Path) -> None:
    """Rename `tmp` to `output`, moving an existing `output` to `old` first (back on failure)."""
    if not output.exists():
        os.replace(tmp, output)
        return
    os.replace(output, old)
    try:
        os.replace(tmp, output)
    except OSError:
        os.replace(old, output)
        raise
