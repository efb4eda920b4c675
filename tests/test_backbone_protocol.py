"""Every backbone family and every tuner has every member of its capability Protocols.

Callers use those members directly: the AST check below fails on a getattr/hasattr that
probes a backbone or a tuner for a member, anywhere in `src/`.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import torch

from softprompt.backbones.base import (
    BACKBONES,
    Backbone,
    FrozenModel,
    PeftHost,
    TextBackbone,
    TrainableState,
    VisionLanguageBackbone,
)
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.spec import family_specs
from softprompt.backbones.vision_base import VisionSettings
from softprompt.tuners.base import Tuner
from softprompt.tuners.full.tuner import FullTuner, language_model
from softprompt.tuners.lora.config import LoraSettings
from softprompt.tuners.lora.tuner import LoraTuner
from softprompt.tuners.modules import BackboneModuleTuner
from softprompt.tuners.prefix_tuning.config import PrefixTuningSettings
from softprompt.tuners.prefix_tuning.tuner import PrefixTuner
from softprompt.tuners.prompt_tuning.bank import PromptBank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner

SRC = Path(__file__).resolve().parent.parent / "src"
CAPABILITIES = (FrozenModel, PeftHost, TrainableState, Backbone)
# (family, tiny checkpoint): every registered family, each text LM kind at least once.
CASES = (
    ("causal_lm", "gpt2"),
    ("causal_lm", "llama"),
    ("seq2seq", "t5"),
    ("composed", "gpt2"),
    ("blip2", "blip2-opt"),
    ("instructblip", "instructblip-t5"),
    ("clip", "clip"),
    ("clip", "siglip"),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load(family: str, kind: str, tiny_models, tiny_vlms, tiny_clip, tiny_contrastive=None):
    if family == "clip":
        return load_backbone(str(tiny_contrastive[kind]), vision=VisionSettings())
    if family in ("causal_lm", "seq2seq"):
        return load_backbone(str(tiny_models[kind]), family)
    if family == "composed":
        vision = VisionSettings(
            vision_encoder=str(tiny_clip), language_model=str(tiny_models[kind])
        )
        return load_backbone(str(tiny_models[kind]), family, vision=vision)
    return load_backbone(str(tiny_vlms[kind]), family, vision=VisionSettings())


def test_the_cases_cover_every_registered_family():
    for spec in family_specs():
        importlib.import_module(spec.module)
    assert {family for family, _ in CASES} == set(BACKBONES.names())


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_family_has_every_capability(
    family, kind, tiny_models, tiny_vlms, tiny_clip, tiny_contrastive
):
    backbone = load(family, kind, tiny_models, tiny_vlms, tiny_clip, tiny_contrastive)
    assert backbone.family == family
    for protocol in CAPABILITIES:
        assert isinstance(backbone, protocol), protocol.__name__
    lm = backbone.lm
    assert isinstance(lm, TextBackbone)
    if family == "clip":  # no language model: it is its own text side, with no state
        assert lm is backbone and backbone.model.config.model_type == kind
        assert backbone.trainable_modules() == {} and backbone.state_for_save() == {}
        assert backbone.prompt_cache is None
    elif family in ("causal_lm", "seq2seq"):
        assert lm is backbone
        assert not isinstance(backbone, VisionLanguageBackbone)
        assert backbone.trainable_modules() == {} and backbone.state_for_save() == {}
        backbone.load_saved_state({})
    else:
        assert isinstance(backbone, VisionLanguageBackbone)
        assert not isinstance(backbone, TextBackbone)
    expected = "CAUSAL_LM" if lm.labels_in_input else "SEQ_2_SEQ_LM"
    assert backbone.peft_task_type() == expected
    assert isinstance(backbone.peft_model(), torch.nn.Module)
    assert backbone.peft_base_name() and backbone.lm_model_type()
    assert backbone.describe()["family"] == family
    assert backbone.word_embeddings().shape[1] == backbone.hidden_size
    # Whatever a backbone saves, it loads back.
    backbone.load_saved_state(backbone.state_for_save())


def test_text_backbone_refuses_state_it_has_no_place_for(tiny_models):
    backbone = load_backbone(str(tiny_models["gpt2"]), "causal_lm")
    with pytest.raises(ValueError, match="projection.weight"):
        backbone.load_saved_state({"projection.weight": torch.zeros(2, 2)})


def test_every_tuner_has_every_member(tiny_models):
    backbone = load_backbone(str(tiny_models["gpt2"]), "causal_lm")
    weight = backbone.word_embeddings()[:3].detach().clone()
    prompt = PromptTuner.from_weight(weight)
    lora = LoraTuner.create(LoraSettings(enabled=True, r=2), backbone)
    prefix = PrefixTuner.create(
        PrefixTuningSettings(enabled=True, num_virtual_tokens=2), backbone, 1e-3, seed=0
    )
    full = FullTuner(language_model(backbone), 1e-5)
    module = BackboneModuleTuner("projection", torch.nn.Linear(2, 2), 1e-3)
    bank = PromptBank({"a": prompt, "b": PromptTuner.from_weight(weight)})
    methods = {t.name: t.saved_method for t in (prompt, lora, prefix, full, module, bank)}
    for tuner in (prompt, lora, prefix, full, module, bank):
        assert isinstance(tuner, Tuner), type(tuner).__name__
    assert methods == {
        "prompt_tuning": "prompt_bank",  # the bank, listed last, saves as one
        "lora": "lora",
        "prefix_tuning": "prefix_tuning",
        "full": "full",
        "projection": "projection",
    }
    assert prompt.saved_method == "prompt_tuning"


# ----------------------------------------------------------------------------- AST check

# The object a getattr/hasattr probes is a backbone or a tuner when the last name of the
# expression says so (`backbone`, `self.backbone`, `lm`, `tuner`, `tuners`, `bank`,
# `prompt`); `backbone.model.config` is a Hugging Face config and may be probed.
PROBED = re.compile(r"backbone|tuner|bank|^(lm|prompt|member)$", re.IGNORECASE)


def _probed_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def probes(source: str) -> list[tuple[int, str]]:
    """(line, call) of every getattr/hasattr whose first argument is a backbone or tuner."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("getattr", "hasattr") or not node.args:
            continue
        name = _probed_name(node.args[0])
        if name is not None and PROBED.search(name):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_probe_checker_sees_probes():
    assert probes('x = getattr(backbone, "describe", None)') == [
        (1, "getattr(backbone, 'describe', None)")
    ]
    assert len(probes('hasattr(self.backbone, "lm")\ngetattr(tuner, "saved_method")')) == 2
    assert len(probes('getattr(lm, "labels_in_input")\ngetattr(prompt, "members", None)')) == 2
    assert probes('getattr(backbone.model.config, "use_cache", None)') == []
    assert probes('getattr(torch, "accelerator", None)\ngetattr(self, name)') == []


def test_no_member_probing_of_backbones_or_tuners():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for line, call in probes(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(SRC)}:{line}: {call}")
    assert not found, "probe Protocol members directly instead:\n" + "\n".join(found)
