"""`softprompt baseline` and `softprompt report`: a tiny real run, its zero-shot baseline
and the HTML page, opened in headless Chromium; the page's size cap on a large fake run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from helpers import colour_images, image_folders, make_config, write_config

from softprompt.commands.cli import main
from softprompt.workflows.report.data import format_number, read_jsonl
from softprompt.workflows.report.examples import MAX_EXAMPLES, answer_groups, select_examples

pytestmark = pytest.mark.usefixtures("one_thread")
SPLITS = {"train": 6, "val": 3, "test": 4}  # images per class of the classify run

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_PAGE_BYTES = 4 * 2**20  # the README's stated bound for a page of MAX_EXAMPLES rows


def chromium() -> str:
    """The Chromium binary; the Makefile's install step installs Debian's package."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: run `make install` (apt-get install -y chromium)")


def run_chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}"]
    return subprocess.run(
        [*command, *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.fixture(scope="module")
def reported_run(tiny_models, tiny_clip, tmp_path_factory):
    """A tiny classify run (CLIP -> GPT-2), its zero-shot baseline and its report."""
    root = tmp_path_factory.mktemp("report")
    data = {split: image_folders(root / split, count) for split, count in SPLITS.items()}
    out = root / "run"
    sections = make_config(
        tiny_models["gpt2"],
        data,
        out,
        model_options={"vision_encoder": str(tiny_clip)},
        task={"type": "classify", "instruction": "Which colour?", "positive_label": "red"},
        epochs=3,
        batch_size=4,
        learning_rate=0.3,
        projection_learning_rate=0.01,
        metric_for_best_model="eval_accuracy",
    )
    config = write_config(root / "config.yaml", sections)
    assert main(["train", str(config), "--no-progress"]) == 0
    assert main(["baseline", str(config), "--no-progress"]) == 0
    html = out / "report" / "report.html"
    assert main(["report", str(out), "--no-progress"]) == 0
    return {"config": config, "run": out, "html": html, "root": root}


def test_training_saves_predictions_of_best(reported_run):
    run = reported_run["run"]
    results = json.loads((run / "all_results.json").read_text())
    for split, count in (("val", 6), ("test", 8)):
        records = read_jsonl(run / f"predictions.{split}.jsonl")
        assert len(records) == count == results[f"{split}_num_samples"]
        right = sum(r["prediction"] == r["label"] for r in records)
        assert results[f"{split}_accuracy"] == pytest.approx(100 * right / count)
        assert all(set(r["probabilities"]) == {"red", "blue"} for r in records)


def test_baseline_is_eval_without_adapters(reported_run, tmp_path, capsys):
    config, run = reported_run["config"], reported_run["run"]
    saved = json.loads((run / "baseline" / "metrics.json").read_text())
    assert saved["zero_shot"] is True and saved["prompt"] is None
    capsys.readouterr()
    assert main(["eval", str(config), "--split", "test", "--no-progress"]) == 0
    plain = json.loads(capsys.readouterr().out)["test"]
    for name in ("accuracy", "loss", "roc_auc"):
        assert saved["test"][name] == pytest.approx(plain[name])
    assert saved["test"]["confusion_matrix"] == plain["confusion_matrix"]
    # `eval --zero-shot` is the same evaluation, saved as the baseline too.
    target = tmp_path / "zs" / "metrics.json"
    argv = ["eval", str(config), f"training.output_dir={tmp_path / 'other'}", "--zero-shot"]
    assert main([*argv, "--split", "test", "--output", str(target), "--no-progress"]) == 0
    assert json.loads(target.read_text())["test"]["accuracy"] == saved["test"]["accuracy"]
    other = read_jsonl(tmp_path / "other" / "baseline" / "predictions.test.jsonl")
    assert other == read_jsonl(run / "baseline" / "predictions.test.jsonl")
    capsys.readouterr()
    prompt = str(run / "best")
    assert main(["eval", str(config), "--zero-shot", "--prompt", prompt]) == 2
    assert "--zero-shot" in capsys.readouterr().err


class _Dom(HTMLParser):
    """Metric cells, images and tables of a rendered page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.images: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self._row: dict[str, str] = {}
        self._cell: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "tr":
            self._row = attrs
        elif tag == "td" and "data-role" in attrs:
            self._cell = {**self._row, **attrs, "text": ""}
        elif tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._cell["text"] = self._cell["text"].strip()
            self.cells.append(self._cell)
            self._cell = None


def test_report_renders_in_headless_chromium(reported_run, tmp_path):
    html, run = reported_run["html"], reported_run["run"]
    shot = tmp_path / "report.png"
    run_chromium(html, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000  # a rendered page of tables and plots, not a blank
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        assert len(image.convert("RGB").getcolors(2**24) or []) > 50
    dom = run_chromium(html, tmp_path, "--dump-dom").stdout
    parsed = _Dom()
    parsed.feed(dom)
    assert {"metrics", "examples", "run-summary", "filters"} <= parsed.ids
    plots = [i for i in parsed.images if "plot" in i.get("class", "")]
    thumbs = [i for i in parsed.images if "thumb" in i.get("class", "")]
    assert plots and all(i["src"].startswith("data:image/png;base64,") for i in plots)
    assert thumbs and all(i["src"].startswith("data:image/jpeg;base64,") for i in thumbs)
    assert not any(i["src"].startswith(("http:", "https:", "file:")) for i in parsed.images)
    # The filter script ran in the browser: it writes the count of shown rows.
    assert "showing 8 of 8" in dom
    # Every number the metrics table shows is the one in the run's JSON files.
    results = json.loads((run / "all_results.json").read_text())
    baseline = json.loads((run / "baseline" / "metrics.json").read_text())
    checked = 0
    for cell in parsed.cells:
        split, metric, role = cell["data-split"], cell["data-metric"], cell["data-role"]
        if role == "delta":
            continue
        expected = results[f"{split}_{metric}"] if role == "tuned" else baseline[split][metric]
        assert float(cell["data-value"]) == expected
        assert cell["text"] == format_number(expected)
        checked += 1
    assert checked >= 2 * 2 * 5  # val and test, both sides, accuracy/F1/loss/...
    assert {"test", "val"} == {c["data-split"] for c in parsed.cells}


def test_report_files_and_figures(reported_run):
    out = reported_run["run"] / "report"
    names = {p.name for p in out.iterdir()}
    expected = {"report.html", "report.md", "training_curves.png", "eval_curves.png"}
    assert expected | {"confusion_test.png", "roc_test.png", "comparisons_test.png"} <= names
    summary = (out / "report.md").read_text()
    results = json.loads((reported_run["run"] / "all_results.json").read_text())
    assert "| test | accuracy |" in summary
    assert format_number(results["test_accuracy"]) in summary
    page = (out / "report.html").read_text()
    assert "Prompt inspection" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page


def test_report_shows_prompt_inspection_or_why_not(reported_run, tmp_path, monkeypatch):
    run = reported_run["run"]
    fake = types.ModuleType("softprompt.workflows.inspect_prompt")

    def inspect_prompt(prompt_dir, top_k=5, backbone=None):
        assert Path(prompt_dir) == run / "best" and top_k == 5
        token = {"token": "red<&>", "id": 7, "cosine": 0.625}
        return {
            "tokens": [{"index": 0, "norm": 1.5, "nearest": [token], "drift": None}],
            "vocab_norm": {"mean": 2.0, "std": 0.25},
        }

    fake.inspect_prompt = inspect_prompt
    monkeypatch.setitem(sys.modules, "softprompt.workflows.inspect_prompt", fake)
    page = tmp_path / "a" / "report.html"
    assert main(["report", str(run), "--output", str(page), "--no-progress"]) == 0
    text = page.read_text()
    assert 'id="inspection"' in text and "red&lt;&amp;&gt;" in text and "0.625" in text

    def broken(prompt_dir, top_k=5, backbone=None):
        raise RuntimeError("no embedding matrix")

    fake.inspect_prompt = broken
    assert main(["report", str(run), "--output", str(page), "--no-progress"]) == 0
    text = page.read_text()
    assert 'id="inspection-unavailable"' in text and "no embedding matrix" in text


def _fake_vqa_run(directory: Path, images: list[Path], n: int) -> None:
    """A finished easy-VQA-like run of n test questions and its zero-shot baseline."""
    kinds = ["What shape is in the image?", "What color is the shape?", "Is there a circle?"]
    answers = ["circle", "red", "yes"]
    tuned, base = [], []
    for i in range(n):
        k = i % 3
        record = {"id": f"easy-vqa/test:{i}", "image": str(images[i % len(images)])}
        record |= {"question": kinds[k], "references": [answers[k]]}
        tuned.append({**record, "prediction": answers[k] if i % 5 else "blue"})
        base.append({**record, "prediction": answers[k] if i % 7 == 0 else "no"})
    (directory / "baseline").mkdir(parents=True)
    for path, records in ((directory, tuned), (directory / "baseline", base)):
        text = "".join(json.dumps(r) + "\n" for r in records)
        (path / "predictions.test.jsonl").write_text(text)
    results = {"global_step": 10, "methods": ["prompt_tuning"], "test_exact_match": 80.0}
    (directory / "all_results.json").write_text(json.dumps(results))
    (directory / "config.yaml").write_text(yaml.safe_dump({"task": {"type": "vqa"}}))
    baseline = {"zero_shot": True, "test": {"exact_match": 14.3, "num_samples": n}}
    (directory / "baseline" / "metrics.json").write_text(json.dumps(baseline))


def test_large_evaluation_page_stays_capped(tmp_path):
    images = [p for ps in colour_images(tmp_path / "img", per_colour=20).values() for p in ps]
    run = tmp_path / "run"
    _fake_vqa_run(run, images, 3000)
    assert main(["report", str(run), "--no-progress"]) == 0
    page = run / "report" / "report.html"
    text = page.read_text()
    assert text.count('class="example"') == MAX_EXAMPLES
    assert page.stat().st_size < MAX_PAGE_BYTES
    assert "3000 examples" in text and "Prompt inspection unavailable" in text
    # Accuracy by easy-VQA question type: the tuned run misses every 5th question, the
    # baseline gets every 7th right.
    assert all(f"<td>{kind}</td>" in text for kind in ("shape", "colour", "yes/no"))
    by_type = (run / "report" / "report.md").read_text()
    assert "| shape | 1000 | 14.3 | 80 |" in by_type
    assert (run / "report" / "by_type_test.png").is_file()


def test_selection_puts_changed_answers_first(tmp_path):
    from softprompt.workflows.report.data import pair_records

    tuned = [{"id": str(i), "references": ["a"], "prediction": "a"} for i in range(500)]
    base = [{**r, "prediction": "b" if i < 30 else "a"} for i, r in enumerate(tuned)]
    pairs = pair_records(tuned, base[::-1])  # matched by id, not position
    chosen = select_examples(pairs, limit=50)
    assert len(chosen) == 50
    assert sum(p.status == "fixed" for p in chosen) == 30
    assert [p.index for p in chosen] == sorted(p.index for p in chosen)
    assert [p.index for p in select_examples(pairs, limit=50)] == [p.index for p in chosen]
    what, groups = answer_groups(pairs)
    assert what == "reference answer" and list(groups) == ["a"]


def test_demo_reuses_its_zero_shot_predictions_for_the_report(
    tiny_models, tiny_clip, tmp_path, capsys
):
    """demo/run_demo.py's code path on a tiny VQA run: baseline, training, report."""
    import importlib.util

    images = colour_images(tmp_path / "img", per_colour=3)
    rows = [
        {"image_path": str(p), "question": "what colour?", "answer": colour}
        for colour, paths in images.items()
        for p in paths
    ]
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    sections = make_config(
        tiny_models["gpt2"],
        {"train": data, "test": data, "validation": False},
        out,
        model_options={"vision_encoder": str(tiny_clip)},
        task={"type": "vqa", "max_new_tokens": 2},
        max_steps=4,
        batch_size=3,
    )
    config = tmp_path / "demo.yaml"
    config.write_text("# python demo/run_demo.py demo.yaml\n" + yaml.safe_dump(sections))
    path = Path(__file__).resolve().parent.parent / "demo" / "run_demo.py"
    spec = importlib.util.spec_from_file_location("run_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    capsys.readouterr()
    assert demo.main([str(config)]) == 0
    printed = capsys.readouterr().out
    page = out / "report" / "report.html"
    assert f"Report: {page}" in printed
    baseline = json.loads((out / "baseline" / "metrics.json").read_text())
    shown = json.loads((out / "demo_results.json").read_text())["zero_shot"]
    assert baseline["test"] == shown  # the printed zero-shot number is the saved baseline
    assert len(read_jsonl(out / "baseline" / "predictions.test.jsonl")) == 6
    text = page.read_text()
    assert "Accuracy by reference answer" in text and "<td>red</td>" in text


def test_model_output_is_escaped_in_page_and_figures(tmp_path):
    """Answers are data: markup stays text in the page, "$" and control bytes in figures."""
    images = colour_images(tmp_path / "img", per_colour=1)["red"]
    run = tmp_path / "run"
    _fake_vqa_run(run, images, 6)
    hostile = "<script>alert(1)</script> $5 or $10 \x1b"
    path = run / "predictions.test.jsonl"
    records = read_jsonl(path)
    records[0]["prediction"] = hostile
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", str(run), "--no-progress"]) == 0
    page = (run / "report" / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert (run / "report" / "comparisons_test.png").stat().st_size > 1000


def test_bank_run_gets_per_task_rows_and_missing_files_are_tolerated(tmp_path):
    """A run over two tasks with only all_results.json: per-task rows, no examples."""
    from softprompt.workflows.report.data import split_tasks

    run = tmp_path / "bank"
    run.mkdir()
    results = {
        "methods": ["prompt_tuning"],
        "test_accuracy": 75.0,
        "test_loss": 0.5,
        "test_colour_vqa_exact_match": 70.0,
        "test_shape_accuracy": 80.0,
        "test_shape_loss": 0.25,
    }
    (run / "all_results.json").write_text(json.dumps(results))
    assert main(["report", str(run), "--no-progress"]) == 0
    page = (run / "report" / "report.html").read_text()
    assert 'id="task-metrics"' in page and 'data-task="colour_vqa"' in page
    assert 'data-task="shape"' in page and "No per-example predictions" in page
    assert "Prompt inspection unavailable" in page
    overall, tasks = split_tasks({"f1_macro": 1.0, "ai_f1_macro": 2.0, "exact_match": 3.0})
    assert overall == {"f1_macro": 1.0, "exact_match": 3.0} and tasks == {"ai": {"f1_macro": 2.0}}
    overall, tasks = split_tasks({"a_b_loss": 1.0, "loss": 2.0}, tasks=["a_b"])
    assert overall == {"loss": 2.0} and tasks == {"a_b": {"loss": 1.0}}
