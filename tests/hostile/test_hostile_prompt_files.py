"""Hostile prompt files: a prompt whose tensor disagrees with its own config, or holds NaN or
infinite values, is refused on load with one line naming the file, even when every
checksum was updated to match; a prompt of another hidden size names both sizes.

Covered: too many / too few vectors for `num_virtual_tokens`, a width other than
`token_dim`, `softprompt.json` shapes or hidden size that disagree, NaN and infinite
values (also in the saved extras and a PEFT `adapter_model.bin`), a PEFT prompt without
our manifest (its stacked seq2seq prompts still load), a bank member tampered with under
a re-checksummed bank, a PEFT prefix with NaN weights, and the width message through
`predict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from serve_helpers import context, write_bank, write_prompt

from softprompt.artifacts.bundle import read_bundle
from softprompt.artifacts.manifest import PromptLoadError, sha256_file
from softprompt.artifacts.peft_files import read_adapter_weights
from softprompt.artifacts.prompt_dir import check_compatible, load_prompt
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.inference.loaded import LoadedModel

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = {"type": "text2text", "max_new_tokens": 2}


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return load_backbone(str(tiny_models["gpt2"]))


@pytest.fixture
def prompt(gpt2, tmp_path) -> Path:
    return write_prompt(tmp_path / "prompt", gpt2, 4, 0, TASK)


def rechecksum(directory: Path) -> None:
    """Update `softprompt.json`'s checksums to the files as they are now (a forger's step)."""
    meta_path = directory / "softprompt.json"
    meta = json.loads(meta_path.read_text())
    meta["files"] = {name: sha256_file(directory / name) for name in meta["files"]}
    meta_path.write_text(json.dumps(meta, indent=2))


def replace_weights(directory: Path, weight: torch.Tensor, **extra: torch.Tensor) -> None:
    tensors = {"prompt_embeddings": weight, **extra}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    if (directory / "softprompt.json").is_file():
        rechecksum(directory)


def edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}, indent=2))


def refused(directory: Path, *needles: str) -> str:
    with pytest.raises(PromptLoadError) as caught:
        load_prompt(directory)
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("rows", [5, 3, 8])
def test_more_or_fewer_vectors_than_the_config_says_are_refused(prompt, rows):
    replace_weights(prompt, torch.randn(rows, 32))
    refused(prompt, "adapter_model.safetensors", f"holds {rows} vectors", "num_virtual_tokens 4")


def test_a_width_other_than_token_dim_is_refused(prompt):
    replace_weights(prompt, torch.randn(4, 40))
    refused(prompt, "token_dim", "4 x 40")


@pytest.mark.parametrize(
    "field,value",
    [("num_virtual_tokens", 5), ("token_dim", 40)],
)
def test_configs_that_disagree_with_the_tensor_are_refused(prompt, field, value):
    edit_json(prompt / "adapter_config.json", **{field: value})
    rechecksum(prompt)
    refused(prompt, "adapter_config.json", field)


@pytest.mark.parametrize("field", ["num_virtual_tokens", "token_dim"])
def test_a_manifest_that_disagrees_with_the_tensor_is_refused(prompt, field):
    edit_json(prompt / "softprompt.json", **{field: 7})
    refused(prompt, "softprompt.json", field, "7")


def test_a_manifest_hidden_size_other_than_the_width_is_refused(prompt):
    meta = json.loads((prompt / "softprompt.json").read_text())
    edit_json(prompt / "softprompt.json", fingerprint={**meta["fingerprint"], "hidden_size": 64})
    refused(prompt, "softprompt.json", "fingerprint.hidden_size", "64")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinite_prompts_are_refused(prompt, bad):
    weight = torch.randn(4, 32)
    weight[1, 3] = bad
    replace_weights(prompt, weight)
    refused(prompt, "adapter_model.safetensors", "NaN or infinite", "1 NaN")


def test_an_all_nan_prompt_is_refused(prompt):
    replace_weights(prompt, torch.full((4, 32), float("nan")))
    refused(prompt, "adapter_model.safetensors", "128 NaN or infinite")


def test_nan_extras_beside_the_prompt_are_refused(prompt):
    replace_weights(
        prompt, torch.randn(4, 32), **{"projection.weight": torch.full((2,), torch.nan)}
    )
    refused(prompt, "projection.weight")


def test_a_peft_prompt_without_our_manifest_is_checked_too(prompt):
    (prompt / "softprompt.json").unlink()
    replace_weights(prompt, torch.randn(5, 32))
    refused(prompt, "holds 5 vectors")
    replace_weights(prompt, torch.full((4, 32), float("inf")))
    refused(prompt, "NaN or infinite")


def test_a_peft_bin_prompt_with_nan_is_refused(prompt):
    (prompt / "softprompt.json").unlink()
    (prompt / "adapter_model.safetensors").unlink()
    torch.save({"prompt_embeddings": torch.full((4, 32), torch.nan)}, prompt / "adapter_model.bin")
    refused(prompt, "adapter_model.bin", "NaN")


def test_peft_seq2seq_prompts_stacked_two_high_still_load(prompt):
    """PEFT saves a seq2seq prompt as encoder + decoder halves (num_transformer_submodules 2)."""
    (prompt / "softprompt.json").unlink()
    edit_json(prompt / "adapter_config.json", num_transformer_submodules=2)
    stacked = torch.randn(8, 32)
    replace_weights(prompt, stacked)
    assert torch.equal(load_prompt(prompt).weight, stacked[:4])
    edit_json(prompt / "adapter_config.json", num_transformer_submodules=None)
    assert load_prompt(prompt).weight.shape == (4, 32)
    replace_weights(prompt, torch.randn(12, 32))
    refused(prompt, "holds 12 vectors")


def test_a_tampered_bank_member_is_refused(gpt2, tmp_path):
    bank = write_bank(tmp_path / "bank", gpt2, {"a": TASK, "b": TASK})
    member = bank / "b"
    rows = load_prompt(member).weight.shape[0]
    replace_weights(member, torch.randn(rows + 1, 32))
    rechecksum(bank)  # the bank's manifest covers the member's files: updated too
    read_bundle(bank)  # every checksum matches
    with pytest.raises(PromptLoadError, match=f"holds {rows + 1} vectors"):
        LoadedModel.from_bundle(bank)


def test_a_peft_prefix_with_nan_weights_is_refused(tmp_path):
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    table = torch.randn(4, 2 * 2 * 32)
    table[0, 0] = torch.nan
    save_file({"prompt_embeddings": table}, str(prefix / "adapter_model.safetensors"))
    with pytest.raises(PromptLoadError, match="NaN"):
        read_adapter_weights(prefix)


@pytest.fixture(scope="module")
def wide_prompt(tiny_models, tmp_path_factory) -> Path:
    """A prompt trained on a 48-wide GPT-2 with the tiny GPT-2's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("wide")
    config = GPT2Config.from_pretrained(tiny_models["gpt2"])
    config.n_embd = 48
    GPT2LMHeadModel(config).save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_models["gpt2"]).save_pretrained(root / "model")
    return write_prompt(root / "prompt", load_backbone(str(root / "model")), 4, 0, TASK)


def test_the_width_message_names_both_hidden_sizes(wide_prompt, gpt2, tiny_models, capsys):
    with pytest.raises(PromptLoadError) as caught:
        check_compatible(load_prompt(wide_prompt), gpt2)
    message = str(caught.value)
    assert "hidden size 48" in message and "hidden size 32" in message, message
    code = main(["predict", "--prompt", str(wide_prompt), "--model", str(tiny_models["gpt2"]),
                 "--text", "red cat"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "hidden size 48" in err and "hidden size 32" in err, err


def test_predict_refuses_a_forged_prompt_in_one_line(prompt, capsys):
    replace_weights(prompt, torch.randn(5, 32))
    assert main(["predict", "--prompt", str(prompt), "--text", "red cat"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "holds 5 vectors" in err, err


def test_a_sound_prompt_still_loads(prompt, gpt2):
    loaded = load_prompt(prompt)
    check_compatible(loaded, gpt2)
    assert loaded.weight.shape == (4, 32)
    assert context(gpt2)["fingerprint"] == loaded.meta["fingerprint"]
