"""Hostile `softprompt predict` inputs: every input record gives exactly one output record,
in input order, with an `error` where it could not be read, and the summary counts add up.

Covered: image records whose path is a directory, a missing file, an empty file, a text
file, a truncated PNG, an unreadable file (skipped as root), odd characters (spaces,
quotes, non-ASCII, a NUL byte, an undecodable byte), a symlink loop, a broken symlink,
a FIFO, an image over the pixel limit; records without `image_path`, with a number, a
list or an empty string there, lines that are not JSON objects or not JSON at all; the
same through `--image` and `--image-dir`; text records without the input field, with a
non-string input, non-object and malformed lines; a bank's per-record tasks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import bomb_png, png_bytes
from serve_helpers import write_prompt

from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.commands.cli import main
from softprompt.tasks.kinds import VisionTask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def caption_prompt(tiny_vlms, tmp_path_factory) -> Path:
    """A caption prompt on the tiny BLIP-2 OPT, saved as training saves one."""
    backbone = load_backbone(str(tiny_vlms["blip2-opt"]), vision=VisionSettings())
    task = VisionTask("caption", "{instruction}", "A photo of", max_new_tokens=2)
    record = {"vision_task": task.to_record(), "vision": {}, "max_new_tokens": 2}
    return write_prompt(tmp_path_factory.mktemp("caption") / "prompt", backbone, 2, 1, record)


@pytest.fixture(scope="module")
def text_prompt(tiny_models, tmp_path_factory) -> Path:
    backbone = load_backbone(str(tiny_models["gpt2"]))
    return write_prompt(tmp_path_factory.mktemp("text") / "prompt", backbone, 2, 1)


def hostile_images(root: Path) -> dict[str, str | None]:
    """Image files of every unreadable kind (and two readable ones) under `root`; name ->
    the path a record gives, or None where this system cannot make that kind."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "good.png").write_bytes(png_bytes())
    odd = "odd name 'q' \"dq\" ü 图.png"
    (root / odd).write_bytes(png_bytes())
    (root / "folder.png").mkdir()
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    (root / "truncated.png").write_bytes(png_bytes((64, 64))[:60])
    (root / "bomb.png").write_bytes(bomb_png(12_000, 12_000))
    os.symlink("loop.png", root / "loop.png")
    os.symlink("nowhere.png", root / "dangling.png")
    paths: dict[str, str | None] = {
        "good": "good.png",
        "odd": odd,
        "folder": "folder.png",
        "missing": "missing.png",
        "empty": "empty.png",
        "text": "text.png",
        "truncated": "truncated.png",
        "bomb": "bomb.png",
        "loop": "loop.png",
        "dangling": "dangling.png",
        "nul": "nul\x00byte.png",
        "undecodable": "bad\udcffbyte.png",
    }
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.png")
        paths["fifo"] = "fifo.png"
    return paths


def run_predict(argv: list[str], capsys) -> tuple[int, list[dict], dict | None, str]:
    capsys.readouterr()
    code = main(["predict", *argv, "--no-progress"])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    summary = None
    for line in captured.err.splitlines():
        if line.startswith("summary: "):
            summary = json.loads(line.removeprefix("summary: "))
    return code, records, summary, captured.err


def test_every_image_record_is_accounted_for(caption_prompt, tmp_path, capsys):
    paths = hostile_images(tmp_path / "images")
    rows: list[str] = [json.dumps({"id": name, "image_path": p}) for name, p in paths.items()]
    bad_rows = [
        {"id": "no-path"},
        {"id": "number", "image_path": 5},
        {"id": "list", "image_path": ["good.png"]},
        {"id": "blank", "image_path": "  "},
        {"id": "null", "image_path": None},
    ]
    rows += [json.dumps(r) for r in bad_rows]
    rows += ["[1, 2]", '"just a string"', "{not json"]
    source = tmp_path / "images" / "inputs.jsonl"
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, records, summary, _ = run_predict(
        ["--prompt", str(caption_prompt), "--input", str(source)], capsys
    )
    assert code == 0
    n = len(rows)
    expected_ids = [*paths, *(r["id"] for r in bad_rows)]
    expected_ids += [f"inputs.jsonl:{line}" for line in range(n - 2, n + 1)]
    assert [r["id"] for r in records] == expected_ids
    readable = {"good", "odd"}
    for record in records:
        assert ("error" in record) == (record["id"] not in readable), record
        assert "\n" not in record.get("error", "")
    assert summary["total"] == n and summary["errors"] == n - len(readable)
    errors = {r["id"]: r["error"] for r in records if "error" in r}
    assert "is a directory" in errors["folder"] and "not found" in errors["missing"]
    assert "pixels" in errors["bomb"] and "empty" in errors["empty"]
    assert "image_path" in errors["no-path"] and "image_path" in errors["number"]
    assert "inputs.jsonl:" in errors[f"inputs.jsonl:{n}"]


def test_every_image_file_and_flag_is_accounted_for(caption_prompt, tmp_path, capsys):
    paths = hostile_images(tmp_path / "images")
    folder = tmp_path / "images"
    flags = [x for p in paths.values() for x in ("--image", str(folder / p))]
    code, records, summary, _ = run_predict(["--prompt", str(caption_prompt), *flags], capsys)
    assert code == 0 and len(records) == len(paths)
    assert [r.get("error") is None for r in records] == [n in ("good", "odd") for n in paths]
    assert summary == {**summary, "total": len(paths), "errors": len(paths) - 2}
    # --image-dir: every entry with an image name that is not a folder.
    code, records, summary, _ = run_predict(
        ["--prompt", str(caption_prompt), "--image-dir", str(folder)], capsys
    )
    names = {Path(r["id"]).name for r in records}
    assert code == 0 and {"loop.png", "dangling.png", "empty.png", "truncated.png"} <= names
    assert "folder.png" not in names
    assert summary["total"] == len(records) and summary["errors"] == len(records) - 2


def test_unreadable_file_is_an_error_record(caption_prompt, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("runs as root, who can read a file without read permission")
    image = tmp_path / "locked.png"
    image.write_bytes(png_bytes())
    image.chmod(0)
    code, records, summary, _ = run_predict(
        ["--prompt", str(caption_prompt), "--image", str(image)], capsys
    )
    assert code == 0 and "permission denied" in records[0]["error"]
    assert summary["errors"] == 1


def test_every_text_record_is_accounted_for(text_prompt, tmp_path, capsys):
    rows = [
        json.dumps({"id": "a", "input": "hello"}),
        json.dumps({"id": "no-input", "text": "hello"}),
        json.dumps({"id": "list", "input": ["x"]}),
        json.dumps({"id": "null", "input": None}),
        "[1]",
        "{broken",
        json.dumps({"id": "b", "input": "bye"}),
    ]
    source = tmp_path / "inputs.jsonl"
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, records, summary, _ = run_predict(
        ["--prompt", str(text_prompt), "--input", str(source)], capsys
    )
    assert code == 0
    ids = ["a", "no-input", "list", "null", "inputs.jsonl:5", "inputs.jsonl:6", "b"]
    assert [r["id"] for r in records] == ids
    assert [("error" in r) for r in records] == [False, True, True, True, True, True, False]
    assert "inputs.jsonl:2" in records[1]["error"] and "'input'" in records[1]["error"]
    assert summary["total"] == len(rows) and summary["errors"] == 5


def test_a_text_file_that_is_not_records_fails_with_its_name(text_prompt, tmp_path, capsys):
    source = tmp_path / "inputs.json"
    source.write_text('[{"input": "a"}, oops]', encoding="utf-8")
    code, records, _, err = run_predict(
        ["--prompt", str(text_prompt), "--input", str(source)], capsys
    )
    assert code != 0 and records == [] and "Traceback" not in err
