"""Image loading and the vision readers, on small images written into tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softprompt.data.errors import DataError
from softprompt.data.images import ImageError, image_digest, load_image
from softprompt.data.vision import (
    easy_vqa_answers,
    load_easy_vqa,
    load_image_folder,
    load_image_text_pairs,
    load_vision_examples,
    load_vqa,
)

WHITE = (255, 255, 255)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def png(path: Path, color=(200, 30, 30), size=(8, 6)) -> Path:
    return save(Image.new("RGB", size, color), path)


# ----------------------------------------------------------------------------- load_image


def test_modes_end_rgb(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert sixteen.mode == "I;16"
    cases = {
        "l.png": (Image.new("L", (4, 4), 100), {}, (100, 100, 100)),
        "i16.png": (sixteen, {}, WHITE),  # scaled, 65535 -> 255
        "p.png": (palette, {}, (10, 200, 30)),
        "ptrans.png": (palette, {"transparency": 1}, WHITE),  # transparent index -> white
        "la.png": (Image.new("LA", (4, 4), (0, 0)), {}, WHITE),
        "rgba.png": (Image.new("RGBA", (4, 4), (0, 0, 255, 255)), {}, (0, 0, 255)),
        "cmyk.jpg": (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), {}, None),
    }
    for name, (img, kwargs, expected) in cases.items():
        out = load_image(save(img, tmp_path / name, **kwargs))
        assert out.mode == "RGB", name
        assert out.size == (4, 4), name
        if expected is not None:
            assert out.getpixel((1, 1)) == expected, name
    assert Image.open(tmp_path / "i16.png").mode == "I;16"  # really a 16-bit PNG
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    # CMYK (0,0,0,0) is white paper; allow JPEG rounding.
    assert min(load_image(tmp_path / "cmyk.jpg").getpixel((1, 1))) > 240


def test_half_transparent_rgba_composites_on_white(tmp_path):
    out = load_image(save(Image.new("RGBA", (2, 2), (0, 0, 0, 128)), tmp_path / "a.png"))
    assert all(120 <= v <= 135 for v in out.getpixel((0, 0)))


def test_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = save(Image.new("RGB", (20, 10), "red"), tmp_path / "phone.jpg", exif=exif)
    assert Image.open(path).size == (20, 10)
    assert load_image(path).size == (10, 20)


def bad_images(tmp_path: Path) -> dict[str, Path]:
    """One file per failure kind, keyed by a word its error message must contain."""
    full = png(tmp_path / "ok.png", size=(64, 64)).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full[: len(full) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("these are my notes, not a picture\n")
    (tmp_path / "ok.png").unlink()
    return {"truncated": truncated, "empty": empty, "not an image": text}


@pytest.mark.parametrize("kind", ["truncated", "empty", "not an image"])
def test_bad_files_raise_image_error_naming_path(tmp_path, kind):
    path = bad_images(tmp_path)[kind]
    with pytest.raises(ImageError, match=kind) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, DataError)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_unreadable_permissions(tmp_path):
    path = png(tmp_path / "locked.png")
    path.chmod(0)
    try:
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their permissions")
        with pytest.raises(ImageError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_permission_error_message_even_as_root(tmp_path, monkeypatch):
    # Root can read chmod-000 files, so simulate the refusal the way the OS reports it.
    path = png(tmp_path / "locked.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError, match="permission denied") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_html_saved_as_jpg_is_named(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(ImageError, match="HTML page"):
        load_image(path)


def test_pixel_limit(tmp_path):
    path = png(tmp_path / "big.png", size=(40, 30))
    with pytest.raises(ImageError, match="1,200 pixels") as info:
        load_image(path, max_pixels=1000)
    assert "max_pixels" in str(info.value) and str(path) in str(info.value)
    assert load_image(path, max_pixels=1200).size == (40, 30)


def test_our_limit_overrides_pillows(tmp_path, monkeypatch):
    # Pillow refuses files over twice its global limit before we see the size.
    path = png(tmp_path / "big.png", size=(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_image(path, max_pixels=None).size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    with pytest.raises(ImageError, match="over the limit of 1,000"):
        load_image(path, max_pixels=1000)


def test_image_digest(tmp_path):
    a = png(tmp_path / "a.png")
    b = png(tmp_path / "b.png")
    c = png(tmp_path / "c.png", color=(0, 0, 0))
    assert image_digest(a) == image_digest(b) != image_digest(c)
    assert len(image_digest(a)) == 64
    with pytest.raises(ImageError, match="not found"):
        image_digest(tmp_path / "missing.png")


# ----------------------------------------------------------------------------- image folders


def test_image_folder_classes_and_skips(tmp_path):
    root = tmp_path / "train"
    png(root / "cat" / "1.png")
    png(root / "cat" / "sub" / "2.PNG")
    save(Image.new("RGB", (5, 5)), root / "dog" / "1.JPEG")
    png(root / "bird" / "1.png")
    (root / "empty").mkdir()
    (root / "dog" / "readme.txt").write_text("ignored")
    png(root / ".ipynb_checkpoints" / "x.png")
    bad = bad_images(root / "dog")
    examples, classes, report = load_image_folder(root)
    assert classes == ["bird", "cat", "dog"]
    assert [e.id for e in examples] == ["bird/1.png", "cat/1.png", "cat/sub/2.PNG", "dog/1.JPEG"]
    assert all(e.label == e.target == e.id.split("/")[0] for e in examples)
    assert report.count == 3
    assert {s["path"] for s in report.skipped} == {str(p) for p in bad.values()}
    assert any("'empty'" in w for w in report.warnings)
    with pytest.raises(ImageError, match="dog"):
        load_image_folder(root, strict=True)


def test_image_folder_one_class_and_layout_errors(tmp_path):
    png(tmp_path / "one" / "only" / "a.png")
    examples, classes, report = load_image_folder(tmp_path / "one")
    assert classes == ["only"] and len(examples) == 1
    assert any("at least two" in w for w in report.warnings)
    with pytest.raises(DataError, match="train/ai/"):
        load_image_folder(tmp_path / "missing")
    png(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class folders.*1 image"):
        load_image_folder(tmp_path / "flat")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "b").mkdir()
    with pytest.raises(DataError, match="no usable images"):
        load_image_folder(tmp_path / "hollow")


# ----------------------------------------------------------------------------- image-text pairs


def test_pairs_json_and_jsonl(tmp_path):
    png(tmp_path / "data" / "images" / "a.png")
    absolute = png(tmp_path / "elsewhere" / "b.png")
    rows = [
        {"image_path": "images/a.png", "text": "a red square"},
        {"image_path": str(absolute), "text": ["first caption", "second caption"], "id": "b"},
        {"image_path": "images/missing.png", "text": "gone"},
    ]
    (tmp_path / "data" / "pairs.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "data" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("pairs.json", "pairs.jsonl"):
        examples, report = load_image_text_pairs(tmp_path / "data" / name)
        assert [e.image_path for e in examples] == [
            str(tmp_path / "data" / "images" / "a.png"),
            str(absolute),
        ]
        assert examples[0].target == "a red square" and examples[0].text == ""
        assert examples[1].references == ["first caption", "second caption"]
        assert examples[1].target == "first caption" and examples[1].id == "b"
        assert report.count == 1 and "missing.png" in report.skipped[0]["path"]
    assert report.skipped[0]["where"].endswith("pairs.jsonl:3")
    with pytest.raises(ImageError, match=r"pairs.jsonl:3: .*not found"):
        load_image_text_pairs(tmp_path / "data" / "pairs.jsonl", strict=True)


def test_pairs_missing_field_names_file_line_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image_path": "a.png", "text": "x"}\n{"image": "b.png", "text": "y"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:2: missing field 'image_path' "
                       r"\(fields present: image, text\)"):  # fmt: skip
        load_image_text_pairs(path)


# ----------------------------------------------------------------------------- VQAv2


def write_vqa(root: Path, *, with_annotations: bool = True) -> Path:
    images = root / "val2014"
    for image_id in (9, 42):
        png(images / f"COCO_val2014_{image_id:012d}.jpg")  # PNG bytes; Pillow sniffs content
    questions = [
        {"image_id": 9, "question": "What color is it?", "question_id": 90},
        {"image_id": 9, "question": "Is it square?", "question_id": 91},
        {"image_id": 42, "question": "How many?", "question_id": 420},
        {"image_id": 7, "question": "Where is it?", "question_id": 70},  # no image file
    ]
    qfile = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    qfile.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    answers = {90: ["red"] * 7 + ["orange"] * 3, 91: ["yes"] * 10, 420: ["2"] * 6 + ["3"] * 4}
    anns = [
        {"question_id": q, "image_id": 0, "answers": [{"answer": a} for a in ans]}
        | ({"multiple_choice_answer": ans[0]} if q != 420 else {})
        for q, ans in answers.items()
    ] + [{"question_id": 70, "image_id": 7, "answers": [{"answer": "x"}] * 10}]
    if with_annotations:
        (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    return qfile


def test_vqa_v2(tmp_path):
    qfile = write_vqa(tmp_path)
    examples, report = load_vqa(
        qfile, tmp_path / "v2_mscoco_val2014_annotations.json", image_dir=tmp_path / "val2014"
    )
    assert [e.id for e in examples] == ["90", "91", "420"]
    first = examples[0]
    assert first.text == "What color is it?" and first.target == "red"
    assert len(first.references) == 10 and first.references.count("orange") == 3
    assert examples[2].target == "2"  # no multiple_choice_answer: the most common answer
    assert first.image_path.endswith("COCO_val2014_000000000009.jpg")
    assert report.count == 1 and report.examples_skipped == 1
    assert "000000000007" in report.skipped[0]["path"]
    # Without annotations: prediction inputs.
    examples, _ = load_vqa(qfile, image_dir=tmp_path / "val2014")
    assert examples[0].target is None and examples[0].references == []


def test_vqa_v2_via_dispatcher_finds_annotations(tmp_path):
    qfile = write_vqa(tmp_path)
    examples, info = load_vision_examples(
        str(qfile), task_type="vqa", image_dir=str(tmp_path / "val2014"), check_images=False
    )
    assert info["source"] == "vqav2" and len(examples) == 3
    assert examples[1].references == ["yes"] * 10
    assert info["skipped"].count == 1
    with pytest.raises(DataError, match="VQAv2 questions file.*not 'caption'"):
        load_vision_examples(str(qfile), task_type="caption")


def test_vqa_errors(tmp_path):
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps({"questions": [{"image_id": 1, "question": "?"}]}))
    with pytest.raises(DataError, match=r"needs the split"):
        load_vqa(qfile)
    with pytest.raises(DataError, match=r"questions\[0\]: missing field 'question_id'"):
        load_vqa(qfile, split="val2014")


# ----------------------------------------------------------------------------- dispatcher


def test_dispatcher_folder_and_pairs(tmp_path):
    png(tmp_path / "train" / "ai" / "a.png")
    png(tmp_path / "train" / "nature" / "b.png")
    examples, info = load_vision_examples(str(tmp_path / "train"), task_type="classify")
    assert info["classes"] == ["ai", "nature"] and info["skipped"].count == 0
    with pytest.raises(DataError, match="folder of class folders"):
        load_vision_examples(str(tmp_path / "train"), task_type="caption")
    pairs = tmp_path / "vqa.jsonl"
    pairs.write_text(json.dumps({"image_path": "train/ai/a.png", "question": "q?", "answer": "a"}))
    examples, info = load_vision_examples(str(pairs), task_type="vqa")
    assert (examples[0].text, examples[0].target, info["source"]) == ("q?", "a", "pairs")
    with pytest.raises(TypeError, match="bogus"):
        load_vision_examples(str(pairs), task_type="vqa", bogus=1)


# ----------------------------------------------------------------------------- easy-vqa


def test_easy_vqa_real_package():
    answers = easy_vqa_answers()
    assert len(answers) == 13 and {"yes", "no", "circle", "red"} <= set(answers)
    train = load_easy_vqa("train")
    test = load_easy_vqa("test")
    assert len(train) == 38_575 and len(test) == 9_673
    paths = {e.image_path for e in train} | {e.image_path for e in test}
    assert len(paths) == 5_000 and all(os.path.isfile(p) for p in paths)
    assert all(e.target in answers and e.references == [e.target] for e in train[:500])
    assert train[0].text.endswith("?")
    assert load_image(train[0].image_path).size == (64, 64)
    examples, info = load_vision_examples("builtin:easy-vqa/val", task_type="vqa")
    assert len(examples) == 9_673 and info["answers"] == answers
    with pytest.raises(DataError, match="train and test"):
        load_easy_vqa("holdout")
