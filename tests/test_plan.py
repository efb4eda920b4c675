"""The inference plan: requests naming different prompts and tasks are answered in mixed
batches, each exactly as when answered alone (greedy tokens, option probabilities, fp32),
from several threads at once, without changing the model."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.config.run import ConfigError
from softprompt.data.records import TextExample, VisionExample
from softprompt.inference.execute import Request
from softprompt.inference.loaded import LoadedModel, plan_for
from softprompt.tasks.kinds import VisionTask
from softprompt.tuners.prompt_tuning.bank import PromptBank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner
from softprompt.tuners.tuner_set import TunerSet

pytestmark = pytest.mark.usefixtures("one_thread")


def bank_model(backbone, records: dict[str, dict], lengths: list[int]) -> LoadedModel:
    """A multi-task bank of random prompts (one per record, of the given lengths)."""
    torch.manual_seed(3)
    members = {
        name: PromptTuner.from_weight(torch.randn(n, backbone.hidden_size) * 0.5)
        for name, n in zip(records, lengths, strict=True)
    }
    tuners = TunerSet([PromptBank(members, records, kind="tasks")], backbone)
    return LoadedModel(backbone, tuners, plan_for(tuners, {}), torch.device("cpu"))


def assert_mixed_equals_alone(loaded: LoadedModel, requests: list[Request]) -> None:
    together = loaded.answer(requests, batch_size=4)
    for request, record in zip(requests, together, strict=True):
        alone = loaded.answer([request], batch_size=1)[0]
        assert record.keys() == alone.keys()
        assert record["prediction"] == alone["prediction"], (request, record, alone)
        if "probabilities" in alone:
            for name, p in alone["probabilities"].items():
                assert record["probabilities"][name] == pytest.approx(p, abs=1e-5)


TEXT_RECORDS = {
    "summarise": {"max_new_tokens": 5, "template": "Summarise: {input}"},
    "title": {"max_new_tokens": 3},
    "keywords": {"max_new_tokens": 4, "template": "Keywords of {input}"},
}


def text_requests(loaded: LoadedModel) -> list[Request]:
    words = ["cat", "dog red", "bird tree house", "red", "blue cat dog", "green tree", "sun"]
    names = list(TEXT_RECORDS)
    requests = []
    for i, text in enumerate(words):
        task = names[i % len(names)]
        example = TextExample(id=str(i), input=loaded.apply_template(text, task))
        requests.append(Request(example, task, max_new_tokens=(None, 2, 6)[i % 3]))
    return requests


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_text_requests_of_three_prompts_in_one_batch_equal_each_alone(tiny_models, kind):
    loaded = bank_model(load_backbone(str(tiny_models[kind])), TEXT_RECORDS, [2, 5, 3])
    requests = text_requests(loaded)
    assert_mixed_equals_alone(loaded, requests)
    records = loaded.answer(requests)
    assert [r["task"] for r in records] == [r.task for r in requests]
    labelled = replace(requests[0].example, target="a reference")
    assert "target" not in loaded.answer([Request(labelled, requests[0].task)])[0]
    assert [r["id"] for r in records] == [str(i) for i in range(len(requests))]


def vision_records() -> dict[str, dict]:
    classify = VisionTask("classify", "{instruction} Answer:", "What colour?", ["red", "blue"],
                          {"red": "red", "blue": "blue"})  # fmt: skip
    closed = VisionTask("vqa", "Question: {question} Answer:", answers=["yes", "no", "maybe"])
    caption = VisionTask("caption", "{instruction}", "A photo of", max_new_tokens=4)
    tasks = {"colour": classify, "closed": closed, "caption": caption}
    return {name: {"vision_task": task.to_record()} for name, task in tasks.items()}


def test_vision_requests_of_scored_and_generated_tasks_mix(tiny_vlms, colour_pngs):
    backbone = load_backbone(str(tiny_vlms["blip2-opt"]), vision=VisionSettings())
    loaded = bank_model(backbone, vision_records(), [3, 1, 4])
    images = [str(p) for paths in colour_pngs.values() for p in paths]
    tasks = ["colour", "closed", "caption", "colour", "caption", "closed"]
    requests = [
        Request(VisionExample(id=str(i), image_path=path, text="is it red?"), task)
        for i, (path, task) in enumerate(zip(images, tasks, strict=True))
    ]
    assert_mixed_equals_alone(loaded, requests)
    calls = []
    scorer = backbone.sequence_logprobs

    def counted(batch, prompt):
        calls.append(sorted(set(prompt.ids.tolist())))
        return scorer(batch, prompt)

    backbone.sequence_logprobs = counted
    records = loaded.answer(requests, batch_size=4)
    # Both scored tasks' four requests (2 + 3 options each) went through one forward pass.
    assert calls == [[0, 1]]
    assert set(records[0]["probabilities"]) == {"red", "blue"}
    assert set(records[1]["probabilities"]) == {"yes", "no", "maybe"}
    assert "probabilities" not in records[2]


def test_threads_answer_at_once_and_the_model_is_unchanged(tiny_models):
    loaded = bank_model(load_backbone(str(tiny_models["llama"])), TEXT_RECORDS, [2, 5, 3])
    requests = text_requests(loaded)
    expected = loaded.answer(requests)
    plan, states = loaded.plan, loaded.tuners.states()
    results: list = [None] * 4

    def work(slot: int) -> None:
        results[slot] = loaded.answer(requests[slot:] + requests[:slot])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for slot, got in enumerate(results):
        assert got == expected[slot:] + expected[:slot]
    assert loaded.plan is plan and loaded.tuners.states() == states


def test_a_request_naming_an_unknown_task_is_refused_by_name(tiny_models):
    loaded = bank_model(load_backbone(str(tiny_models["llama"])), TEXT_RECORDS, [2, 5, 3])
    with pytest.raises(ConfigError, match="no task 'nope'.*summarise, title, keywords"):
        loaded.answer([Request(TextExample(id="0", input="x"), "nope")])
    with pytest.raises(ConfigError, match="name one"):
        loaded.answer([Request(TextExample(id="0", input="x"))])


def test_select_task_is_a_default_over_the_plan(tiny_models):
    loaded = bank_model(load_backbone(str(tiny_models["llama"])), TEXT_RECORDS, [2, 5, 3])
    named = loaded.answer([Request(TextExample(id="0", input="red"), "title")])[0]
    loaded.select_task("title")
    default = loaded.answer([Request(TextExample(id="0", input="red"))])[0]
    assert default["prediction"] == named["prediction"]
    assert "task" not in default and named["task"] == "title"
