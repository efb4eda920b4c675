"""Text-to-text readers: formats, field mapping, templates, built-ins and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.data.errors import DataError
from softprompt.data.records import TextExample
from softprompt.data.text import (
    BUILTIN_TEXT_DATASETS,
    detect_format,
    load_text_examples,
    register_builtin_text_dataset,
)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def raises(match_all: list[str], fn, *args, **kwargs) -> str:
    """Call fn, expect DataError, check each fragment appears in the message."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for fragment in match_all:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_reads_fields_ids_and_references(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"id": "a1", "input": "hello", "target": "bonjour"}\n'
        "\n"  # blank lines are skipped but still count for line numbers
        '{"input": "two", "target": ["deux", "2"]}\n'
        '{"input": 3, "target": 4.5}\n',
        encoding="utf-8",
    )
    examples = load_text_examples(str(path))
    assert examples == [
        TextExample(id="a1", input="hello", target="bonjour", references=["bonjour"]),
        TextExample(id="train.jsonl:3", input="two", target="deux", references=["deux", "2"]),
        TextExample(id="train.jsonl:4", input="3", target="4.5", references=["4.5"]),
    ]


def test_custom_field_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"key": 7, "prompt": "p", "caption": "c"}])
    (ex,) = load_text_examples(
        str(path), input_field="prompt", target_field="caption", id_field="key"
    )
    assert (ex.id, ex.input, ex.target) == ("7", "p", "c")


def test_missing_target_names_file_line_field_and_present_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": "a", "target": "b"}, {"prompt": "x", "caption": "y"}],
    )
    msg = raises(
        [f"{path}:2:", "missing field 'target'"],
        load_text_examples,
        str(path),
        input_field="prompt",
    )
    assert "fields present: prompt, caption" in msg
    assert "set data.target_field" in msg


def test_missing_input_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "target": "t"}])
    raises(
        [f"{path}:1:", "'input'", "fields present: question, target", "data.input_field"],
        load_text_examples,
        str(path),
    )


def test_null_target_is_reported(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"input": "q", "target": None}])
    raises([f"{path}:1:", "'target'", "empty"], load_text_examples, str(path))


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n{"input": "a", "target": \n', encoding="utf-8")
    raises([f"{path}:2:", "malformed JSON"], load_text_examples, str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n["a", "b"]\n', encoding="utf-8")
    raises([f"{path}:2:", "expected a JSON object", "list"], load_text_examples, str(path))


def test_non_utf8_bytes_report_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    good = b'{"input": "a", "target": "b"}\n'
    path.write_bytes(good + good + b'{"input": "caf\xe9", "target": "b"}\n')
    raises([f"{path}:3:", "UTF-8", "0xe9"], load_text_examples, str(path))


@pytest.mark.parametrize("content", ["", "   \n\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    raises([str(path), "empty"], load_text_examples, str(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    raises([str(path), "not found"], load_text_examples, str(path))
    raises([str(path), "not found"], load_text_examples, str(path), format="jsonl")


def test_target_list_rules(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "e.jsonl", [{"input": "a", "target": []}])
    raises([f"{empty}:1:", "'target'", "empty list"], load_text_examples, str(empty))
    nested = write_jsonl(tmp_path / "n.jsonl", [{"input": "a", "target": ["ok", {"x": 1}]}])
    raises(
        [f"{nested}:1:", "'target'", "dict", "expected a string"], load_text_examples, str(nested)
    )
    obj = write_jsonl(tmp_path / "o.jsonl", [{"input": "a", "target": {"x": 1}}])
    raises([f"{obj}:1:", "'target'", "list of strings"], load_text_examples, str(obj))
    bad_input = write_jsonl(tmp_path / "i.jsonl", [{"input": ["a"], "target": "b"}])
    raises([f"{bad_input}:1:", "'input'", "list"], load_text_examples, str(bad_input))


def test_require_target_false_allows_prediction_inputs(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": "a"}, {"input": "b", "target": "t"}])
    examples = load_text_examples(str(path), require_target=False)
    assert [(e.target, e.references) for e in examples] == [(None, []), ("t", ["t"])]


def test_max_samples_keeps_first_records(tmp_path: Path) -> None:
    rows = [{"input": str(i), "target": str(i)} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert [e.input for e in load_text_examples(str(path), max_samples=3)] == ["0", "1", "2"]
    assert load_text_examples(str(path), max_samples=0) == []
    with pytest.raises(ValueError):
        load_text_examples(str(path), max_samples=-1)


# ----------------------------------------------------------------------------- JSON


def test_json_array_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    rows = [{"input": "a", "target": "b"}, {"input": "c", "target": "d"}]
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    examples = load_text_examples(str(path))
    assert [(e.id, e.input) for e in examples] == [("d.json:2", "a"), ("d.json:6", "c")]

    path.write_text(json.dumps([rows[0], {"input": "c"}], indent=2), encoding="utf-8")
    raises(
        [f"{path}:6:", "missing field 'target'", "fields present: input"],
        load_text_examples,
        str(path),
    )


def test_jsonl_content_in_json_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.json", [{"input": "a", "target": "b"}] * 2)
    assert len(load_text_examples(str(path))) == 2
    assert detect_format(str(path)) == "json"


def test_malformed_json_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        '[\n  {"input": "a", "target": "b"},\n  {"input": "c" "target": "d"}\n]', encoding="utf-8"
    )
    raises([f"{path}:3:", "malformed JSON"], load_text_examples, str(path))
    path.write_text('[{"input": "a", "target": "b"}] trailing', encoding="utf-8")
    raises([f"{path}:1:", "extra data"], load_text_examples, str(path))


def test_empty_json_array_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("[]", encoding="utf-8")
    raises([str(path), "no records"], load_text_examples, str(path))


# ----------------------------------------------------------------------------- CSV / TSV


def test_csv_reads_rows_with_quoting_and_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('input,target\n"hello, world",hi\n"two\nlines",x\n\nlast,y\n', encoding="utf-8")
    examples = load_text_examples(str(path))
    assert [(e.id, e.input, e.target) for e in examples] == [
        ("d.csv:0", "hello, world", "hi"),
        ("d.csv:1", "two\nlines", "x"),
        ("d.csv:2", "last", "y"),
    ]


def test_csv_errors_name_line_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,caption\na,b\nc,d\n", encoding="utf-8")
    raises(
        [f"{path}:2:", "missing field 'target'", "fields present: prompt, caption"],
        load_text_examples,
        str(path),
        input_field="prompt",
    )
    path.write_text('input,target\na,b\n"multi\nline",c\nx,y,z\n', encoding="utf-8")
    raises([f"{path}:5:", "3 fields", "header has 2"], load_text_examples, str(path))
    # An empty cell counts as a missing value.
    path.write_text("input,target\na,\n", encoding="utf-8")
    raises([f"{path}:2:", "'target'", "empty"], load_text_examples, str(path))
    path.write_text("input,target\n", encoding="utf-8")
    raises([str(path), "no records"], load_text_examples, str(path))


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("id\tinput\ttarget\nx1\ta, b\tc\n", encoding="utf-8")
    assert load_text_examples(str(path)) == [
        TextExample(id="x1", input="a, b", target="c", references=["c"])
    ]


# ----------------------------------------------------------------------------- templates


def test_template_uses_input_and_other_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "What?", "lang": "fr", "target": "t"}])
    (ex,) = load_text_examples(str(path), input_field="q", template="Translate to {lang}: {input}")
    assert ex.input == "Translate to fr: What?"


def test_template_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"input": "a", "target": "b"}])
    template = "Summarize {style}: {input}"
    raises(
        [f"{path}:1:", repr(template), "'style'", "fields present: input, target"],
        load_text_examples,
        str(path),
        template=template,
    )
    raises(["'{input'"], load_text_examples, str(path), template="{input")
    raises(["positional"], load_text_examples, str(path), template="{} {input}")


# ----------------------------------------------------------------------------- format detection


def test_detect_format(tmp_path: Path) -> None:
    for name, fmt in [("a.jsonl", "jsonl"), ("a.JSON", "json"), ("a.csv", "csv"), ("a.tsv", "tsv")]:
        (tmp_path / name).write_text("x", encoding="utf-8")
        assert detect_format(str(tmp_path / name)) == fmt
    assert detect_format("builtin:aclsum/challenge") == "builtin"
    assert detect_format("hf:squad") == "hf"


def test_unknown_format_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_text("x", encoding="utf-8")
    raises(
        [str(path), "supported formats", "jsonl", "csv", "hf_disk"], load_text_examples, str(path)
    )
    raises(
        [str(path), "unknown format 'xml'", "supported formats"],
        load_text_examples,
        str(path),
        format="xml",
    )
    raises([str(tmp_path), "save_to_disk", "supported formats"], load_text_examples, str(tmp_path))


# ----------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize(("split", "count"), [("train", 100), ("val", 50), ("test", 100)])
def test_aclsum_builtin_real_data(split: str, count: int) -> None:
    examples = load_text_examples("builtin:aclsum/challenge", split=split)
    assert len(examples) == count
    assert all(e.input.strip() and e.target and e.references == [e.target] for e in examples)
    assert len({e.id for e in examples}) == count


def test_aclsum_aspects_split_synonyms_and_template() -> None:
    outcome = load_text_examples("builtin:aclsum/outcome", split="validation")
    approach = load_text_examples("builtin:aclsum/approach/dev")
    assert len(outcome) == len(approach) == 50
    assert outcome[0].id == approach[0].id and outcome[0].target != approach[0].target
    (ex,) = load_text_examples(
        "builtin:aclsum/challenge/test", template="{title}\n\n{input}", max_samples=1
    )
    assert "\n\n" in ex.input and ex.input.split("\n\n")[0]


def test_builtin_errors() -> None:
    raises(
        ["builtin:aclsum/method", "challenge, approach, outcome"],
        load_text_examples,
        "builtin:aclsum/method",
    )
    raises(["builtin:aclsum", "valid aspects"], load_text_examples, "builtin:aclsum")
    raises(["available splits: train, val, test"], load_text_examples, "builtin:aclsum/challenge/x")
    raises(["unknown builtin dataset 'nope'", "aclsum"], load_text_examples, "builtin:nope/x")
    with pytest.raises(ValueError, match="already registered"):
        register_builtin_text_dataset("aclsum", BUILTIN_TEXT_DATASETS["aclsum"])


# ----------------------------------------------------------------------------- datasets


def test_save_to_disk_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "ds"
    datasets.Dataset.from_dict({"input": ["a", "b"], "target": ["x", "y"]}).save_to_disk(str(out))
    assert detect_format(str(out)) == "hf_disk"
    examples = load_text_examples(str(out))
    assert [(e.id, e.input, e.target) for e in examples] == [("ds:0", "a", "x"), ("ds:1", "b", "y")]


def test_save_to_disk_dataset_dict_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"src": ["a"], "tgt": ["x"]}),
            "validation": datasets.Dataset.from_dict({"src": ["b", "c"], "tgt": ["y", "z"]}),
        }
    ).save_to_disk(str(out))
    examples = load_text_examples(str(out), split="val", input_field="src", target_field="tgt")
    assert [e.input for e in examples] == ["b", "c"]
    assert examples[0].id == "dd:validation:0"
    raises(
        [str(out), "'test'", "available splits: train, validation"],
        load_text_examples,
        str(out),
        split="test",
    )
    raises([str(out), "row 0", "missing field 'input'", "src, tgt"], load_text_examples, str(out))


def test_hf_spec_with_local_dataset_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "local"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"input": "a", "target": "b"}])
    (ex,) = load_text_examples(f"hf:{folder}")
    assert (ex.input, ex.target) == ("a", "b")
    raises(
        [f"hf:{folder}", "cannot load dataset", "validation"],
        load_text_examples,
        f"hf:{folder}",
        split="validation",
    )


def test_json_array_on_one_line_gets_distinct_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    rows = [
        {"input": "a", "target": "b"},
        {"input": "c", "target": "d"},
        {"input": "e", "target": "f"},
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    ids = [e.id for e in load_text_examples(str(path))]
    assert ids == ["d.json:1", "d.json:1:2", "d.json:1:3"]
