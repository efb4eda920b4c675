"""The documentation site: `mkdocs build --strict` over docs/ (mkdocs-material) passes,
and every page in docs/ is in its navigation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def nav_pages() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    return [page for entry in config["nav"] for page in entry.values()]


def test_every_page_is_in_the_navigation():
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(nav_pages()) == pages


def test_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    for page in nav_pages():
        html = tmp_path / page.removesuffix(".md") / "index.html"
        if page == "index.md":
            html = tmp_path / "index.html"
        assert html.is_file(), page
    assert "softprompt" in (tmp_path / "index.html").read_text(encoding="utf-8")
