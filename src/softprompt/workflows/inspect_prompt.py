"""What a trained soft prompt looks like from the base model's vocabulary.

For each virtual token: the vocabulary tokens nearest to it (cosine similarity to the
rows of the base model's input embedding matrix), its L2 norm against the vocabulary's
norms, and how far it moved from its initialisation when the run kept that
(`initial_prompt.safetensors`, written by training into the run directory). Vision-language
prompts live in the language model's embedding space, so they are read against its
vocabulary; a bundle's prompt is the one under `prompt/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from softprompt.artifacts.bundle import Bundle, read_bundle
from softprompt.artifacts.prompt_dir import LoadedPrompt, PromptLoadError, load_prompt
from softprompt.train.run_files import INITIAL_PROMPT_FILE


def inspect_prompt(
    prompt_dir: str | Path,
    top_k: int = 5,
    backbone=None,
    model: str | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Nearest vocabulary tokens, norms and drift of every virtual token of a prompt.

    Args:
        prompt_dir: a prompt directory (RUN/best, RUN/checkpoint-N) or an adapter bundle.
        top_k: nearest vocabulary tokens listed per virtual token.
        backbone: the base model (a backbone or a `LoadedModel`); None loads the one the
            prompt records (or `model`) on the CPU.
        model: base model to load instead of the recorded one (with `backbone=None`).
        task: for a prompt bank, the prompt to inspect (default: its first).

    Returns:
        {"prompt_dir", "task" (the bank's prompt, else None), "tasks" (a bank's prompts,
        else []), "base_model", "num_virtual_tokens", "token_dim", "vocab_size",
        "vocab_norm": {"mean", "std", "min", "max"}, "initial_prompt": path or None,
        "mean_drift": float or None, "tokens": [{"index", "norm", "norm_zscore",
        "norm_percentile", "nearest": [{"token", "piece", "id", "cosine"}], "drift",
        "drift_cosine"}]}; `drift` is the L2 distance to the initial vector.

    Raises:
        PromptLoadError: not a prompt directory, no soft prompt in it (or no prompt
            `task` in a bank), or a base model whose width differs from the prompt's.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1 (got {top_k})")
    bundle = read_bundle(prompt_dir)
    prompts = prompts_of(bundle)
    if task is None:
        task = next(iter(prompts))
    elif task not in prompts:
        names = ", ".join(str(n) for n in prompts)
        raise PromptLoadError(f"{bundle.directory} has no prompt {task!r} (it has: {names})")
    prompt = prompts[task]
    from softprompt.inference.loaded import LoadedModel

    if backbone is None:
        backbone = LoadedModel.from_bundle(prompt_dir, model=model, device="cpu").backbone
    elif isinstance(backbone, LoadedModel):
        backbone = backbone.backbone
    weight = prompt.weight.float()  # (P, D)
    vocab = _vocabulary_matrix(backbone)  # (V, D)
    if weight.shape[1] != vocab.shape[1]:
        raise PromptLoadError(
            f"prompt {bundle.directory} has width {weight.shape[1]}, but the embedding matrix "
            f"of {backbone.name_or_path} has width {vocab.shape[1]}; pass --model with the "
            "base model it was trained on"
        )
    initial, initial_path = find_initial_prompt(bundle, prompt, task)
    tokens = _token_reports(weight, vocab, backbone.tokenizer, top_k, initial)
    vocab_norms = vocab.norm(dim=1)
    drifts = [t["drift"] for t in tokens if t["drift"] is not None]
    return {
        "prompt_dir": str(bundle.directory),
        "task": task,
        "tasks": [n for n in prompts if n is not None],
        "base_model": bundle.base_model or backbone.name_or_path,
        "num_virtual_tokens": int(weight.shape[0]),
        "token_dim": int(weight.shape[1]),
        "vocab_size": int(vocab.shape[0]),
        "vocab_norm": {
            "mean": float(vocab_norms.mean()),
            "std": float(vocab_norms.std()),
            "min": float(vocab_norms.min()),
            "max": float(vocab_norms.max()),
        },
        "initial_prompt": str(initial_path) if initial_path is not None else None,
        "mean_drift": sum(drifts) / len(drifts) if drifts else None,
        "tokens": tokens,
    }


def prompts_of(bundle: Bundle) -> dict[str | None, LoadedPrompt]:
    """The bundle's soft prompt ({None: prompt}), or a bank's prompts by name.

    Raises:
        PromptLoadError: the bundle holds no soft prompt (LoRA alone, ...).
    """
    if bundle.prompt is not None:
        return {None: bundle.prompt}
    adapter = bundle.adapters.get("prompt")
    if adapter is not None and adapter.method == "prompt_bank":
        from softprompt.tuners.prompt_tuning.bank import read_bank_meta

        members = read_bank_meta(adapter.path)["members"]
        return {name: load_prompt(Path(adapter.path) / name) for name in members}
    have = ", ".join(bundle.adapters) or "none"
    raise PromptLoadError(f"{bundle.directory} holds no soft prompt (adapters: {have})")


@torch.no_grad()
def _vocabulary_matrix(backbone) -> torch.Tensor:
    """(V, D) float32 rows of real tokens: rows past the tokenizer's size are padding."""
    matrix = backbone.word_embeddings().detach()
    tokenizer = backbone.tokenizer
    rows = matrix.shape[0] if tokenizer is None else min(matrix.shape[0], len(tokenizer))
    return matrix[:rows].to("cpu", torch.float32)


@torch.no_grad()
def _token_reports(
    weight: torch.Tensor,
    vocab: torch.Tensor,
    tokenizer,
    top_k: int,
    initial: torch.Tensor | None,
) -> list[dict[str, Any]]:
    """One record per virtual token.

    Args:
        weight: (P, D) the prompt.
        vocab: (V, D) the vocabulary's embedding rows.
        initial: (P, D) the prompt before training, or None.
    """
    vocab_norms = vocab.norm(dim=1)  # (V,)
    mean, std = vocab_norms.mean(), vocab_norms.std()
    norms = weight.norm(dim=1)  # (P,)
    # Cosine = dot product over both norms; no normalised (V, D) copy of a big matrix.
    cosine = (weight @ vocab.T) / (norms[:, None] * vocab_norms[None, :]).clamp_min(1e-12)
    best = cosine.topk(min(top_k, vocab.shape[0]), dim=1)  # (P, k)
    reports = []
    for i in range(weight.shape[0]):
        ids = best.indices[i].tolist()
        nearest = [
            {
                "token": _decode(tokenizer, token_id),
                "piece": _piece(tokenizer, token_id),
                "id": int(token_id),
                "cosine": float(value),
            }
            for token_id, value in zip(ids, best.values[i].tolist(), strict=True)
        ]
        norm = float(norms[i])
        report: dict[str, Any] = {
            "index": i,
            "norm": norm,
            "norm_zscore": float((norm - mean) / std) if std > 0 else 0.0,
            "norm_percentile": float((vocab_norms < norm).float().mean() * 100),
            "nearest": nearest,
            "drift": None,
            "drift_cosine": None,
        }
        if initial is not None:
            start = initial[i]
            report["drift"] = float((weight[i] - start).norm())
            denominator = float(norms[i] * start.norm())
            report["drift_cosine"] = float(weight[i] @ start) / denominator if denominator else None
        reports.append(report)
    return reports


def _decode(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return str(token_id)
    return tokenizer.decode([token_id], clean_up_tokenization_spaces=False)


def _piece(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return str(token_id)
    return str(tokenizer.convert_ids_to_tokens(token_id))


def find_initial_prompt(
    bundle: Bundle, prompt: LoadedPrompt, task: str | None = None
) -> tuple[torch.Tensor | None, Path | None]:
    """The prompt as it was before training, if the run kept it.

    Looked for in the prompt's directory and the three above it (a bundle's or bank's
    root, and the run directory of RUN/best and RUN/checkpoint-N). A file is taken only
    when its shape and recorded base-model fingerprint match the prompt's, so a prompt
    copied elsewhere is never compared with another run's start.

    Args:
        task: the prompt's name in a bank (its tensor is `prompt_embeddings.<task>`).

    Returns:
        ((P, D) float32 initial prompt, its file), or (None, None).
    """
    if task is not None:
        keys = [f"prompt_embeddings.{task}"]
    else:  # a bank member may be inspected through its own directory, BANK/<task>
        keys = ["prompt_embeddings", f"prompt_embeddings.{prompt.directory.name}"]
    expected = (bundle.meta.get("fingerprint") or prompt.meta.get("fingerprint") or {}).get(
        "embedding"
    )
    directory = prompt.directory.resolve()
    for folder in [directory, *directory.parents[:3]]:
        path = folder / INITIAL_PROMPT_FILE
        if not path.is_file():
            continue
        tensor, recorded = _read_initial(path, keys)
        if tensor is None or tuple(tensor.shape) != tuple(prompt.weight.shape):
            continue
        if expected and recorded and recorded != expected:
            continue
        return tensor.float(), path
    return None, None


def _read_initial(path: Path, keys: list[str]) -> tuple[torch.Tensor | None, str | None]:
    """(the first of `keys` in the file, the recorded embedding fingerprint), or Nones."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            key = next((k for k in keys if k in handle.keys()), None)
            if key is None:
                return None, None
            metadata = handle.metadata() or {}
            return handle.get_tensor(key), metadata.get("embedding_fingerprint")
    except (SafetensorError, OSError):
        return None, None


def format_report(report: dict[str, Any]) -> str:
    """The report as a readable table (what `softprompt inspect` prints)."""
    norm = report["vocab_norm"]
    task = f" (prompt {report['task']!r} of {', '.join(report['tasks'])})" if report["task"] else ""
    lines = [
        f"prompt: {report['prompt_dir']}{task}",
        f"base model: {report['base_model']} (vocabulary {report['vocab_size']:,}, "
        f"width {report['token_dim']})",
        f"vocabulary norms: mean {norm['mean']:.4f}, std {norm['std']:.4f}, "
        f"min {norm['min']:.4f}, max {norm['max']:.4f}",
        "initial prompt: "
        + (report["initial_prompt"] or "not kept (drift unknown)")
        + (f"; mean drift {report['mean_drift']:.4f}" if report["mean_drift"] is not None else ""),
        "",
    ]
    header = f"{'#':>3}  {'norm':>8}  {'z':>6}  {'pct':>5}  {'drift':>8}  {'cos0':>6}  nearest"
    lines += [header, "-" * len(header)]
    for token in report["tokens"]:
        nearest = "  ".join(f"{n['token']!r} {n['cosine']:.3f}" for n in token["nearest"])
        drift = f"{token['drift']:.4f}" if token["drift"] is not None else "-"
        cos0 = f"{token['drift_cosine']:.3f}" if token["drift_cosine"] is not None else "-"
        lines.append(
            f"{token['index']:>3}  {token['norm']:>8.4f}  {token['norm_zscore']:>6.2f}  "
            f"{token['norm_percentile']:>5.1f}  {drift:>8}  {cos0:>6}  {nearest}"
        )
    return "\n".join(lines)
