"""`softprompt serve` over real HTTP on 127.0.0.1: the official `openai` client gets what
`softprompt predict` writes, concurrent requests of many prompts each get their answer
alone, images arrive as data URIs, prompts come and go without a restart."""

from __future__ import annotations

import base64
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import get_json, post_json, serving, start_server, write_bank, write_prompt

from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.commands.cli import main
from softprompt.tasks.kinds import VisionTask

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATED = {"max_new_tokens": 6, "template": "Question: {input} Answer:"}
BANK_TASKS = {"title": {"max_new_tokens": 4}, "keywords": {"max_new_tokens": 5}}
TEXTS = ["the cat sat", "red blue green", "a dog", "house by the river", "sun"]


def text_prompts(root: Path, backbone) -> Path:
    """Three prompts (two lengths, one templated) and a bank of two tasks."""
    write_prompt(root / "qa", backbone, 4, 1, TEMPLATED)
    write_prompt(root / "team" / "short", backbone, 2, 2)
    write_prompt(root / "long", backbone, 6, 3, {"max_new_tokens": 7})
    write_bank(root / "bank", backbone, BANK_TASKS)
    return root


@pytest.fixture(scope="module", params=["llama", "t5"])
def text_server(request, tiny_models, tmp_path_factory):
    """A running server of `text_prompts` on a tiny causal LM and a tiny seq2seq LM."""
    backbone = load_backbone(str(tiny_models[request.param]))
    root = text_prompts(tmp_path_factory.mktemp(f"prompts-{request.param}"), backbone)
    server = start_server(root, max_batch_size=8, max_wait_ms=30)
    with serving(server) as url:
        yield server, url, root


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def cli_predict(prompt_dir: Path, texts: list[str], tmp_path: Path, task: str | None = None):
    """The records `softprompt predict --text ...` writes."""
    out = tmp_path / "predictions.jsonl"
    args = ["predict", "--prompt", str(prompt_dir), "--output", str(out), "--no-progress"]
    args += [a for t in texts for a in ("--text", t)] + (["--task", task] if task else [])
    assert main(args) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_models_lists_every_prompt_and_bank_task(text_server):
    server, url, _ = text_server
    status, body = get_json(url, "/v1/models")
    assert status == 200 and body["object"] == "list"
    cards = {c["id"]: c for c in body["data"]}
    assert set(cards) == {"qa", "team/short", "long", "bank/title", "bank/keywords"}
    assert cards["team/short"]["num_virtual_tokens"] == 2
    assert cards["qa"]["parent"] == server.backbone.name_or_path
    assert cards["bank/title"]["task_type"] == "text2text"
    assert [m.id for m in client(url).models.list()] == sorted(cards)


@pytest.mark.parametrize("name", ["qa", "bank/keywords"])
def test_openai_client_gets_what_predict_writes(text_server, name, tmp_path):
    _, url, root = text_server
    directory, task = (
        (root / "bank", "keywords") if name.startswith("bank") else (root / name, None)
    )
    expected = cli_predict(directory, TEXTS[:3], tmp_path, task)
    reply = client(url).completions.create(model=name, prompt=TEXTS[:3])
    assert [c.text for c in sorted(reply.choices, key=lambda c: c.index)] == [
        r["prediction"] for r in expected
    ]
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    status, records = post_json(
        url, "/v1/predict", {"model": name, "inputs": [{"text": t} for t in TEXTS[:3]]}
    )
    assert status == 200
    assert records == [{k: v for k, v in r.items() if k != "task"} for r in expected]


def test_streaming_assembles_to_the_same_text(text_server):
    _, url, _ = text_server
    api = client(url)
    for name in ("qa", "long"):
        whole = api.completions.create(model=name, prompt=TEXTS[3], max_tokens=6).choices[0]
        pieces = list(
            api.completions.create(model=name, prompt=TEXTS[3], max_tokens=6, stream=True)
        )
        assert "".join(p.choices[0].text for p in pieces) == whole.text
        assert pieces[-1].choices[0].finish_reason == whole.finish_reason
        chat = api.chat.completions.create(
            model=name, messages=[{"role": "user", "content": TEXTS[3]}], max_tokens=6, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chat) == whole.text


def test_stop_strings_and_budgets_end_each_row(text_server):
    _, url, _ = text_server
    api = client(url)
    full = api.completions.create(model="long", prompt=TEXTS[1], max_tokens=7).choices[0].text
    short = api.completions.create(model="long", prompt=TEXTS[1], max_tokens=2).choices[0]
    assert short.finish_reason == "length" and full.startswith(short.text)
    if len(full) > 2:
        stop = full[1:3]
        cut = api.completions.create(model="long", prompt=TEXTS[1], max_tokens=7, stop=[stop])
        assert cut.choices[0].text == full[: full.find(stop)].strip()
        assert cut.choices[0].finish_reason == "stop"


def test_a_seed_gives_the_same_sample(text_server):
    _, url, _ = text_server
    api = client(url)
    kwargs = {"model": "qa", "prompt": TEXTS[0], "max_tokens": 6, "temperature": 1.5}
    first = api.completions.create(seed=7, **kwargs).choices[0].text
    assert api.completions.create(seed=7, **kwargs).choices[0].text == first


def test_concurrent_requests_of_many_prompts_each_get_their_answer_alone(text_server):
    _, url, _ = text_server
    names = ["qa", "team/short", "long", "bank/title", "bank/keywords"]
    jobs = [(names[i % 5], f"{TEXTS[i % 5]} {i}", 2 + i % 4) for i in range(32)]
    api = client(url)

    def ask(job):
        name, text, tokens = job
        return api.completions.create(model=name, prompt=text, max_tokens=tokens).choices[0].text

    alone = [ask(job) for job in jobs]  # one at a time: every batch holds one request
    before = httpx.get(f"{url}/metrics").text
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, jobs))
    assert together == alone
    after = httpx.get(f"{url}/metrics").text
    rows = _metric(after, "softprompt_batch_size_sum") - _metric(
        before, "softprompt_batch_size_sum"
    )
    assert rows == 32
    batches = _metric(after, "softprompt_batch_size_count") - _metric(
        before, "softprompt_batch_size_count"
    )
    assert batches < 32, "some requests shared a batch"


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_metrics_count_requests_latency_and_prompt_cache(text_server):
    server, url, _ = text_server
    for _ in range(2):  # the second request starts from the prompt's cached keys and values
        client(url).completions.create(model="qa", prompt="x", max_tokens=2)
    post_json(url, "/v1/completions", {"model": "nope", "prompt": "x"})
    text = httpx.get(f"{url}/metrics").text
    assert _metric(text, 'softprompt_requests_total{prompt="qa",status="200"}') >= 2
    assert _metric(text, 'softprompt_requests_total{prompt="nope",status="404"}') >= 1
    assert _metric(text, 'softprompt_request_latency_seconds_count{endpoint="completions"}') >= 2
    assert (
        _metric(text, 'softprompt_time_to_first_token_seconds_count{endpoint="completions"}') >= 2
    )
    assert "softprompt_queue_depth " in text
    hits = _metric(text, "softprompt_prompt_cache_hits_total")
    misses = _metric(text, "softprompt_prompt_cache_misses_total")
    if (
        server.backbone.prompt_cache is None
    ):  # seq2seq: the encoder reads the prompt and text together
        assert hits == misses == 0
    else:
        assert hits >= 1 and misses >= 1
    status, health = get_json(url, "/health")
    assert status == 200 and health["status"] == "ok" and health["prompts"] == 5


def test_prompts_come_and_go_without_a_restart(tiny_models, tmp_path):
    backbone = load_backbone(str(tiny_models["gpt2"]))
    root = tmp_path / "prompts"
    write_prompt(root / "first", backbone, 3, 1)
    server = start_server(root, reload_interval=0.5)
    with serving(server) as url:
        write_prompt(tmp_path / "staging", backbone, 3, 2)
        shutil.copytree(tmp_path / "staging", root / "added")
        assert _appears(url, "added", True), "a new prompt is served within 5 s"
        assert post_json(url, "/v1/completions", {"model": "added", "prompt": "hi"})[0] == 200
        shutil.rmtree(root / "first")
        assert _appears(url, "first", False), "a removed prompt vanishes within 5 s"
        assert post_json(url, "/v1/completions", {"model": "first", "prompt": "hi"})[0] == 404
        write_prompt(root / "now", backbone, 3, 3)
        status, view = post_json(url, "/v1/prompts/reload", {})
        assert status == 200 and "now" in {p["id"] for p in view["loaded"]}


def _appears(url: str, name: str, present: bool) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ids = {c["id"] for c in get_json(url, "/v1/models")[1]["data"]}
        if (name in ids) == present:
            return True
        time.sleep(0.1)
    return False


def test_prompts_that_cannot_share_the_model_are_refused_and_the_rest_served(tiny_models, tmp_path):
    llama = load_backbone(str(tiny_models["llama"]))
    gpt2 = load_backbone(str(tiny_models["gpt2"]))
    root = tmp_path / "prompts"
    write_prompt(root / "ours", llama, 3, 1)
    write_prompt(root / "other", gpt2, 3, 1)
    (root / "broken").mkdir()
    (root / "broken" / "softprompt.json").write_text("{not json")
    server = start_server(root, model=str(tiny_models["llama"]))
    assert set(server.pool.prompts) == {"ours"}
    assert set(server.pool.refused) == {"other", "broken"}
    assert "trained on" in server.pool.refused["other"]
    with serving(server) as url:
        status, view = get_json(url, "/v1/prompts")
        assert status == 200 and set(view["refused"]) == {"other", "broken"}
        assert post_json(url, "/v1/completions", {"model": "ours", "prompt": "hi"})[0] == 200


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def vision_prompt(root: Path, backbone, task: VisionTask, vision: dict) -> Path:
    record = {"vision_task": task.to_record(), "vision": vision, "max_new_tokens": 4}
    extras = backbone.state_for_save()
    directory = write_prompt(root / task.type, backbone, 3, 5, record)
    if extras:  # a composed model's projection rides with its prompt, as training saves it
        from serve_helpers import context, random_prompt

        from softprompt.tuners.prompt_tuning.tuner import PromptTuner

        tuner = PromptTuner.from_weight(random_prompt(backbone, 3, 5))
        tuner.save(directory, {**context(backbone, record), "extra": extras})
    return directory


@pytest.mark.parametrize("kind", ["blip2-opt", "composed"])
def test_an_image_prompt_answers_a_data_uri(
    kind, tiny_vlms, tiny_clip, tiny_models, colour_pngs, tmp_path
):
    if kind == "composed":
        vision = {"vision_encoder": str(tiny_clip), "num_image_tokens": 4}
        backbone = load_backbone(str(tiny_models["gpt2"]), vision=VisionSettings(**vision))
    else:
        vision = {}
        backbone = load_backbone(str(tiny_vlms[kind]), vision=VisionSettings())
    root = tmp_path / "prompts"
    vision_prompt(
        root,
        backbone,
        VisionTask("caption", "{instruction}", "A photo of", max_new_tokens=4),
        vision,
    )
    classes = VisionTask("classify", "{instruction} Answer:", "What colour?", ["red", "blue"],
                         {"red": "red", "blue": "blue"})  # fmt: skip
    vision_prompt(root, backbone, classes, vision)
    image = colour_pngs["red"][0]
    expected = cli_predict_image(root / "caption", image, tmp_path)
    server = start_server(root)
    with serving(server) as url:
        content = [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": png_uri(image)}},
        ]
        reply = client(url).chat.completions.create(
            model="caption", messages=[{"role": "user", "content": content}]
        )
        assert reply.choices[0].message.content == expected["prediction"]
        body = {
            "model": "classify",
            "inputs": [{"image": base64.b64encode(image.read_bytes()).decode()}],
        }
        status, records = post_json(url, "/v1/predict", body)
        assert status == 200 and set(records[0]["probabilities"]) == {"red", "blue"}
        assert records[0]["prediction"] in {"red", "blue"}
        assert records[0]["image"].startswith("sha256:")  # not the server's own path


def cli_predict_image(prompt_dir: Path, image: Path, tmp_path: Path) -> dict:
    out = tmp_path / "image.jsonl"
    args = [
        "predict",
        "--prompt",
        str(prompt_dir),
        "--image",
        str(image),
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    return json.loads(out.read_text().splitlines()[0])
