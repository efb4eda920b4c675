"""Hostile data, end to end: every bad input is a clear error (exit 2, file and line named)
or a reported skip; nothing reaches the user as a Python traceback.

The readers' own unit tests live in test_data_text.py / test_data_vision.py; this file
adds the inputs they did not cover and runs the whole set through `softprompt train`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    bomb_png,
    image_folders,
    make_config,
    png_bytes,
    prompt_method,
    toy_task,
    write_config,
    write_jsonl,
)
from PIL import Image

from softprompt.commands.cli import main
from softprompt.data.errors import DataError
from softprompt.data.images import ImageError, image_digest, load_image
from softprompt.data.text import load_text_examples
from softprompt.data.vision import load_image_folder, load_image_text_pairs, load_vqa

# Tiny models on a shared 2-core machine run fastest on one thread (see conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- images


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(60_000, 60_000))
    with pytest.raises(ImageError) as err:
        load_image(path)  # the default limit, not a test-sized one
    message = str(err.value)
    assert "60000x60000" in message and "decompression bombs" in message and str(path) in message


def test_palette_with_per_entry_alpha_and_broken_exif(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "pa.png", transparency=bytes([255, 0]))  # entry 1 fully clear
    assert load_image(tmp_path / "pa.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("RGB", (6, 4), "blue").save(tmp_path / "exif.jpg", exif=b"Exif\x00\x00MM\x00*junk")
    assert load_image(tmp_path / "exif.jpg").size == (6, 4)


def test_paths_no_file_can_have(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    cases = {
        "a\x00b.png": "NUL byte",
        "x" * 5000 + ".png": "too long",
        str(tmp_path / "pipe.png"): "not a regular file",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageError, match=reason):
            load_image(path)
    with pytest.raises(ImageError, match="too long"):
        image_digest("x" * 5000)


def test_file_names_in_another_encoding(tmp_path):
    root = tmp_path / "train"
    for colour in ("red", "blue"):
        (root / colour).mkdir(parents=True)
        (root / colour / "a.png").write_bytes(png_bytes())
    (root / "red" / os.fsdecode(b"caf\xe9.png")).write_bytes(png_bytes())
    examples, classes, _ = load_image_folder(root)
    ids = [e.id for e in examples]
    assert "red/caf\\xe9.png" in ids  # valid text for JSON, still unique
    json.dumps(ids, ensure_ascii=False).encode("utf-8")
    (root / os.fsdecode(b"gr\xfcn")).mkdir()
    (root / os.fsdecode(b"gr\xfcn") / "a.png").write_bytes(png_bytes())
    with pytest.raises(DataError, match="class folder name"):
        load_image_folder(root)


# ----------------------------------------------------------------------------- records


@pytest.mark.parametrize(
    "content,expected",
    [
        (
            '{"input": ' + "[" * 50_000 + "]" * 50_000 + ', "target": "x"}\n',
            ":1: malformed JSON (nested",
        ),
        ('{"input": "a", "target": "b", "n": ' + "9" * 5000 + "}\n", ":1: malformed JSON (Exceeds"),
        ('{"input": "a\\ud800b", "target": "x"}\n', ":1: field 'input' holds an invalid character"),
        ('{"input": "a", "target": ["x", "\\udfff"]}\n', ":1: field 'target' holds an invalid"),
    ],
    ids=["deep", "huge-int", "lone-surrogate", "surrogate-in-reference"],
)
def test_json_lines_no_parser_should_meet(tmp_path, content, expected):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_text_examples(str(path))


def test_deep_json_array_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[" + "[" * 50_000 + "]" * 50_000 + "]")
    with pytest.raises(DataError, match="nested too deeply"):
        load_text_examples(str(path))


def test_template_output_is_checked_too(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"input": "a", "target": "b", "x": "\ud800"}])
    with pytest.raises(DataError, match="template output"):
        load_text_examples(str(path), template="{input} {x}")


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [{"id": "a", "input": "x", "target": "y"}, {"id": "b", "input": "x", "target": "y"}]
    path = write_jsonl(tmp_path / "train.jsonl", [*rows, rows[0]])
    with pytest.raises(
        DataError, match=r"train.jsonl:3: duplicate id 'a' \(first at .*train.jsonl:1\)"
    ):
        load_text_examples(str(path))
    # Without the id field, records are numbered by line and cannot collide.
    assert len(load_text_examples(str(path), id_field="no_such_field")) == 3
    csv = tmp_path / "train.csv"
    csv.write_text("id,input,target\n1,a,b\n1,c,d\n")
    with pytest.raises(DataError, match="train.csv:3: duplicate id '1'"):
        load_text_examples(str(csv))


def test_duplicate_ids_in_image_pairs_and_vqa(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"id": 7, "image_path": "a.png", "text": "one"},
            {"id": 7, "image_path": "a.png", "text": "two"},
        ],
    )
    with pytest.raises(DataError, match="pairs.jsonl:2: duplicate id '7'"):
        load_image_text_pairs(pairs)
    questions = tmp_path / "questions.json"
    question = {"image_id": 1, "question": "what?", "question_id": 5}
    questions.write_text(json.dumps({"questions": [question, question]}))
    with pytest.raises(DataError, match=r"questions\[1\]: duplicate id '5'"):
        load_vqa(questions, image_dir=tmp_path, image_pattern="a.png")


# ----------------------------------------------------------------------------- through the CLI


@pytest.fixture
def text_config(tiny_models, tmp_path):
    data = {
        "train": write_jsonl(tmp_path / "data" / "train.jsonl", toy_task(8)),
        "val": write_jsonl(tmp_path / "data" / "val.jsonl", toy_task(4, seed=3)),
    }
    method = prompt_method(num_virtual_tokens=2)
    config = make_config(
        tiny_models["llama"], data, tmp_path / "run", method=method, max_steps=1, batch_size=4
    )
    return write_config(tmp_path / "config.yaml", config)


GOOD = '{"input": "red cat", "target": "red"}\n'
TEXT_CASES = {
    "non-utf8": (
        GOOD.encode() + b'{"input": "caf\xe9", "target": "x"}\n',
        "bad.jsonl:2: not valid UTF-8",
    ),
    "malformed": (GOOD + '{"input": "a", "target": }\n', "bad.jsonl:2: malformed JSON"),
    "not-an-object": (GOOD + '["a", "b"]\n', "bad.jsonl:2: expected a JSON object"),
    "missing-field": (
        GOOD + '{"input": "a", "answer": "b"}\n',
        "bad.jsonl:2: missing field 'target'",
    ),
    "null-field": (
        GOOD + '{"input": null, "target": "b"}\n',
        "bad.jsonl:2: field 'input' is empty",
    ),
    "wrong-type": (
        GOOD + '{"input": {"a": 1}, "target": "b"}\n',
        "bad.jsonl:2: field 'input' is a dict",
    ),
    "duplicate-id": (
        '{"id": 1, "input": "a", "target": "b"}\n' * 2,
        "bad.jsonl:2: duplicate id '1'",
    ),
    "zero-bytes": (b"", "bad.jsonl: file is empty"),
    "only-blank-lines": ("\n\n  \n", "bad.jsonl: file is empty"),
    "deep": (
        GOOD + "[" * 20000 + "]" * 20000 + "\n",
        "bad.jsonl:2: malformed JSON (nested too deeply)",
    ),
    "lone-surrogate": (
        GOOD + '{"input": "\\udc80", "target": "x"}\n',
        "bad.jsonl:2: field 'input' holds",
    ),
}


@pytest.mark.parametrize("content,expected", TEXT_CASES.values(), ids=TEXT_CASES.keys())
def test_cli_bad_text_data_exits_2_naming_file_and_line(
    text_config, tmp_path, capsys, content, expected
):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["train", str(text_config), f"data.train_path={bad}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err, err


def test_cli_unreadable_and_missing_data_files(text_config, tmp_path, capsys, monkeypatch):
    assert main(["train", str(text_config), f"data.train_path={tmp_path / 'nope.jsonl'}"]) == 2
    assert "nope.jsonl: file not found" in capsys.readouterr().err
    assert (
        main(["train", str(text_config), f"data.train_path={tmp_path}", "data.format=jsonl"]) == 2
    )
    assert "is a directory" in capsys.readouterr().err
    locked = tmp_path / "locked.jsonl"
    locked.write_text(GOOD)
    original = Path.read_bytes

    def refuse(self):
        if self.name == "locked.jsonl":  # root reads chmod-000 files, so simulate the refusal
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert main(["train", str(text_config), f"data.train_path={locked}"]) == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and "locked.jsonl" in err and "Traceback" not in err


def hostile_image_folder(root: Path) -> dict[str, str]:
    """train/{red,blue,green}: good images, odd-but-valid ones, and broken ones.

    Returns the broken files' names -> a word their skip reason must contain.
    """
    image_folders(root, per_class=3)
    (root / "green").mkdir()  # an empty class folder: left out with a warning
    red = root / "red"
    # Valid but unusual: all of these must be read, not skipped.
    Image.fromarray((torch.full((32, 32), 50000, dtype=torch.int32).numpy()).astype("uint16")).save(
        red / "sixteen.png"
    )
    Image.new("CMYK", (32, 32), (0, 200, 200, 0)).save(red / "cmyk.jpg")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([255, 0, 0, 200, 0, 0] + [0] * 762)
    palette.save(red / "palette_alpha.png", transparency=bytes([0, 200]))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (220, 10, 10)).save(red / "rotated.jpg", exif=exif)
    (red / os.fsdecode(b"r\xf6t.png")).write_bytes((red / "red0.png").read_bytes())
    # Broken: each is skipped and reported with its reason.
    full = (red / "red0.png").read_bytes()
    (red / "truncated.png").write_bytes(full[: len(full) // 2])
    (red / "zero.jpg").write_bytes(b"")
    (red / "bomb.png").write_bytes(bomb_png(60_000, 60_000))
    (red / "page.jpg").write_text("<!DOCTYPE html><html>404</html>")
    (red / "locked.png").write_bytes(full)
    return {
        "truncated.png": "truncated or corrupt",
        "zero.jpg": "0 bytes",
        "bomb.png": "decompression bombs",
        "page.jpg": "HTML page",
        "locked.png": "permission denied",
    }


@pytest.fixture
def vision_setup(tiny_models, tiny_clip, tmp_path, monkeypatch):
    broken = hostile_image_folder(tmp_path / "train")
    original_open = Image.open

    def open_refusing_locked(fp, *args, **kwargs):
        if Path(str(fp)).name == "locked.png":  # root can read chmod-000 files: simulate
            raise PermissionError(13, "Permission denied", str(fp))
        return original_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_refusing_locked)
    config = make_config(
        tiny_models["gpt2"],
        {"train": tmp_path / "train", "validation": False},
        tmp_path / "run",
        method=prompt_method(num_virtual_tokens=2),
        task={"type": "classify", "instruction": "Which colour?"},
        model_options={"vision_encoder": str(tiny_clip)},
        epochs=1,
        batch_size=4,
    )
    return write_config(tmp_path / "config.yaml", config), broken


def test_cli_hostile_images_are_skipped_and_reported(vision_setup, tmp_path, capsys, caplog):
    config, broken = vision_setup
    assert main(["train", str(config), "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    run = tmp_path / "run"
    skipped = json.loads((run / "skipped_inputs.json").read_text())
    reasons = {Path(s["path"]).name: s["error"] for s in skipped}
    assert set(reasons) == set(broken), reasons
    for name, word in broken.items():
        assert word in reasons[name] and name in reasons[name], reasons[name]
    results = json.loads((run / "all_results.json").read_text())
    assert results["skipped_inputs"] == len(broken)
    assert "'green' has no images" in caplog.text


def test_cli_image_data_nothing_can_use_exits_2(vision_setup, tmp_path, capsys):
    config, _ = vision_setup
    only_broken = tmp_path / "broken"
    for colour in ("a", "b"):
        (only_broken / colour).mkdir(parents=True)
        (only_broken / colour / "zero.png").write_bytes(b"")
    assert main(["train", str(config), f"data.train_path={only_broken}"]) == 2
    err = capsys.readouterr().err
    assert "no usable images" in err and "zero.png" in err and "Traceback" not in err
    (tmp_path / "train" / os.fsdecode(b"gr\xfcn")).mkdir()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "class folder name" in err and "Traceback" not in err


def test_cli_one_class_dataset_trains_with_a_warning(vision_setup, tmp_path, caplog):
    config, _ = vision_setup
    one = tmp_path / "one"
    shutil.copytree(tmp_path / "train" / "blue", one / "blue")
    assert main(["train", str(config), f"data.train_path={one}", "--no-progress"]) == 0
    assert "only one class ('blue')" in caplog.text
