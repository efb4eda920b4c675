"""`softprompt export PROMPT --format vllm-prompt-embeds --output DIR`: a soft prompt for vLLM.

vLLM serves a causal LM with `--enable-prompt-embeds` and takes, per request, the input as
embeddings instead of tokens. A soft prompt fits that exactly: the request's embeddings are
`[soft prompt; token embeddings of the templated text]`, as our splice builds them. The
export writes the prompt (in the dtype the model is served in) and what a client needs to
build the rest of the input (`softprompt.artifacts.vllm_embeds`); the client is
`softprompt.workflows.vllm_client`.

Only what prompt_embeds can carry is exported. Refused, each with the file and the reason:
prefix tuning (per-layer keys and values, not input embeddings), LoRA or full fine-tunes
(changed model weights: merge them first), a multi-task bank without `--task`, an
ensemble (several prompts per answer), and every family but causal LMs (vLLM's prompt
embeds are broken for vision-language models, vLLM issue #44842; seq2seq models take none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from softprompt.artifacts.bundle import Bundle, read_bundle
from softprompt.artifacts.fingerprint import fingerprint
from softprompt.artifacts.manifest import META_FILE, model_fields, read_json_object
from softprompt.artifacts.saved import Adapter
from softprompt.artifacts.vllm_embeds import VllmEmbedsDir
from softprompt.backbones.causal_lm import input_token_ids
from softprompt.backbones.embedded import resolve_embedded
from softprompt.backbones.loading import DTYPES
from softprompt.backbones.spec import FAMILIES
from softprompt.errors import UserError
from softprompt.inference.loaded import LoadedModel
from softprompt.inference.plan import Route, rows_prompts
from softprompt.workflows.export import check_output, replace_directory

CAUSAL_LM = "causal_lm"
# A causal LM's soft prompt goes in front of every token, BOS included (`generate`'s
# prompt position for text backbones).
PROMPT_POSITION = 0
PROMPT_METHODS = ("prompt_tuning", "prompt_bank")


class ExportError(UserError):
    """A prompt cannot be exported in the asked format; the message names the file and why."""


def export_vllm_prompt_embeds(
    prompt: str | Path,
    output: str | Path,
    model: str | None = None,
    task: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Write a soft prompt and its input recipe for vLLM's `prompt_embeds` into OUTPUT.

    The prompt is read as `softprompt predict` reads it (checked against the base model's
    fingerprint), so the export holds exactly the vectors `predict` puts in front of the
    text. OUTPUT is written whole or not at all, as `export --merge` writes it.

    Args:
        prompt: a prompt directory, a bundle whose adapter is a soft prompt, or a bank.
        model: the base model (default: the one the prompt records).
        task: the task of a multi-task bank whose prompt to export.
        dtype: "auto" (the dtype the checkpoint is stored in; float32 when it records
            none), "float32", "bfloat16" or "float16".

    Raises:
        ExportError: the prompt is not one vLLM can take (see the module docstring).
        PromptLoadError: the prompt is missing, damaged, or does not fit the base model.
        ConfigError: OUTPUT cannot be used or written (see `check_output`), or no such task.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: pick auto, {', '.join(DTYPES)}")
    output = Path(output)
    check_output(prompt, output, overwrite)
    bundle = read_bundle(prompt)
    refuse_unsupported(bundle, task)
    name = model or bundle.base_model
    stored = checkpoint_dtype(name) if name else None
    chosen = (stored or "float32") if dtype == "auto" else dtype
    if chosen == "float16" and stored not in (None, "float16"):
        raise ExportError(
            f"--dtype float16: {name} is stored in {stored}, and its embeddings rounded to "
            "float16 no longer match the fingerprint the prompt records; export --dtype "
            f"{stored} (vLLM casts prompt_embeds to the dtype it serves in)"
        )
    loaded = LoadedModel.from_bundle(prompt, model=model, dtype=chosen, device="cpu")
    if loaded.backbone.family != CAUSAL_LM:  # a PEFT prompt records no family of ours
        refuse_family(bundle.directory, loaded.backbone.family, loaded.backbone.name_or_path)
    if task is not None:
        loaded.select_task(task)
    route = loaded.route
    vectors = served_prompt(loaded, route)
    fields = manifest_fields(bundle, loaded, route, vectors)
    replace_directory(
        output,
        lambda directory: VllmEmbedsDir.write(directory, vectors, fields),
        what="the vLLM prompt export",
    )
    return output


def checkpoint_dtype(name: str) -> str | None:
    """The dtype a checkpoint's config records, if it is one we load (else None).

    A name that does not load gives None: the model loader then says why.
    """
    try:
        config = AutoConfig.from_pretrained(resolve_embedded(name))
    except (OSError, ValueError):
        return None
    recorded = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(recorded, torch.dtype):
        recorded = str(recorded).removeprefix("torch.")
    return recorded if recorded in DTYPES else None


def refuse_unsupported(bundle: Bundle, task: str | None) -> None:
    """Refuse, before any model is loaded, what vLLM's prompt_embeds cannot carry.

    Raises:
        ExportError: naming the file and the reason.
    """
    where = bundle.directory / META_FILE if (bundle.directory / META_FILE).is_file() else None
    where = where or bundle.directory
    family = recorded_family(bundle)
    if family is not None and family != CAUSAL_LM:
        refuse_family(where, family, bundle.base_model)
    for adapter in bundle.adapters.values():
        # A switched-off adapter takes no part in `predict` either.
        if adapter.enabled and adapter.method not in PROMPT_METHODS:
            refuse_adapter(bundle, adapter)
    prompt = bundle.adapters.get("prompt")
    if prompt is None or not prompt.enabled:
        raise ExportError(f"{where}: holds no soft prompt that is switched on; nothing to export")
    if prompt.method == "prompt_bank":
        check_bank(bundle, prompt, task)
    elif task is not None:
        raise ExportError(f"--task {task}: {where} holds one prompt, not a multi-task bank")


def recorded_family(bundle: Bundle) -> str | None:
    """The family the prompt was trained on: our manifest's, or what PEFT's task type says."""
    family = bundle.meta.get("family")
    if family is None and bundle.prompt is not None:
        task_type = bundle.prompt.peft_config.get("task_type")
        family = {"SEQ_2_SEQ_LM": "seq2seq"}.get(task_type)
    return family


def refuse_family(where: Path, family: str, base_model: str | None) -> None:
    """Raise the reason a prompt of `family` cannot go to vLLM's prompt_embeds."""
    trained_on = f"a {family} model ({base_model or 'base model not recorded'})"
    spec = FAMILIES.get(family) if family in FAMILIES else None
    if spec is not None and spec.vision and not spec.methods:
        raise ExportError(
            f"{where}: trained on {trained_on}, a vision-language model; vLLM's prompt_embeds "
            "do not work with vision-language models (vLLM issue #44842), so only prompts "
            "of causal language models are exported"
        )
    if family == "seq2seq":
        raise ExportError(
            f"{where}: trained on {trained_on}, an encoder-decoder; vLLM takes prompt_embeds "
            "for decoder-only (causal) language models only"
        )
    raise ExportError(
        f"{where}: trained on {trained_on}; vLLM's prompt_embeds feed a causal language "
        "model's input, so only prompts of causal language models are exported"
    )


def refuse_adapter(bundle: Bundle, adapter: Adapter) -> None:
    """Raise the reason a bundle with a non-prompt adapter cannot be exported."""
    if adapter.method == "prefix_tuning":
        raise ExportError(
            f"{adapter.path}: a prefix-tuning adapter: its keys and values enter every "
            "layer, and vLLM's prompt_embeds take input embeddings only; serve it with "
            "`softprompt serve` instead"
        )
    if adapter.method in ("lora", "full"):
        kind = "LoRA adapter" if adapter.method == "lora" else "full fine-tune"
        raise ExportError(
            f"{adapter.path}: the bundle has a {kind}, which changes the model's weights; "
            "prompt_embeds carry the soft prompt only. Merge it first: `softprompt export "
            f"{bundle.directory} --merge --output MERGED`, serve MERGED with vLLM, and "
            "export MERGED/prompt with --model MERGED"
        )
    raise ExportError(
        f"{adapter.path}: a {adapter.method} adapter is not a soft prompt; vLLM's "
        "prompt_embeds carry soft prompts only"
    )


def check_bank(bundle: Bundle, adapter: Adapter, task: str | None) -> None:
    """A bank exports one task's prompt: `task` must name one, and the bank hold tasks.

    Raises:
        ExportError: an ensemble, no task named, or one the bank does not hold.
    """
    at_root = Path(adapter.path) == Path(bundle.directory)
    meta = bundle.meta if at_root else read_json_object(Path(adapter.path) / META_FILE)
    members = list(meta.get("members") or {})
    if meta.get("kind", "tasks") == "ensemble":
        raise ExportError(
            f"{adapter.path}: an ensemble bank combines its members' answers "
            f"({', '.join(members)}), which one vLLM request cannot; export one member's "
            f"prompt directory instead (it answers as that member alone), e.g. "
            f"{Path(adapter.path) / members[0]}"
        )
    if task is None:
        raise ExportError(
            f"{adapter.path}: a multi-task prompt bank (tasks: {', '.join(members)}); name "
            "the task whose prompt to export with --task NAME"
        )
    if task not in members:
        raise ExportError(
            f"--task {task}: no such task in the bank {adapter.path} (it has: {', '.join(members)})"
        )


def served_prompt(loaded: LoadedModel, route: Route) -> torch.Tensor:
    """(P, D) the prompt `predict` puts in front of a row of `route`, in the model's dtype.

    The rows' prompts come from the same call generation makes; a bank pads its shorter
    prompts, and only the real positions are the prompt (padding is masked out).
    """
    prompts = rows_prompts(loaded.tuners, [route.prompt_id])
    if prompts is None:
        raise ExportError("the soft prompt is switched off; nothing to export")
    own = int(prompts.ids[0])
    real = prompts.table[own][prompts.mask[own].bool()]
    # The splice casts the prompt to the embeddings' dtype: the same rounding here.
    return real.detach().to(loaded.backbone.word_embeddings().dtype)


def manifest_fields(
    bundle: Bundle, loaded: LoadedModel, route: Route, vectors: torch.Tensor
) -> dict[str, Any]:
    """What the export's manifest records (in its order), after the format's own fields."""
    backbone = loaded.backbone
    context = {
        "family": backbone.family,
        "base_model": backbone.name_or_path,
        "fingerprint": fingerprint(backbone.word_embeddings(), backbone.tokenizer),
        "placement": bundle.meta.get("placement", "prepend"),
    }
    dtype = next(name for name, value in DTYPES.items() if value == vectors.dtype)
    record = route.record
    return {
        **model_fields(context),
        # What `vllm serve` loads: an embedded:* name is a converted checkpoint on disk.
        "checkpoint": resolve_embedded(backbone.name_or_path),
        "dtype": dtype,
        "num_virtual_tokens": int(vectors.shape[0]),
        "hidden_size": int(vectors.shape[1]),
        "prompt_position": PROMPT_POSITION,
        "input": {
            "template": record.get("template"),
            "input_field": record.get("input_field") or "input",
            "max_input_length": route.settings.max_input_length,
            "truncation_side": backbone.tokenizer.truncation_side,
            **text_framing(backbone.tokenizer),
        },
        "generation": {"max_new_tokens": route.task.max_new_tokens, "decoding": "greedy"},
        "task": route.name or None,
        "source": str(bundle.directory),
    }


def text_framing(tokenizer) -> dict[str, Any]:
    """The special tokens the tokenizer puts before and after a text (BOS, EOS, ...).

    Clients in Python tokenize as `input_token_ids` does; this tells others what goes
    around the text's own tokens (None where a probe cannot tell them apart).
    """
    framed = input_token_ids(tokenizer, ["a"], 16)[0]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(framed) - len(bare) + 1):
        if framed[start : start + len(bare)] == bare:
            before, after = framed[:start], framed[start + len(bare) :]
            return {
                "before_text": {"ids": before, "tokens": tokenizer.convert_ids_to_tokens(before)},
                "after_text": {"ids": after, "tokens": tokenizer.convert_ids_to_tokens(after)},
            }
    return {"before_text": None, "after_text": None}
