"""Render the benchmark tables of the docs from bench/results/*.json (`make results`).

    python tools/render_results.py           # rewrite every results block in place
    python tools/render_results.py --check   # exit 1 naming each block that differs

A block is the text between `<!-- results:NAME start -->` and `<!-- results:NAME end -->` in
README.md, docs/benchmarks.md or docs/results.md; NAME picks the table (results_tables.TABLES, plus `targets`).
Each rendered table ends with a line naming its source files and the machine fields they record.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_quality import QUALITY_TABLES  # noqa: E402
from results_tables import TABLES as FILE_TABLES  # noqa: E402
from results_tables import MissingResult, Renderer, Results  # noqa: E402
from results_targets import SOURCES, targets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/benchmarks.md", "docs/results.md", "docs/distributed.md")
TABLES: dict[str, tuple[Renderer, tuple[str, ...]]] = {
    "targets": (targets, SOURCES),
    **FILE_TABLES,
    **QUALITY_TABLES,
}
MARKER = re.compile(r"<!-- results:([\w-]+) (start|end) -->")
MACHINE_KEYS = ("cpu", "cores", "threads", "torch_threads", "torch", "transformers", "python")


class RenderError(ValueError):
    """Marker comments that do not pair up, or name no known table."""


def machine_fields(data: dict) -> str:
    """The machine fields a result file records (top level, `settings`, `machine`)."""
    fields: dict[str, object] = {}
    for part in (data, data.get("settings", {}), data.get("machine", {})):
        fields.update({k: part[k] for k in MACHINE_KEYS if isinstance(part, dict) and k in part})
    return (
        ", ".join(f"{k} {fields[k]}" for k in MACHINE_KEYS if k in fields)
        or "no machine fields recorded"
    )


def source_line(results: Results, names: tuple[str, ...]) -> str:
    parts = [f"`bench/results/{name}` ({machine_fields(results(name))})" for name in names]
    return "Rendered by `make results` from " + "; ".join(parts) + "."


def render_block(name: str, results: Results) -> str:
    render, sources = TABLES[name]
    return f"{render(results)}\n\n{source_line(results, sources)}"


def blocks(text: str, where: str) -> list[tuple[str, int, int]]:
    """(name, body start, body end) of every block; RenderError unless starts and ends pair up."""
    found, open_ = [], None
    for m in MARKER.finditer(text):
        name, kind = m.groups()
        if name not in TABLES:
            raise RenderError(
                f"{where}: unknown results block {name!r} (known: {', '.join(TABLES)})"
            )
        if kind == "start":
            if open_ is not None:
                raise RenderError(
                    f"{where}: block {open_[0]!r} has no end before block {name!r} starts"
                )
            open_ = (name, m.end())
        elif open_ is None or open_[0] != name:
            raise RenderError(f"{where}: end of block {name!r} without its start")
        else:
            found.append((name, open_[1], m.start()))
            open_ = None
    if open_ is not None:
        raise RenderError(f"{where}: block {open_[0]!r} has a start but no end")
    return found


def render_text(text: str, results: Results, where: str = "<text>") -> str:
    out, last = [], 0
    for name, start, end in blocks(text, where):
        out += [text[last:start], f"\n{render_block(name, results)}\n"]
        last = end
    return "".join(out) + text[last:]


def stale_blocks(root: Path, results_dir: Path, docs: tuple[str, ...] = DOCS) -> list[str]:
    """`FILE: NAME` for every block whose text differs from what the JSON renders."""
    results, stale = Results(results_dir), []
    for doc in docs:
        text = (root / doc).read_text(encoding="utf-8")
        for name, start, end in blocks(text, doc):
            if text[start:end] != f"\n{render_block(name, results)}\n":
                stale.append(f"{doc}: {name}")
    return stale


def write(root: Path, results_dir: Path, docs: tuple[str, ...] = DOCS) -> list[str]:
    """Rewrite every block in place; returns the files that changed."""
    results, changed = Results(results_dir), []
    for doc in docs:
        path = root / doc
        text = path.read_text(encoding="utf-8")
        new = render_text(text, results, doc)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(doc)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a block differs from the JSON"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="directory holding README.md and docs/"
    )
    parser.add_argument(
        "--results", type=Path, help="benchmark JSON directory (default ROOT/bench/results)"
    )
    args = parser.parse_args(argv)
    results_dir = args.results or args.root / "bench" / "results"
    try:
        if args.check:
            stale = stale_blocks(args.root, results_dir)
            for block in stale:
                print(f"stale results block: {block} (run `make results`)", file=sys.stderr)
            return 1 if stale else 0
        for doc in write(args.root, results_dir):
            print(f"rendered {doc}")
    except (MissingResult, RenderError) as exc:
        print(f"render_results: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
