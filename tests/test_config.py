"""Config loading: defaults, overrides, legacy names, and every bad-config message."""

from __future__ import annotations

import pytest
import yaml

from softprompt.config.run import (
    ConfigError,
    build_config,
    config_reference_markdown,
    load_config,
    save_config,
)


def test_defaults_and_round_trip(tmp_path):
    cfg = build_config({})
    assert cfg.model.name_or_path == "embedded:smollm2-135m"
    assert cfg.task.type == "text2text"
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_use_yaml_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  batch_size: 4\n")
    cfg = load_config(
        path,
        [
            "training.learning_rate=3e-2",
            "training.bf16=true",
            "training.max_steps=null",
            "method.prompt_tuning.init_method=text",
            "method.prompt_tuning.init_text=hello",
        ],
    )
    assert cfg.training.learning_rate == pytest.approx(0.03)
    assert cfg.training.bf16 is True and cfg.training.max_steps is None
    assert cfg.training.batch_size == 4
    assert cfg.method.prompt_tuning.init_method == "TEXT"


def test_seed_000_names_still_work():
    raw = yaml.safe_load(
        """
model:
  prompt_tuning_params:
    num_virtual_tokens: 12
    init_method: "TEXT"
    init_text: "Analyze this image carefully"
training:
  learning_rate_prompt_tuning: 3.0e-2
data:
  train_path: data/train
  val_test_path: data/val
"""
    )
    with pytest.warns(UserWarning, match="method.prompt_tuning.num_virtual_tokens"):
        cfg = build_config(raw)
    assert cfg.method.prompt_tuning.num_virtual_tokens == 12
    assert cfg.method.prompt_tuning.init_text == "Analyze this image carefully"
    assert cfg.training.learning_rate == pytest.approx(0.03)
    assert cfg.data.val_test_path == "data/val"


@pytest.mark.parametrize(
    "raw,expected",
    [
        ({"training": {"learnign_rate": 1}}, ["training.learnign_rate", "training.learning_rate"]),
        ({"trainig": {"epochs": 1}}, ["trainig", "training"]),
        ({"method": {"prompt_tuning": {"num_virtual_token": 3}}}, ["num_virtual_tokens"]),
        (
            {"method": {"prompt_tuning": {"init_method": "zeros"}}},
            ["init_method", "ZEROS", "VOCAB"],
        ),
        ({"method": {"prompt_tuning": {"init_method": "TEXT"}}}, ["init_text"]),
        ({"training": {"batch_size": 0}}, ["training.batch_size", "0"]),
        ({"training": {"learning_rate": "fast"}}, ["training.learning_rate", "fast"]),
        ({"task": {"type": "summarise"}}, ["task.type", "text2text", "vqa"]),
        ({"model": {"dtype": "fp8"}}, ["model.dtype", "bfloat16"]),
        ({"data": {"format": "xml"}}, ["data.format", "jsonl"]),
        ({"training": {"lr_scheduler": "exp"}}, ["lr_scheduler", "cosine"]),
    ],
)
def test_bad_configs_name_key_and_value(raw, expected):
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    for text in expected:
        assert text in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)
    with pytest.raises(ConfigError, match="key.sub=value"):
        build_config({}, ["training.epochs"])


def test_reference_lists_every_contract_key():
    table = config_reference_markdown()
    for key in (
        "model.name_or_path",
        "model.family",
        "method.prompt_tuning.enabled",
        "method.prompt_tuning.num_virtual_tokens",
        "method.prompt_tuning.init_method",
        "method.prompt_tuning.init_text",
        "data.train_path",
        "data.val_test_path",
        "data.format",
        "data.input_field",
        "data.target_field",
        "task.type",
        "training.output_dir",
        "training.epochs",
        "training.max_steps",
        "training.batch_size",
        "training.gradient_accumulation_steps",
        "training.learning_rate",
        "training.warmup_steps",
        "training.eval_steps",
        "training.save_steps",
        "training.early_stopping_patience",
        "training.metric_for_best_model",
        "training.bf16",
        "training.gradient_checkpointing",
        "training.seed",
    ):
        assert f"`{key}`" in table, key


def test_yaml_off_means_feature_cache_off(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {name_or_path: gpt2}\ndata: {train_path: x.jsonl, feature_cache: off}\n"
    )
    assert load_config(path).data.feature_cache == "off"
    assert load_config(path, ["data.feature_cache=off"]).data.feature_cache == "off"
