"""The benchmark tables of the docs are what bench/results/*.json renders (tools/render_results.py)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import render_results  # noqa: E402
from results_tables import MissingResult  # noqa: E402


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the docs with blocks and of the results, in tmp_path."""
    for doc in render_results.DOCS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / doc, tmp_path / doc)
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results)
    return tmp_path, results


def test_committed_docs_equal_the_rendering_of_the_committed_json(capsys):
    assert render_results.stale_blocks(ROOT, ROOT / "bench" / "results") == []
    assert render_results.main(["--check"]) == 0


def test_readme_and_benchmarks_hold_the_targets_block():
    for doc in ("README.md", "docs/benchmarks.md"):
        names = [
            name
            for name, _, _ in render_results.blocks((ROOT / doc).read_text(encoding="utf-8"), doc)
        ]
        assert "targets" in names, doc
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.index("<!-- results:targets end -->") < readme.index("## Documentation")
    assert readme.index("<!-- results:headline end -->") < readme.index("## Documentation")
    results = (ROOT / "docs/results.md").read_text(encoding="utf-8")
    names = [name for name, _, _ in render_results.blocks(results, "results.md")]
    assert sorted(names) == ["demo-seeds", "easyvqa-anchor", "fashion-mnist"]


def test_changing_a_number_fails_the_check_naming_the_block(tmp_path, capsys):
    root, results = _copy(tmp_path)
    path = results / "lora_vs_peft.json"
    data = json.loads(path.read_text())
    data["samples_per_s"]["ours"]["median"] = 9.999
    path.write_text(json.dumps(data))
    assert render_results.stale_blocks(root, results) == ["docs/benchmarks.md: lora"]
    assert render_results.main(["--check", "--root", str(root), "--results", str(results)]) == 1
    assert "docs/benchmarks.md: lora" in capsys.readouterr().err
    # rendering writes the new number, after which the check passes
    assert render_results.main(["--root", str(root), "--results", str(results)]) == 0
    assert "9.999" in (root / "docs" / "benchmarks.md").read_text()
    assert render_results.stale_blocks(root, results) == []


def test_a_target_change_names_both_targets_blocks(tmp_path):
    root, results = _copy(tmp_path)
    path = results / "coop.json"
    data = json.loads(path.read_text())
    data["settings"]["target"] = 50.0
    path.write_text(json.dumps(data))
    assert render_results.stale_blocks(root, results) == [
        "README.md: targets",
        "docs/benchmarks.md: targets",
    ]
    rendered = render_results.render_block("targets", render_results.Results(results))
    assert re.search(r"CoOp.*>= 50x \| \*\*not met\*\*", rendered)


def test_every_marker_block_has_a_start_and_an_end():
    for doc in render_results.DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        markers = render_results.MARKER.findall(text)
        starts = [name for name, kind in markers if kind == "start"]
        ends = [name for name, kind in markers if kind == "end"]
        assert starts == ends, doc
        assert len(render_results.blocks(text, doc)) == len(starts)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- results:lora start -->\n", "has a start but no end"),
        ("x\n<!-- results:lora end -->\n", "without its start"),
        ("<!-- results:lora start -->\n<!-- results:switch start -->\n", "has no end"),
        ("<!-- results:nosuch start -->\n<!-- results:nosuch end -->\n", "unknown results block"),
    ],
)
def test_unpaired_or_unknown_markers_are_refused(text, message):
    with pytest.raises(render_results.RenderError, match=message):
        render_results.blocks(text, "page.md")


def test_a_missing_json_file_is_named(tmp_path, capsys):
    root, results = _copy(tmp_path)
    (results / "switch.json").unlink()
    with pytest.raises(MissingResult, match="switch.json"):
        render_results.stale_blocks(root, results)
    assert render_results.main(["--check", "--root", str(root), "--results", str(results)]) == 2
    assert "switch.json" in capsys.readouterr().err


def test_every_table_ends_with_its_sources():
    results = render_results.Results(ROOT / "bench" / "results")
    for name, (_, sources) in render_results.TABLES.items():
        last = render_results.render_block(name, results).splitlines()[-1]
        assert last.startswith("Rendered by `make results` from"), name
        assert all(f"bench/results/{s}" in last for s in sources), name


def test_makefile_has_the_results_target():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^results: .*\n\t\$\(PY\) tools/render_results.py$", makefile, flags=re.M)
