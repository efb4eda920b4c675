"""One registration per method and per family: every table is derived from the specs.

A method is one folder under `softprompt/tuners/` whose `spec.py` defines `SPEC`; a family
is one `FamilySpec` in `backbones/spec.py`. The method tables, the `method:` sections of
the run config, `softprompt compare`'s presets and the `model.family` choices all follow.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import textwrap
import typing

import pytest

from softprompt.backbones.base import BACKBONES
from softprompt.backbones.spec import FamilySpec, family_names, family_specs, register_family
from softprompt.config.run import _SECTIONS, MethodConfig, RunConfig
from softprompt.tuners.base import SAVED_TUNERS
from softprompt.tuners.spec import TUNER_SPECS, TunerSpec, register_tuner_spec, tuner_specs
from softprompt.tuners.tuner_set import (
    ADAPTER_ALIASES,
    TUNER_MODULES,
    TUNER_ORDER,
    register_tuners,
)
from softprompt.workflows.compare import METHODS


def _preset(*enabled: str, reparameterize: str = "none") -> set[str]:
    switches = {
        f"method.{name}.enabled={'true' if name in enabled else 'false'}"
        for name in ("prompt_tuning", "lora", "full", "prefix_tuning", "coop", "cocoop")
    }
    return switches | {f"method.prompt_tuning.reparameterize={reparameterize}"}


def test_method_tables_are_todays():
    assert TUNER_ORDER == (
        "prompt_tuning",
        "projection",
        "qformer_prompt",
        "lora",
        "full",
        "prefix_tuning",
        "coop",
        "cocoop",
        "linear_probe",
    )
    assert ADAPTER_ALIASES == {
        "prompt": "prompt",
        "prompt_tuning": "prompt",
        "lora": "lora",
        "full": "full",
        "prefix": "prefix",
        "prefix_tuning": "prefix",
        "coop": "coop",
        "cocoop": "cocoop",
        "linear_probe": "linear_probe",
    }
    sections = ["prompt_tuning", "lora", "full", "prefix_tuning", "coop", "cocoop"]
    assert list(MethodConfig.model_fields) == sections
    assert [k for k in _SECTIONS if k.startswith("method.")] == [f"method.{s}" for s in sections]
    assert RunConfig().method.enabled_methods() == ["prompt_tuning"]
    assert "softprompt.tuners.modules" in TUNER_MODULES


def test_compare_presets_are_todays():
    assert list(METHODS) == [
        "prompt", "lora", "prompt+lora", "full", "residual", "prefix", "coop", "cocoop",
    ]  # fmt: skip
    expected = {
        "prompt": _preset("prompt_tuning"),
        "lora": _preset("lora"),
        "prompt+lora": _preset("prompt_tuning", "lora"),
        "full": _preset("full"),
        "residual": _preset("prompt_tuning", reparameterize="residual"),
        "prefix": _preset("prefix_tuning"),
        "coop": _preset("coop"),
        "cocoop": _preset("cocoop"),
    }
    for name, overrides in METHODS.items():
        assert len(overrides) == len(expected[name]) and set(overrides) == expected[name], name


def test_every_spec_is_what_its_module_registers():
    register_tuners()
    saved = {name for spec in tuner_specs() for name in spec.saved}
    assert saved == {
        "prompt_tuning", "prompt_bank", "lora", "full", "prefix_tuning", "coop", "cocoop",
        "linear_probe",
    }  # fmt: skip
    assert saved == set(SAVED_TUNERS.names())
    assert {spec.name for spec in tuner_specs()} == set(TUNER_SPECS.names())


def test_family_table_is_todays_and_matches_the_classes():
    families = ("causal_lm", "seq2seq", "composed", "blip2", "instructblip", "clip")
    assert family_names() == families
    assert [f.name for f in family_specs() if f.vision] == list(families[2:])
    model_types = {t: f.name for f in family_specs() for t in f.model_types}
    assert model_types == {
        "blip-2": "blip2", "instructblip": "instructblip", "clip": "clip", "siglip": "clip",
    }  # fmt: skip
    field = RunConfig.model_fields["model"].annotation.model_fields["family"]
    choices, none = typing.get_args(field.annotation)
    assert typing.get_args(choices) == family_names() and none is type(None)
    for spec in family_specs():
        importlib.import_module(spec.module)
        cls = BACKBONES.get(spec.name)
        assert cls.family == spec.name
        assert cls.__module__ == spec.module
        if spec.model_types:
            assert cls.model_type in spec.model_types


def test_registering_a_name_twice_raises():
    lora = TUNER_SPECS.get("lora")
    with pytest.raises(ValueError, match="'lora' is already registered"):
        register_tuner_spec(dataclasses.replace(lora))
    taken = {"order": 10, "aliases": ("prompt",), "saved": ("prompt_bank",)}
    for key, value in taken.items():
        fields = {"name": "other", "order": 99, "module": "x", "adapter": "other", key: value}
        spec = TunerSpec(**fields)
        with pytest.raises(ValueError, match="is 'prompt_tuning''s"):
            register_tuner_spec(spec)
    assert "other" not in TUNER_SPECS
    with pytest.raises(ValueError, match="'causal_lm' is already registered"):
        register_family(FamilySpec("causal_lm", "softprompt.backbones.causal_lm"))
    with pytest.raises(ValueError, match="'blip-2' is already family 'blip2'"):
        register_family(FamilySpec("blip3", "x", model_types=("blip-2",)))
    assert "blip3" not in family_names()


# A method that is nothing but its folder: settings and spec in spec.py, the tuner (one
# learnable scalar acting on nothing) in tuner.py.
PLUGIN = {
    "__init__.py": '"""A test-only method: one learnable scalar."""\n',
    "spec.py": """
        from pydantic import BaseModel, ConfigDict, Field

        from softprompt.tuners.spec import ComparePreset, TunerSpec


        class ScalarBiasSettings(BaseModel):
            model_config = ConfigDict(extra="forbid")

            enabled: bool = Field(False, description="Train one scalar.")
            init: float = Field(0.0, ge=-1, le=1, description="Its starting value.")


        SPEC = TunerSpec(
            name="scalar_bias",
            order=90,
            module="softprompt.tuners.scalar_bias.tuner",
            settings=ScalarBiasSettings,
            adapter="bias",
            aliases=("scalar",),
            presets=(ComparePreset("prompt+bias", 90, ("prompt_tuning", "scalar_bias")),),
        )
        """,
    "tuner.py": """
        import torch
        from torch import nn

        from softprompt.tuners.base import TUNERS


        class ScalarBias:
            name, adapter, trainable, enabled = "scalar_bias", "bias", True, True

            def __init__(self, init, learning_rate):
                self.module = nn.ParameterList([nn.Parameter(torch.tensor(init))])
                self.learning_rate = learning_rate

            def modules(self):
                return {"value": self.module}

            def set_enabled(self, enabled):
                self.enabled = enabled

            def save(self, directory, context):
                torch.save(self.module.state_dict(), directory / "bias.pt")

            def load(self, directory):
                self.module.load_state_dict(torch.load(directory / "bias.pt"))


        @TUNERS.register("scalar_bias")
        def build(config, backbone):
            s = config.method.scalar_bias
            return ScalarBias(s.init, config.training.learning_rate) if s.enabled else None
        """,
}

CHECKS = """
import sys

import softprompt.tuners

softprompt.tuners.__path__.append(sys.argv[1])  # the folder is all there is of the method

from softprompt.backbones.loading import load_backbone
from softprompt.config.run import (
    _SECTIONS, ConfigError, MethodConfig, build_config, check_key, config_reference_markdown
)
from softprompt.tuners.tuner_set import ADAPTER_ALIASES, TUNER_MODULES, TUNER_ORDER, TunerSet
from softprompt.workflows.compare import METHODS, parse_methods

assert TUNER_ORDER[-1] == "scalar_bias" and TUNER_ORDER[0] == "prompt_tuning"
assert ADAPTER_ALIASES["scalar"] == ADAPTER_ALIASES["scalar_bias"] == "bias"
assert "softprompt.tuners.scalar_bias.tuner" in TUNER_MODULES
assert "scalar_bias" in MethodConfig.model_fields and "method.scalar_bias" in _SECTIONS
assert "`method.scalar_bias.init`" in config_reference_markdown()
assert check_key("method.scalar_bias.init") == "method.scalar_bias.init"

config = build_config({"method": {"scalar_bias": {"enabled": True, "init": 0.5}}})
assert config.method.scalar_bias.init == 0.5
assert config.method.enabled_methods() == ["prompt_tuning", "scalar_bias"]
try:
    build_config({"method": {"scalar_bias": {"init": 3}}})
    raise AssertionError("an out-of-range value passed")
except ConfigError as err:
    assert "method.scalar_bias.init" in str(err), err

tuners = TunerSet.from_config(config, load_backbone(sys.argv[2]))
assert [t.name for t in tuners.tuners] == ["prompt_tuning", "scalar_bias"]
assert [g["name"] for g in tuners.param_groups()] == ["prompt_tuning", "scalar_bias"]
tuners.set_enabled("scalar", False)
assert tuners.states() == {"prompt": True, "bias": False}

assert list(METHODS)[-1] == "prompt+bias" and parse_methods("prompt,prompt+bias")
assert "method.scalar_bias.enabled=true" in METHODS["prompt+bias"]
assert "method.prompt_tuning.enabled=true" in METHODS["prompt+bias"]
assert "method.scalar_bias.enabled=false" in METHODS["prompt"]
print("registered")
"""


def test_a_method_is_one_folder(tmp_path, tiny_models):
    folder = tmp_path / "plugins" / "scalar_bias"
    folder.mkdir(parents=True)
    for name, text in PLUGIN.items():
        (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")
    # Three files in one folder, and no file of the package touched: the checks run in a
    # fresh interpreter that only learns where the folder is.
    assert sorted(p.name for p in folder.iterdir()) == ["__init__.py", "spec.py", "tuner.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", CHECKS, str(folder.parent), str(tiny_models["llama"])]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("registered")
