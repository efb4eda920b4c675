"""`softprompt.json`, the manifest every directory format of ours writes, and the file
helpers the formats share.

A manifest names its format and format version, says what the files were trained on
(family, base model, fingerprint, task) and lists the SHA-256 of every file it covers,
so a directory changed after saving is refused on load. The field order is part of the
format: the same save writes the same bytes, so checkpoints of one run compare equal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softprompt.errors import UserError

META_FILE = "softprompt.json"
MODULES_FILE = "modules.safetensors"
FORMAT_VERSION = 1


# A write that failed for want of room: a full disk, a quota, a read-only file system.
NO_ROOM_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS) if code
)
# safetensors reports the OS's errors in its own exception, "... (os error 28)".
_OS_ERROR_RE = re.compile(r"os error (\d+)")


class PromptLoadError(UserError):
    """A saved prompt, bank or bundle is missing, damaged, or does not fit the base model."""


class DiskFullError(UserError):
    """A write failed because its file system is full, over quota or read-only."""


def sha256_file(path: Path) -> str:
    """The file's SHA-256 as hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object.

    Raises:
        PromptLoadError: not JSON, or JSON but not an object.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise PromptLoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise PromptLoadError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def manifest_format(directory: Path) -> str | None:
    """The `format` a directory's manifest names; None without a readable one."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return None
    try:
        return read_json_object(path).get("format")
    except PromptLoadError:
        return None


def model_fields(context: dict[str, Any]) -> dict[str, Any]:
    """What a bank's or bundle's manifest records about the base model, in its order."""
    return {
        "family": context["family"],
        "base_model": context["base_model"],
        "fingerprint": context["fingerprint"],
        "placement": context.get("placement", "prepend"),
    }


def tree_files(directory: Path, *, nested_manifests: bool) -> list[str]:
    """Every file under `directory` but its own manifest, as relative POSIX names.

    Args:
        nested_manifests: also list the manifests of directories below (a bank covers
            its members' `softprompt.json`; a bundle never covered them).
    """
    names = []
    for path in sorted(directory.rglob("*")):  # sorted as paths: the order manifests hold
        name = path.relative_to(directory).as_posix()
        skipped = name == META_FILE or (not nested_manifests and path.name == META_FILE)
        if path.is_file() and not skipped:
            names.append(name)
    return names


def write_manifest(
    directory: Path,
    format_name: str,
    fields: dict[str, Any],
    files: list[str],
    tail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `directory/softprompt.json`: format, version, `fields`, checksums, `tail`.

    Args:
        format_name: "softprompt-prompt", "softprompt-prompt-bank", "softprompt-bundle".
        fields: the format's own fields, in the order they are written.
        files: relative names of the files to checksum (written before this call).
        tail: fields written after the checksums (where older versions put them).

    Returns:
        The manifest as written.
    """
    manifest = {"format": format_name, "format_version": FORMAT_VERSION, **fields}
    manifest["files"] = {name: sha256_file(directory / name) for name in files}
    manifest.update(tail or {})
    _write_json(directory / META_FILE, manifest)
    return manifest


def add_to_manifest(directory: Path, fields: dict[str, Any]) -> None:
    """Add fields at the end of an existing manifest (checksums stay as they are)."""
    path = Path(directory) / META_FILE
    _write_json(path, {**read_json_object(path), **fields})


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def verify_manifest_files(directory: Path, meta: dict[str, Any], what: str) -> None:
    """Check every file a manifest lists (`files`: relative name -> SHA-256).

    Raises:
        PromptLoadError: a malformed list, a name leading outside `directory`, or a file
            that is missing or changed since the `what` (bundle, bank) was saved.
    """
    files = meta.get("files")
    if not isinstance(files, dict):
        raise PromptLoadError(f"{directory / META_FILE}: 'files' must map names to checksums")
    for name, expected in files.items():
        parts = name.split("/") if isinstance(name, str) else [""]
        if any(p in ("", ".", "..") or "\\" in p for p in parts):
            raise PromptLoadError(f"{directory / META_FILE}: bad file name {name!r}")
        path = Path(directory).joinpath(*parts)
        if not path.is_file() or sha256_file(path) != expected:
            raise PromptLoadError(
                f"{path}: missing or does not match {META_FILE}; the {what} was modified or "
                "damaged after it was saved"
            )


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors as float32 safetensors on the CPU, with PEFT's one metadata key.

    One key only: safetensors writes several in no fixed order, and saves of the same
    state must be byte-identical.
    """
    state = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    save_file(state, str(path), metadata={"format": "pt"})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of ours.

    Raises:
        PromptLoadError: the file is not readable safetensors, or holds NaN or infinite
            values.
    """
    try:
        tensors = load_file(str(path))
    except SafetensorError as err:
        raise PromptLoadError(f"{path}: unreadable ({err})") from None
    check_finite(path, tensors)
    return tensors


def check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse saved weights holding NaN or infinite values: they never come from training
    that worked, and would make every output of the model NaN.

    Raises:
        PromptLoadError: naming the file, the tensor and how many values are bad.
    """
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise PromptLoadError(
                f"{path}: tensor {key!r} holds {bad} NaN or infinite value(s) of "
                f"{tensor.numel()}; the file is damaged (or training diverged): restore or "
                "retrain it"
            )


def no_room_errno(err: BaseException) -> int | None:
    """The errno of a write that failed for want of room (see NO_ROOM_ERRNOS), else None."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None and isinstance(err, SafetensorError):
        match = _OS_ERROR_RE.search(str(err))
        code = int(match.group(1)) if match else None
    return code if code in NO_ROOM_ERRNOS else None


def human_size(size: int) -> str:
    """Bytes as "12.3 MB" (powers of 1000, like `df -H`)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def free_bytes(directory: Path) -> int | None:
    """Free space of the file system holding `directory` (or its nearest existing parent)."""
    path = Path(directory).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full_error(directory: Path, what: str, needed: int, code: int, then: str) -> DiskFullError:
    """The one-line error of a write that found no room: where, how much, what to do."""
    reason = os.strerror(code).lower()
    if code == errno.EROFS:
        advice = "make it writable or write somewhere else"
    else:
        free = free_bytes(directory)
        shown = "unknown" if free is None else human_size(free)
        missing = needed - (free or 0)
        ask = f"free at least {human_size(missing)}" if missing > 0 else "free some space"
        advice = f"it needs about {human_size(needed)} free, {shown} is free there: {ask}"
        if needed <= 0:  # the size of the write is not known
            advice = f"{shown} is free there: free some space"
    tail = f", then {then}" if then else ""
    return DiskFullError(f"cannot write {what} in {directory}: {reason}; {advice}{tail}")


def remove_paths(paths: Iterable[Path]) -> None:
    """Delete files or directory trees, ignoring ones already gone."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def room_for(
    directory: Path,
    what: str,
    needed: int | Callable[[], int],
    *,
    cleanup: Iterable[Path] = (),
    then: str = "",
) -> Iterator[None]:
    """Writes inside it that fail for want of room raise one `DiskFullError` line.

    Whatever fails, the `cleanup` paths (the write's temporaries) are removed first, so
    a failed write leaves nothing half written behind.

    Args:
        directory: where the write goes (named in the message, its free space measured).
        what: what was being written ("checkpoint-12", "metrics.jsonl", ...).
        needed: the bytes the write needs (or a callable measuring them at the failure,
            before the cleanup: it may count what was written already).
        then: what to do once there is room ("rerun with --resume auto").
    """
    cleanup = list(cleanup)
    try:
        yield
    except BaseException as err:
        code = no_room_errno(err) if isinstance(err, Exception) else None
        size = (needed() if callable(needed) else needed) if code is not None else 0
        remove_paths(cleanup)
        if code is None:
            raise
        raise disk_full_error(Path(directory), what, size, code, then) from None


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for file in path.rglob("*") if path.is_dir() else ():
        try:
            total += file.stat().st_size if file.is_file() else 0
        except OSError:
            continue
    return total


def write_bytes_atomically(path: Path, data: bytes, *, then: str = "") -> None:
    """Write beside `path`, then rename over it: readers never see half a file, and a
    full disk leaves the old file and a one-line `DiskFullError`."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    with room_for(path.parent, path.name, len(data), cleanup=[tmp], then=then):
        tmp.write_bytes(data)
        os.replace(tmp, path)
