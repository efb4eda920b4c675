"""Nested state dicts (optimizer, scheduler) stored as one safetensors file.

`torch.save` pickles, and unpickling a file can run code; a checkpoint downloaded from
somewhere must not be able to. So the tensors of a state dict go into a safetensors
file and the rest of its structure (numbers, strings, lists, dicts with integer keys,
tuples) into that file's JSON metadata. Loading needs no pickle at all and gives back
exactly what was saved: floats round-trip through JSON bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

_STRUCTURE_KEY = "softprompt_structure"
_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"
_SCALARS = (bool, int, float, str, type(None))


class StateFileError(ValueError):
    """A state file is unreadable or does not have the expected layout."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        # Optimizer state is keyed by int parameter index; JSON objects only have string
        # keys, so such dicts become a list of [key, value] pairs.
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        if not all(isinstance(k, _SCALARS) for k in value):
            raise TypeError(f"cannot store a dict key of type {type(next(iter(value))).__name__}")
        return {_DICT: [[k, _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a value of type {type(value).__name__} in a state file")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {_TENSOR}:
        return tensors[value[_TENSOR]]
    if set(value) == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if set(value) == {_DICT}:
        return {k: _decode(v, tensors) for k, v in value[_DICT]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write a state dict (e.g. `optimizer.state_dict()`) as a safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    save_file(tensors, str(path), metadata={_STRUCTURE_KEY: json.dumps(structure)})


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state dict written by `save_state` (tensors on the CPU).

    Raises:
        StateFileError: the file is not a safetensors file or lacks the structure.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        structure = json.loads(metadata[_STRUCTURE_KEY])
        state = _decode(structure, tensors)
    except SafetensorError as err:
        raise StateFileError(f"{path}: unreadable ({err})") from None
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise StateFileError(f"{path}: not a state file ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise StateFileError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state
