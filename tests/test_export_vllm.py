"""`softprompt export PROMPT --format vllm-prompt-embeds` and the vLLM request client.

The body's `prompt_embeds` must be exactly what our splice feeds the model in `predict`
for the same input: the tests capture the `inputs_embeds` the backbone passes to the
Hugging Face model's forward and compare bit for bit, for a trained prompt directory, a
bundle, a bank task and a bfloat16 export. What vLLM cannot take is refused by name.
"""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
import torch
from helpers import make_config, toy_task, write_config, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.artifacts.bundle import BundleDir, write_bundle
from softprompt.artifacts.fingerprint import fingerprint
from softprompt.artifacts.manifest import META_FILE, PromptLoadError, read_json_object
from softprompt.artifacts.prompt_dir import load_prompt, save_prompt
from softprompt.artifacts.vllm_embeds import EMBEDS_FILE, VllmEmbedsDir
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.data.records import TextExample
from softprompt.inference.loaded import LoadedModel
from softprompt.inference.predict_io import read_inputs
from softprompt.tuners.prompt_tuning.bank import PromptBank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner
from softprompt.workflows.export_vllm import ExportError, export_vllm_prompt_embeds
from softprompt.workflows.vllm_client import (
    VllmPromptClient,
    completion_request,
    decode_prompt_embeds,
    encode_prompt_embeds,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = "Colour of: {input} ="
TEXTS = ["cat red dog", "blue"]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def context(llama):
    """What a saved prompt of the tiny Llama records about its base model."""
    backbone = load_backbone(str(llama))
    return {
        "family": "causal_lm",
        "base_model": str(llama),
        "fingerprint": fingerprint(backbone.word_embeddings(), backbone.tokenizer),
        "placement": "prepend",
        "task": {"type": "text2text", "template": TEMPLATE, "max_new_tokens": 3},
    }


@pytest.fixture(scope="module")
def trained(llama, tmp_path_factory):
    """RUN/best of a two-step prompt run with a data template (a plain prompt directory)."""
    root = tmp_path_factory.mktemp("vllm-train")
    data = {
        "train": write_jsonl(root / "train.jsonl", toy_task(16, seed=1)),
        "val": write_jsonl(root / "val.jsonl", toy_task(4, seed=2)),
        "template": TEMPLATE,
    }
    raw = make_config(
        llama,
        data,
        root / "run",
        task={"max_new_tokens": 2},
        max_steps=2,
        batch_size=8,
        learning_rate=0.1,
        eval_generate=False,
    )
    assert main(["train", str(write_config(root / "config.yaml", raw)), "--no-progress"]) == 0
    return root / "run" / "best"


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    """A `softprompt-bundle` whose one adapter (`prompt/`) is the trained prompt."""
    root = tmp_path_factory.mktemp("vllm-bundle") / "bundle"
    shutil.copytree(trained, root / "prompt")
    meta = read_json_object(trained / META_FILE)
    entry = {"path": "prompt", "method": "prompt_tuning", "enabled": True}
    BundleDir.write(root, meta, {"prompt": entry}, {})
    return root


def export(source, output, *extra: str) -> int:
    argv = ["export", str(source), "--format", "vllm-prompt-embeds", "--output", str(output)]
    return main([*argv, *extra])


def spliced_input(loaded: LoadedModel, examples: list, task: str | None = None) -> torch.Tensor:
    """(S, D) the real positions of the `inputs_embeds` `predict` feeds the model first."""
    seen = []

    def capture(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and not seen:
            # generate leaves the mask out when every position is real.
            mask = kwargs.get("attention_mask")
            mask = torch.ones(embeds.shape[:2], dtype=torch.long) if mask is None else mask
            seen.append((embeds.clone(), mask.clone()))

    # Without the prompt's cached keys and values, the whole input reaches one forward.
    loaded.backbone.prompt_cache.enabled = False
    handle = loaded.backbone.model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        tasks = [task] * len(examples) if task else None
        records = loaded.predict(examples, batch_size=1, tasks=tasks)
    finally:
        handle.remove()
    assert "error" not in records[0], records
    embeds, mask = seen[0]
    return embeds[0][mask[0].bool()]


def text_example(loaded: LoadedModel, text: str, task: str | None = None) -> TextExample:
    """What `predict --text TEXT` reads."""
    return TextExample(id="0", input=loaded.apply_template(text, task))


@pytest.mark.parametrize("source", ["prompt_dir", "bundle"])
def test_body_holds_exactly_the_input_our_splice_feeds_the_model(
    source, trained, bundle, llama, tmp_path
):
    prompt = trained if source == "prompt_dir" else bundle
    assert export(prompt, tmp_path / "out") == 0
    client = VllmPromptClient.load(tmp_path / "out")
    loaded = LoadedModel.from_bundle(prompt, device="cpu")
    for text in TEXTS:
        body = client.request_body(text)
        assert set(body) == {"model", "prompt_embeds", "max_tokens", "temperature"}
        assert body["model"] == str(llama) and body["max_tokens"] == 2
        assert body["temperature"] == 0.0
        sent = decode_prompt_embeds(body["prompt_embeds"])
        expected = spliced_input(loaded, [text_example(loaded, text)])
        assert sent.ndim == 2 and sent.dtype == expected.dtype == torch.float32
        assert torch.equal(sent, expected)
        assert torch.equal(sent[:4], load_prompt(trained).weight)  # the prompt leads


def test_body_encoding_is_vllms(trained, tmp_path):
    """base64 (standard alphabet) of torch.save of a 2-D tensor, under `prompt_embeds`."""
    assert export(trained, tmp_path / "out") == 0
    body = completion_request(tmp_path / "out", "cat", model="served-name", max_tokens=5, n=1)
    assert body["model"] == "served-name" and body["max_tokens"] == 5 and body["n"] == 1
    raw = base64.b64decode(body["prompt_embeds"], validate=True)
    tensor = torch.load(io.BytesIO(raw), weights_only=True)
    assert isinstance(tensor, torch.Tensor) and tensor.ndim == 2 and tensor.shape[1] == 32
    assert decode_prompt_embeds(encode_prompt_embeds(tensor)).equal(tensor)
    json.dumps(body)  # a JSON body as it stands


def test_cli_writes_the_tensor_and_the_manifest(trained, llama, context, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert export(trained, out) == 0
    serve = f"vllm serve {llama} --enable-prompt-embeds --dtype float32"
    assert serve in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted([META_FILE, EMBEDS_FILE])
    meta = read_json_object(out / META_FILE)
    assert meta["format"] == "softprompt-vllm-prompt-embeds"
    assert meta["base_model"] == meta["checkpoint"] == str(llama)
    assert meta["family"] == "causal_lm"
    assert meta["fingerprint"] == read_json_object(trained / META_FILE)["fingerprint"]
    assert meta["fingerprint"] == context["fingerprint"]
    assert (meta["dtype"], meta["num_virtual_tokens"], meta["hidden_size"]) == ("float32", 4, 32)
    assert meta["prompt_position"] == 0 and meta["generation"]["max_new_tokens"] == 2
    spec = meta["input"]
    assert spec["template"] == TEMPLATE and spec["input_field"] == "input"
    # The tiny Llama's tokenizer puts <s> before the text: it goes after the soft prompt.
    assert spec["before_text"]["tokens"] == ["<s>"] and spec["after_text"]["ids"] == []
    tensor = torch.load(out / EMBEDS_FILE, weights_only=True)
    assert torch.equal(tensor, load_prompt(trained).weight)


def test_round_trip_gives_predicts_greedy_tokens(trained, llama, tmp_path, capsys):
    assert export(trained, tmp_path / "out") == 0
    client = VllmPromptClient.load(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(str(llama)).eval()
    for text in TEXTS:
        embeds = decode_prompt_embeds(client.request_body(text)["prompt_embeds"])
        with torch.no_grad():
            logits = model(inputs_embeds=embeds[None]).logits
            new = model.generate(
                inputs_embeds=embeds[None],
                attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                max_new_tokens=3,
                do_sample=False,
            )
        first = int(logits[0, -1].argmax())
        assert first == int(new[0, 0])
        for tokens, expected in ((1, new[0, :1]), (3, new[0])):
            capsys.readouterr()
            argv = ["predict", "--prompt", str(trained), "--text", text, "--no-progress"]
            assert main([*argv, "--max-new-tokens", str(tokens)]) == 0
            prediction = json.loads(capsys.readouterr().out.splitlines()[0])["prediction"]
            decoded = client.tokenizer.decode(expected, skip_special_tokens=True).strip()
            assert prediction == decoded


def test_bfloat16_export_matches_the_splice_in_bfloat16(trained, tmp_path):
    assert export(trained, tmp_path / "out", "--dtype", "bfloat16") == 0
    assert torch.load(tmp_path / "out" / EMBEDS_FILE, weights_only=True).dtype == torch.bfloat16
    client = VllmPromptClient.load(tmp_path / "out")
    loaded = LoadedModel.from_bundle(trained, dtype="bfloat16", device="cpu")
    sent = decode_prompt_embeds(client.request_body(TEXTS[0])["prompt_embeds"])
    expected = spliced_input(loaded, [text_example(loaded, TEXTS[0])])
    assert sent.dtype == torch.bfloat16 and torch.equal(sent, expected)


def test_input_fields_go_through_the_template_as_predict_reads_records(llama, context, tmp_path):
    template = "Title: {title}. Text: {text} Colour:"
    task = {**context["task"], "template": template, "input_field": "text"}
    weight = torch.randn(3, 32, generator=torch.Generator().manual_seed(3)) * 0.1
    prompt = save_prompt(
        tmp_path / "p",
        weight,
        family="causal_lm",
        base_model=str(llama),
        fingerprint_info=context["fingerprint"],
        task=task,
    )
    assert export(prompt, tmp_path / "out") == 0
    client = VllmPromptClient.load(tmp_path / "out")
    fields = {"text": "cat blue", "title": "pets"}
    sent = decode_prompt_embeds(client.request_body(fields=fields)["prompt_embeds"])
    records = write_jsonl(tmp_path / "in.jsonl", [fields])
    loaded = LoadedModel.from_bundle(prompt, device="cpu")
    examples = read_inputs(str(records), "text", template)  # what `predict --input` reads
    assert client.input_text(fields=fields) == examples[0].input
    assert torch.equal(sent, spliced_input(loaded, examples))
    with pytest.raises(ValueError, match="title"):
        client.request_body(fields={"text": "cat"})


def bank(directory, context, kind="tasks"):
    """A bank of two prompts of different lengths (colour: 3 tokens, count: 5)."""
    gen = torch.Generator().manual_seed(1)
    members = {
        name: PromptTuner.from_weight(torch.randn(k, 32, generator=gen) * 0.1)
        for name, k in (("colour", 3), ("count", 5))
    }
    records = {name: context["task"] for name in members}
    write_bundle(directory, [PromptBank(members, records, kind=kind)], context, {})
    return directory


def test_a_bank_task_exports_its_own_prompt(context, tmp_path):
    source = bank(tmp_path / "bank", context)
    assert export(source, tmp_path / "out", "--task", "colour") == 0
    client = VllmPromptClient.load(tmp_path / "out")
    assert client.export.meta["task"] == "colour"
    assert client.export.prompt.shape == (3, 32)  # the bank's padding is not the prompt
    loaded = LoadedModel.from_bundle(source, device="cpu")
    sent = decode_prompt_embeds(client.request_body(TEXTS[0])["prompt_embeds"])
    expected = spliced_input(loaded, [text_example(loaded, TEXTS[0], "colour")], "colour")
    assert torch.equal(sent, expected)


def test_the_client_refuses_another_base_model(trained, tiny_models, tmp_path):
    assert export(trained, tmp_path / "out") == 0
    with pytest.raises(PromptLoadError, match="pass --model"):
        VllmPromptClient.load(tmp_path / "out", model=str(tiny_models["gpt2"]))


def test_a_changed_export_is_refused(trained, tmp_path):
    assert export(trained, tmp_path / "out") == 0
    torch.save(torch.zeros(4, 32), tmp_path / "out" / EMBEDS_FILE)
    with pytest.raises(PromptLoadError, match="modified or damaged"):
        VllmEmbedsDir.read(tmp_path / "out")
    with pytest.raises(PromptLoadError, match="not a vLLM prompt export"):
        VllmEmbedsDir.read(tmp_path)


# ----------------------------------------------------------------------------- refusals


def with_adapter(directory, context, name, method):
    """A bundle of a soft prompt and a `method` adapter (only its manifest entry matters:
    the refusal comes before anything is loaded)."""
    save_prompt(
        directory / "prompt",
        torch.zeros(2, 32),
        family=context["family"],
        base_model=context["base_model"],
        fingerprint_info=context["fingerprint"],
    )
    (directory / name).mkdir()
    (directory / name / "adapter_config.json").write_text("{}")
    adapters = {
        "prompt": {"path": "prompt", "method": "prompt_tuning", "enabled": True},
        name: {"path": name, "method": method, "enabled": True},
    }
    BundleDir.write(directory, context, adapters, {})
    return directory


def other_family(directory, context, family, base_model):
    return save_prompt(
        directory,
        torch.zeros(2, 32),
        family=family,
        base_model=base_model,
        fingerprint_info=context["fingerprint"],
    )


def peft_prefix(directory, context):
    directory.mkdir()
    config = {"peft_type": "PREFIX_TUNING", "base_model_name_or_path": context["base_model"]}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


REFUSALS = {
    "prefix_in_bundle": (
        lambda d, c: with_adapter(d, c, "prefix", "prefix_tuning"),
        "prefix",
        ["prefix-tuning", "every layer", "input embeddings only"],
    ),
    "peft_prefix": (peft_prefix, "", ["prefix-tuning"]),
    "lora": (
        lambda d, c: with_adapter(d, c, "lora", "lora"),
        "lora",
        ["LoRA", "--merge --output MERGED", "--model MERGED"],
    ),
    "full": (
        lambda d, c: with_adapter(d, c, "full", "full"),
        "full",
        ["full fine-tune", "--merge"],
    ),
    "bank_without_task": (bank, "", ["multi-task prompt bank", "colour, count", "--task NAME"]),
    "ensemble": (
        lambda d, c: bank(d, c, kind="ensemble"),
        "",
        ["ensemble", "one vLLM request cannot"],
    ),
    "blip2": (
        lambda d, c: other_family(d, c, "blip2", "Salesforce/blip2-opt-2.7b"),
        META_FILE,
        ["vision-language", "vLLM issue #44842", "blip2-opt-2.7b"],
    ),
    "composed": (
        lambda d, c: other_family(d, c, "composed", "embedded:effnet-smollm2"),
        META_FILE,
        ["vision-language", "#44842"],
    ),
    "seq2seq": (
        lambda d, c: other_family(d, c, "seq2seq", "google/flan-t5-small"),
        META_FILE,
        ["encoder-decoder", "decoder-only (causal)"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_vllm_cannot_take_is_refused_naming_the_file(case, context, tmp_path, capsys):
    build, named, reasons = REFUSALS[case]
    source = build(tmp_path / "src", context)
    with pytest.raises(ExportError) as refused:
        export_vllm_prompt_embeds(source, tmp_path / "out")
    message = str(refused.value)
    assert str(source / named if named else source) in message
    for reason in reasons:
        assert reason in message, message
    capsys.readouterr()
    assert export(source, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "error: " in err and reasons[0] in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_task_of_a_bank_must_exist_and_a_single_prompt_has_none(trained, context, tmp_path):
    with pytest.raises(ExportError, match="no such task"):
        export_vllm_prompt_embeds(bank(tmp_path / "bank", context), tmp_path / "o", task="x")
    with pytest.raises(ExportError, match="not a multi-task bank"):
        export_vllm_prompt_embeds(trained, tmp_path / "o", task="colour")


def test_export_needs_one_format(trained, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["export", str(trained), "--output", out]) == 2
    assert "--format vllm-prompt-embeds" in capsys.readouterr().err
    argv = ["export", str(trained), "--merge", "--format", "vllm-prompt-embeds", "--output", out]
    assert main(argv) == 2
    assert "disagree" in capsys.readouterr().err
    assert main(["export", str(trained), "--merge", "--task", "x", "--output", out]) == 2
    assert not (tmp_path / "out").exists()


def test_a_lora_bundle_goes_to_vllm_merged_as_the_refusal_says(llama, tmp_path, capsys):
    """prompt + LoRA: `--merge`, then the merged model's prompt: what vLLM then runs on the
    merged model is what `predict` gives with the bundle."""
    data = {"train": write_jsonl(tmp_path / "train.jsonl", toy_task(16, seed=1))}
    method = {"prompt_tuning": {"num_virtual_tokens": 4}, "lora": {"enabled": True, "r": 4}}
    raw = make_config(
        llama, data, tmp_path / "run", method=method, task={"max_new_tokens": 3}, max_steps=2
    )
    raw["training"]["eval_generate"] = False
    assert main(["train", str(write_config(tmp_path / "config.yaml", raw)), "--no-progress"]) == 0
    source, merged = tmp_path / "run" / "best", tmp_path / "merged"
    assert export(source, tmp_path / "refused") == 2
    assert main(["export", str(source), "--merge", "--output", str(merged)]) == 0
    assert export(merged / "prompt", tmp_path / "out", "--model", str(merged)) == 0
    client = VllmPromptClient.load(tmp_path / "out")
    assert client.served_model == str(merged)
    embeds = decode_prompt_embeds(client.request_body(TEXTS[0])["prompt_embeds"])
    loaded = LoadedModel.from_bundle(source, device="cpu")
    assert torch.equal(embeds, spliced_input(loaded, [text_example(loaded, TEXTS[0])]))
    model = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    with torch.no_grad():
        new = model.generate(inputs_embeds=embeds[None], max_new_tokens=3, do_sample=False)
    capsys.readouterr()
    argv = ["predict", "--prompt", str(source), "--text", TEXTS[0], "--no-progress"]
    assert main(argv) == 0
    prediction = json.loads(capsys.readouterr().out.splitlines()[0])["prediction"]
    assert prediction == client.tokenizer.decode(new[0], skip_special_tokens=True).strip()


def test_auto_dtype_is_the_checkpoints_and_float16_needs_a_float16_one(
    llama, trained, context, tmp_path, capsys
):
    half = tmp_path / "tiny-llama-fp16"
    AutoModelForCausalLM.from_pretrained(str(llama), dtype=torch.float16).save_pretrained(half)
    AutoTokenizer.from_pretrained(str(llama)).save_pretrained(half)
    backbone = load_backbone(str(half))  # in float32, as training loads it
    prompt = save_prompt(
        tmp_path / "p",
        load_prompt(trained).weight,
        family="causal_lm",
        base_model=str(half),
        fingerprint_info=fingerprint(backbone.word_embeddings(), backbone.tokenizer),
        task=context["task"],
    )
    assert export(prompt, tmp_path / "out") == 0
    client = VllmPromptClient.load(tmp_path / "out")
    assert client.export.meta["dtype"] == "float16"
    loaded = LoadedModel.from_bundle(prompt, dtype="float16", device="cpu")
    sent = decode_prompt_embeds(client.request_body(TEXTS[0])["prompt_embeds"])
    expected = spliced_input(loaded, [text_example(loaded, TEXTS[0])])
    assert sent.dtype == torch.float16 and torch.equal(sent, expected)
    capsys.readouterr()
    assert export(trained, tmp_path / "refused", "--dtype", "float16") == 2
    assert "stored in float32" in capsys.readouterr().err
