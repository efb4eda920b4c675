"""The report's "Prompt inspection" section: what the trained soft prompt is close to.

It calls `softprompt.workflows.inspect_prompt.inspect_prompt(prompt_dir, top_k=5)`, which returns
per virtual token its norm, its nearest vocabulary tokens (cosine) and its drift from the
initialisation, plus the vocabulary's norm statistics. The section is optional: when the
function is unavailable or fails, the report says why and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOP_K = 5


def inspect_run_prompt(
    run_dir: Path, methods: list[str]
) -> tuple[dict[str, Any] | None, str | None]:
    """(inspect_prompt's result for RUN_DIR/best, None) or (None, why there is none)."""
    if methods and "prompt_tuning" not in methods:
        return None, f"this run trains no soft prompt (methods: {', '.join(methods)})"
    prompt_dir = run_dir / "best"
    if not prompt_dir.is_dir():
        return None, f"{prompt_dir} not found"
    try:
        from softprompt.workflows.inspect_prompt import inspect_prompt
    except ImportError as err:
        return None, f"softprompt.workflows.inspect_prompt is not available ({err})"
    try:
        result = inspect_prompt(prompt_dir, top_k=TOP_K)
    except Exception as err:  # an optional section: any failure is reported, not raised
        return None, f"inspect_prompt({prompt_dir}) failed: {type(err).__name__}: {err}"
    if not isinstance(result, dict) or not isinstance(result.get("tokens"), list):
        return None, f"inspect_prompt returned {type(result).__name__} without a 'tokens' list"
    return result, None


def extra_fields(result: dict[str, Any]) -> dict[str, Any]:
    """Scalar and short fields of the result beside `tokens` and `vocab_norm`."""
    return {
        k: v
        for k, v in result.items()
        if k not in ("tokens", "vocab_norm") and isinstance(v, str | int | float | bool)
    }
