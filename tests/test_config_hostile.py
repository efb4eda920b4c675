"""Hostile configs: whatever a YAML file or an override holds, the answer is a ConfigError
with one paragraph naming the key (and the allowed values), never a traceback."""

from __future__ import annotations

import typing
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from softprompt.commands.cli import main
from softprompt.config.run import (
    LEGACY_KEYS,
    ConfigError,
    RunConfig,
    _all_keys,
    build_config,
    load_config,
)

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KEYS = _all_keys()
SECTIONS = ["model", "method", "method.prompt_tuning", "data", "task", "training"]
LEGACY_LEAVES = {k.rsplit(".", 1)[-1] for k in LEGACY_KEYS}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
garbage = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def nested(dotted: str, value) -> dict:
    tree: dict = {}
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def field_annotation(dotted: str):
    model: type[BaseModel] = RunConfig
    *sections, leaf = dotted.split(".")
    for name in sections:
        model = model.model_fields[name].annotation
    return model.model_fields[leaf].annotation


def allowed_literals(dotted: str) -> list[str]:
    """The allowed values of an enum-like (Literal) field, else []."""
    values = []
    for arg in typing.get_args(field_annotation(dotted)) or (field_annotation(dotted),):
        if typing.get_origin(arg) is typing.Literal:
            values.extend(typing.get_args(arg))
    return [v for v in values if isinstance(v, str)]


def assert_one_paragraph(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert len(message) < 2500, len(message)


def validate(raw=None, overrides=None):
    """build_config, which may only succeed or raise ConfigError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy key names warn; not what is tested here
        try:
            return build_config(raw, overrides), None
        except ConfigError as err:
            assert_one_paragraph(str(err))
            return None, str(err)


@FAST
@given(key=st.sampled_from(KEYS), value=garbage)
def test_any_value_for_any_key_validates_or_names_the_key(key, value):
    config, error = validate(nested(key, value))
    if error is None:
        assert isinstance(config, RunConfig)
        return
    section = key.rsplit(".", 1)[0]
    # Cross-field checks (init_method TEXT needs init_text) name the section and the field.
    assert key in error or section in error, error
    choices = allowed_literals(key)
    if choices and isinstance(value, str) and key in error:
        for choice in choices:
            assert choice in error, (choice, error)


@FAST
@given(
    section=st.sampled_from(SECTIONS),
    key=st.text(min_size=1, max_size=15).filter(lambda k: "." not in k),
    value=garbage,
)
def test_unknown_keys_are_named(section, key, value):
    full = f"{section}.{key}"
    if full in KEYS or key in LEGACY_LEAVES or any(k.startswith(full + ".") for k in KEYS):
        return
    config, error = validate(nested(section, {key: value}))
    assert config is None
    assert "unknown key" in error
    if key.isprintable():
        assert repr(full) in error, error


@FAST
@given(section=st.sampled_from(SECTIONS), value=garbage)
def test_a_section_that_is_not_a_mapping(section, value):
    config, error = validate(nested(section, value))
    if error is not None:
        assert section in error


@FAST
@given(
    raw=st.dictionaries(
        st.sampled_from(["model", "data", "task", "training"]) | st.text(max_size=8),
        garbage,
        max_size=5,
    )
)
def test_whole_garbage_trees(raw):
    validate(raw)


@FAST
@given(raw=garbage)
def test_non_mapping_top_level(raw):
    config, error = validate(raw)
    if not isinstance(raw, dict) and raw is not None:
        assert error is not None and "mapping" in error


@FAST
@given(items=st.lists(st.text(max_size=30), max_size=4))
def test_free_text_overrides(items):
    validate({}, items)


@FAST
@given(key=st.sampled_from(KEYS), value=st.text(max_size=30))
def test_overrides_of_known_keys_name_the_key(key, value):
    config, error = validate({}, [f"{key}={value}"])
    if error is not None:
        assert key in error or key.rsplit(".", 1)[0] in error, error


@FAST
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_file_content_gives_a_config_or_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_config(path)
        except ConfigError as err:
            assert_one_paragraph(str(err))
            assert str(path) in str(err)


@pytest.mark.parametrize(
    "text,expected",
    [
        # Anchors that expand into a huge tree ("billion laughs").
        (
            "a: &a {x1: 1, x2: 1, x3: 1, x4: 1, x5: 1, x6: 1, x7: 1, x8: 1, x9: 1}\n"
            "b: &b {y1: *a, y2: *a, y3: *a, y4: *a, y5: *a, y6: *a, y7: *a, y8: *a, y9: *a}\n"
            "c: &c {z1: *b, z2: *b, z3: *b, z4: *b, z5: *b, z6: *b, z7: *b, z8: *b, z9: *b}\n"
            "d: &d {w1: *c, w2: *c, w3: *c, w4: *c, w5: *c, w6: *c, w7: *c, w8: *c, w9: *c}\n"
            "training: {v1: *d, v2: *d, v3: *d, v4: *d, v5: *d, v6: *d, v7: *d, v8: *d}\n",
            "more than",
        ),
        ("training: &a {x: *a}\n", "nested too deeply"),  # a mapping that contains itself
        ("training:\n  output_dir: &a [*a]\n", "training.output_dir"),  # a list inside itself
        ("[" * 5000 + "]" * 5000, "config"),  # deeper than PyYAML's recursion
        ("training: [unclosed\n", "line 2"),
        ("training:\n\tepochs: 3\n", "not valid YAML"),  # a tab indent
        ("a: 1\n---\nb: 2\n", "not valid YAML"),  # two documents
        ("- just\n- a list\n", "mapping"),
        ("42\n", "mapping"),
        ("training: {epochs: .inf}\n", "training.epochs"),
        ("training: {learning_rate: .nan}\n", "training.learning_rate"),
        ("training: {seed: -1}\n", "training.seed"),
        ("training: {max_grad_norm: -1}\n", "training.max_grad_norm"),
        ("training: 3\n", "must be a mapping of training keys"),
        ("model: {dtype: fp8}\n", "'bfloat16'"),
        ("task: {labels: {v1.0: 'yes', v2.0: 'no'}}\n", None),  # dotted class names are fine
        ("task: {labels: {ai: yes, nature: no}}\n", "quote the word"),
    ],
)
def test_hostile_yaml_files(tmp_path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    if expected is None:
        assert load_config(path).task.labels == {"v1.0": "yes", "v2.0": "no"}
        return
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert_one_paragraph(str(err.value))
    assert expected in str(err.value), str(err.value)


def test_many_errors_are_summarised():
    raw = {
        "training": {
            name: "x" for name in RunConfig.model_fields["training"].annotation.model_fields
        }
    }
    _, error = validate(raw)
    assert "more problems" in error


def test_unreadable_config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("training: {epochs: 1}\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(type(path), "read_text", refuse)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(path)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "content,overrides,expected",
    [
        ("training: [unclosed\n", [], "not valid YAML"),
        ("- a\n- b\n", [], "mapping"),
        (b"\xff\xfe\x00garbage", [], "not UTF-8"),
        ("training: {epochs: 1}\n", ["training.batch_size=[1, 2]"], "training.batch_size"),
        ("training: {epochs: 1}\n", ["=3"], "not a key"),
        ("training: {epochs: 1}\n", ["training..epochs=3"], "not a key"),
        ("training: {epochs: 1}\n", ["task.type=summarise"], "'text2text'"),
    ],
)
def test_cli_bad_configs_exit_2_with_one_line(tmp_path, capsys, content, overrides, expected):
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["train", str(path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
