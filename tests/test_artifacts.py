"""The on-disk formats: each directory is detected as exactly one format and read by it;
manifests list what they always listed, in the order they always had."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.artifacts.bank import BankDir
from softprompt.artifacts.bundle import FORMATS, BundleDir, read_bundle, write_bundle
from softprompt.artifacts.manifest import PromptLoadError, sha256_file
from softprompt.artifacts.peft_files import PeftPrefixDir
from softprompt.artifacts.prompt_dir import PromptDir
from softprompt.tuners.prompt_tuning.bank import PromptBank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner

FINGERPRINT = {"embedding": "ab", "tokenizer": "cd", "vocab_size": 10, "hidden_size": 8}
CONTEXT = {
    "family": "causal_lm",
    "base_model": "tiny",
    "fingerprint": FINGERPRINT,
    "task": {"type": "text2text"},
}


class _FileTuner:
    """A tuner that saves one file: enough for the bundle's own bookkeeping."""

    name = adapter = saved_method = "lora"
    enabled = True

    def save(self, directory, context):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "adapter_model.safetensors").write_bytes(b"weights")


def _prompt(seed: int) -> PromptTuner:
    return PromptTuner.from_weight(torch.randn(3, 8, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture
def saved(tmp_path):
    extras = {"proj.weight": torch.ones(2, 8)}
    write_bundle(tmp_path / "prompt", [_prompt(0)], CONTEXT, extras)
    bank = PromptBank({"a": _prompt(1), "b": _prompt(2)}, {"a": {"type": "a"}})
    write_bundle(tmp_path / "bank", [bank], CONTEXT, extras)
    write_bundle(tmp_path / "bundle", [_prompt(3), _FileTuner()], CONTEXT, extras)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    config = {"peft_type": "PREFIX_TUNING", "base_model_name_or_path": "tiny"}
    (prefix / "adapter_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("name", "fmt", "method"),
    [
        ("prompt", PromptDir, "prompt_tuning"),
        ("bank", BankDir, "prompt_bank"),
        ("bundle", BundleDir, "prompt_tuning"),
        ("prefix", PeftPrefixDir, "prefix_tuning"),
    ],
)
def test_each_directory_is_one_format(saved, name, fmt, method):
    assert [f for f in FORMATS if f.detect(saved / name)] == [fmt]
    bundle = read_bundle(saved / name)
    assert bundle.adapters[next(iter(bundle.adapters))].method == method
    assert bundle.base_model == "tiny"


def test_manifests_keep_their_fields_and_files(saved):
    bank = json.loads((saved / "bank" / "softprompt.json").read_text())
    assert list(bank) == [
        "format", "format_version", "kind", "family", "base_model", "fingerprint",
        "placement", "task", "members", "files", "adapters",
    ]  # fmt: skip
    assert "a/softprompt.json" in bank["files"]  # a bank covers its members' manifests
    assert bank["task"] == {"type": "a"} and bank["members"]["b"]["task"] == {}
    bundle = json.loads((saved / "bundle" / "softprompt.json").read_text())
    assert list(bundle)[-2:] == ["adapters", "files"]
    assert sorted(bundle["files"]) == [
        "lora/adapter_model.safetensors",
        "prompt/adapter_config.json",
        "prompt/adapter_model.safetensors",
    ]  # a bundle never covered the prompt's manifest; the prompt carries the extras
    prompt = json.loads((saved / "prompt" / "softprompt.json").read_text())
    assert list(prompt)[:2] == ["format", "format_version"] and prompt["format_version"] == 1
    assert list(prompt)[-2:] == ["files", "adapters"]
    assert prompt["files"]["adapter_model.safetensors"] == sha256_file(
        saved / "prompt" / "adapter_model.safetensors"
    )


def test_saving_twice_writes_the_same_bytes(saved, tmp_path):
    bank = PromptBank({"a": _prompt(1), "b": _prompt(2)}, {"a": {"type": "a"}})
    write_bundle(tmp_path / "again", [bank], CONTEXT, {"proj.weight": torch.ones(2, 8)})
    for path in sorted((saved / "bank").rglob("*")):
        if path.is_file():
            again = tmp_path / "again" / path.relative_to(saved / "bank")
            assert again.read_bytes() == path.read_bytes(), path.name


def test_an_undetected_directory_is_read_as_a_prompt_and_refused(tmp_path):
    with pytest.raises(PromptLoadError, match="prompt directory not found"):
        read_bundle(tmp_path / "missing")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(PromptLoadError, match="needs PROMPT_TUNING"):
        read_bundle(tmp_path / "lora")
