"""CoOp's class prompts: an untrained context initialised from "a photo of a" is exactly
zero-shot CLIP with the template it spells, at every class-token position, shared or one
per class; SigLIP too. Trained, the context alone moves."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import train_tokenizer, wordpiece_tokenizer
from torch.testing import assert_close
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from softprompt.backbones.clip_text import class_logits
from softprompt.tuners.class_prompts import ClassPromptLearner

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["red cat", "dog", "blue_bird"]
# One token a word in the tiny vocabulary, as "a photo of a" is in CLIP's: the middle
# position then splits the context between whole words, as the template does.
CONTEXT = "a house of a"
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 32}  # fmt: skip
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip


@pytest.fixture(scope="module")
def clip():
    """A tiny CLIP whose tokenizer, like CLIP's, keeps spaces out of its tokens."""
    tokenizer = wordpiece_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("[CLS]", "[SEP]", "[PAD]")}
    text = {**TEXT, "vocab_size": len(tokenizer), "bos_token_id": ids["[CLS]"],
            "eos_token_id": ids["[SEP]"], "pad_token_id": ids["[PAD]"]}  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24))
    return model.eval().requires_grad_(False), tokenizer


@pytest.fixture(scope="module")
def siglip():
    tokenizer = train_tokenizer("t5")  # appends </s>, as SigLIP's tokenizer does
    torch.manual_seed(0)
    text = {**TEXT, "vocab_size": len(tokenizer), "projection_size": 32}
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=VISION))
    return model.eval().requires_grad_(False), tokenizer


def zero_shot(model, tokenizer, template: str, **padding) -> torch.Tensor:
    texts = [template.format(name.replace("_", " ")) for name in CLASSES]
    ids = tokenizer(texts, return_tensors="pt", **(padding or {"padding": True})).input_ids
    out = model.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("class_specific", [False, True], ids=["shared", "per-class"])
@pytest.mark.parametrize(
    "position,template",
    [("end", "a house of a {}."), ("middle", "a house {} of a."), ("front", "{} a house of a.")],
)
def test_untrained_coop_is_zero_shot_clip(clip, position, template, class_specific):
    model, tokenizer = clip
    learner = ClassPromptLearner(model, tokenizer, CLASSES, ctx_init=CONTEXT,
                                 class_specific=class_specific, position=position)  # fmt: skip
    assert learner.n_ctx == 4 and learner.ctx.dim() == (3 if class_specific else 2)
    with torch.no_grad():
        ours, theirs = learner.text_features(model), zero_shot(model, tokenizer, template)
    assert_close(ours, theirs)
    images = torch.randn(5, 24)
    assert_close(class_logits(model, images, ours), class_logits(model, images, theirs))


def test_untrained_coop_is_zero_shot_siglip(siglip):
    model, tokenizer = siglip
    learner = ClassPromptLearner(model, tokenizer, CLASSES, ctx_init="a photo of a", pad_to=32)
    with torch.no_grad():
        ours = learner.text_features(model)
        theirs = zero_shot(model, tokenizer, "a photo of a {}.", padding="max_length",
                           max_length=32)  # fmt: skip
    assert_close(ours, theirs)
    images = torch.randn(2, 32)
    logits = class_logits(model, images, ours)
    assert_close(logits, class_logits(model, images, theirs))


def test_a_zero_shift_changes_nothing_and_training_moves_only_the_context(clip):
    model, tokenizer = clip
    learner = ClassPromptLearner(model, tokenizer, CLASSES, n_ctx=6)
    assert learner.n_ctx == 6 and learner.ctx.std() < 0.05  # CoOp's N(0, 0.02) start
    with torch.no_grad():
        assert_close(learner.text_features(model, torch.zeros(32)), learner.text_features(model))
    images, labels = torch.randn(6, 24), torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(
            class_logits(model, images, learner.text_features(model)), labels
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    assert all(p.grad is None for p in model.parameters())


def test_an_unknown_position_is_refused(clip):
    with pytest.raises(ValueError, match="class_token_position"):
        ClassPromptLearner(*clip, CLASSES, position="last")
