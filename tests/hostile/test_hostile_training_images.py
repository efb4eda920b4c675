"""Training data whose image paths are hostile: each bad image is reported and skipped (or
fails the run with --strict semantics), whether images are decoded or only looked for."""

from __future__ import annotations

import os

import pytest

from softprompt.data.images import ImageError
from softprompt.data.load_report import ImageChecker, LoadReport


@pytest.fixture
def hostile(tmp_path):
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink("nowhere.png", tmp_path / "dangling.png")
    (tmp_path / "folder.png").mkdir()
    return tmp_path


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("name", ["loop.png", "dangling.png", "folder.png", "missing.png"])
def test_a_bad_image_path_is_reported_and_skipped(hostile, name, decode):
    report = LoadReport()
    checker = ImageChecker(report, check_images=decode)
    assert not checker.usable(str(hostile / name), where="train.jsonl:3")
    assert report.examples_skipped == 1 and report.count == 1
    assert name in report.skipped[0]["error"]


@pytest.mark.parametrize("decode", [True, False])
def test_a_symlink_loop_fails_a_strict_load_naming_the_line(hostile, decode):
    checker = ImageChecker(LoadReport(), strict=True, check_images=decode)
    with pytest.raises(ImageError, match=r"train\.jsonl:3: .*loop\.png"):
        checker.usable(str(hostile / "loop.png"), where="train.jsonl:3")
