"""`softprompt serve --ray` on a local Ray cluster bound to 127.0.0.1: the CLI deploys two
replicas of a tiny Llama; the official `openai` client gets what `softprompt predict`
writes; requests follow their prompt to the replica that holds it; with one prompt per
replica, three prompts still answer (least recently used dropped and read again); a
replica killed under load loses no request (each is answered, retried, or a 503).

One cluster and one deployment serve the whole module (starting them is most of its
time). Every request has a timeout and every wait a deadline; the CLI process, Serve and
the cluster are stopped at the end, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from pydantic import ValidationError
from serve_helpers import free_port, write_bank, write_prompt

from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.serving.errors import ApiError
from softprompt.serving.ray_cluster import LOOPBACK_ENV, RaySettings
from softprompt.serving.resident import PromptMissing, ResidentPrompts
from softprompt.serving.schemas import CompletionRequest
from softprompt.serving.server import PromptServer, ServeOptions

os.environ[LOOPBACK_ENV] = "0"  # the cluster binds 127.0.0.1 only: set before Ray's import
with warnings.catch_warnings():  # Ray 2.60 declares pydantic fields the deprecated way
    warnings.simplefilter("ignore", DeprecationWarning)
    import ray
    from ray import serve
    from ray.exceptions import ActorDiedError

    from softprompt.serving.ray_app import (
        ATTEMPTS_HEADER,
        REPLICA_HEADER,
        RESIDENT_HEADER,
        RayBackend,
        Reply,
        app_builder,
    )

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the cat sat", "red blue green", "a dog", "house by the river"]
PROMPTS = ("qa", "long", "team/short")
STARTUP_S = 240  # the CLI's deployment: two replicas load the model on a busy machine


def write_prompts(root: Path, backbone) -> Path:
    """Three prompts (one templated, two lengths, one nested) and a bank of one task."""
    write_prompt(root / "qa", backbone, 4, 1, {"max_new_tokens": 6, "template": "Q: {input} A:"})
    write_prompt(root / "long", backbone, 6, 3, {"max_new_tokens": 8})
    write_prompt(root / "team" / "short", backbone, 2, 2)
    write_bank(root / "bank", backbone, {"title": {"max_new_tokens": 4}})
    return root


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster on 127.0.0.1 (4 logical CPUs on this 2-core machine: two
    replicas of one CPU each, the rest for Serve's own actors)."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def served(cluster, tiny_models, tmp_path_factory):
    """`softprompt serve --ray` joined to the cluster: 2 replicas, 1 prompt each."""
    backbone = load_backbone(str(tiny_models["llama"]))
    root = write_prompts(tmp_path_factory.mktemp("ray-prompts"), backbone)
    port = free_port()
    log = tmp_path_factory.mktemp("ray-cli") / "serve.log"
    command = [sys.executable, "-m", "softprompt", "serve", "--ray", "--ray-address", cluster,
               "--prompts-dir", str(root), "--port", str(port), "--replicas", "2",
               "--max-prompts-per-replica", "1", "--max-batch-size", "8", "--max-wait-ms", "5"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, process, log)
        yield SimpleNamespace(url=url, root=root, log=log)
    finally:
        _stop(process)


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    """Until the CLI has said it serves (after every replica is up) and /health answers."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"softprompt serve --ray exited {process.returncode}:\n{_tail(log)}")
        if "INFO - serving " in log.read_text(errors="replace"):
            if httpx.get(f"{url}/health", timeout=30).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"softprompt serve --ray did not answer in {STARTUP_S} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


def predicted(root: Path, name: str, texts: list[str], tmp_path: Path) -> list[str]:
    """What `softprompt predict --text ...` writes for the prompt `name`."""
    out = tmp_path / f"{name.replace('/', '_')}.jsonl"
    args = ["predict", "--prompt", str(root / name), "--output", str(out), "--no-progress"]
    assert main(args + [a for t in texts for a in ("--text", t)]) == 0
    return [json.loads(line)["prediction"] for line in out.read_text().splitlines()]


def complete(url: str, name: str, texts: list[str], **kwargs):
    """(texts in order, response headers) of one completion request."""
    raw = client(url).completions.with_raw_response.create(model=name, prompt=texts, **kwargs)
    reply = raw.parse()
    return [c.text for c in sorted(reply.choices, key=lambda c: c.index)], raw.headers


def test_the_cli_serves_the_directory_on_the_cluster(served):
    health = httpx.get(f"{served.url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["prompts"] == 4
    ids = [m.id for m in client(served.url).models.list()]
    assert ids == ["bank/title", "long", "qa", "team/short"]
    listed = httpx.get(f"{served.url}/v1/prompts", timeout=30).json()
    assert listed["refused"] == {}
    assert {c["id"]: c["num_virtual_tokens"] for c in listed["loaded"]}["long"] == 6
    assert "serving 4 prompts (0 refused) from 2 replicas" in served.log.read_text()


def test_answers_equal_predict_and_follow_their_prompt(served, tmp_path):
    first = {}
    for name in ("qa", "long"):
        texts, headers = complete(served.url, name, TEXTS[:2])
        assert texts == predicted(served.root, name, TEXTS[:2], tmp_path)
        first[name] = headers[REPLICA_HEADER]
        time.sleep(0.5)  # Ray's routers learn which replica holds it (pushed every 0.1 s)
    for name in ("qa", "long"):
        texts, headers = complete(served.url, name, TEXTS[2:])
        assert texts == predicted(served.root, name, TEXTS[2:], tmp_path)
        assert headers[REPLICA_HEADER] == first[name], "a held prompt moved replica"
        assert headers[RESIDENT_HEADER] == "true" and headers[ATTEMPTS_HEADER] == "1"
    assert first["qa"] != first["long"], "two prompts, one each: the replicas share them"


def test_streams_chat_predict_and_bank_tasks_answer_as_alone(served, tmp_path):
    expected = predicted(served.root, "long", TEXTS[:1], tmp_path)[0]
    api = client(served.url)
    stream = api.completions.create(model="long", prompt=TEXTS[0], stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == expected
    message = [{"role": "user", "content": TEXTS[0]}]
    chat = api.chat.completions.create(model="long", messages=message)
    assert chat.choices[0].message.content == expected
    records = httpx.post(f"{served.url}/v1/predict", timeout=60,
                         json={"model": "long", "inputs": [{"text": TEXTS[0]}]}).json()  # fmt: skip
    assert [r["prediction"] for r in records] == [expected]
    texts, _ = complete(served.url, "bank/title", TEXTS[:1])
    assert texts[0] == complete(served.url, "bank/title", TEXTS[:1])[0][0]


def test_errors_keep_the_api_shape(served):
    missing = httpx.post(f"{served.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = httpx.post(f"{served.url}/v1/completions", json={"model": "qa", "prompt": "x", "n": 3})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_field"
    outside = httpx.post(f"{served.url}/v1/completions", json={"model": "../qa", "prompt": "x"})
    assert outside.status_code == 404


def test_three_prompts_on_two_replicas_of_one_prompt_each(served, tmp_path):
    expected = {name: predicted(served.root, name, TEXTS[:1], tmp_path)[0] for name in PROMPTS}
    reads = 0
    for name in PROMPTS * 3:  # each round needs three prompts on two single-prompt replicas
        texts, headers = complete(served.url, name, TEXTS[:1])
        assert texts[0] == expected[name], name
        reads += headers[RESIDENT_HEADER] == "false"
    assert reads > len(PROMPTS), "no prompt was dropped and read again"


def test_a_killed_replica_loses_no_accepted_request(served, tmp_path):
    # Most for the victim's prompt, so that it has requests in flight when it dies.
    jobs = [("qa", text) for text in TEXTS] * 4 + [("long", text) for text in TEXTS] * 2
    expected = {
        (name, t): p
        for name in ("qa", "long")
        for t, p in zip(TEXTS, predicted(served.root, name, TEXTS, tmp_path), strict=True)
    }
    # A round whose kill lands between requests proves nothing: up to 3 rounds (the
    # deployment replaces each killed replica), until one kill hits requests in flight.
    for _ in range(3):
        results = _kill_a_replica_under_load(served.url, jobs)
        for (name, text), (status, body, _) in zip(jobs, results, strict=True):
            assert status in (200, 503), (status, body)
            if status == 200:
                assert body["choices"][0]["text"] == expected[(name, text)]
            else:
                assert set(body["error"]) == {"message", "type", "code"}
                assert body["error"]["code"] in ("replica_unavailable", "replica_timeout")
        if any(status == 503 or attempts > 1 for status, _, attempts in results):
            return
    pytest.fail("in 3 rounds no kill hit a request in flight")


def _kill_a_replica_under_load(url: str, jobs: list[tuple[str, str]]) -> list:
    victim = complete(url, "qa", TEXTS[:1])[1][REPLICA_HEADER]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(_ask, url, name, text) for name, text in jobs]
        _wait_for_in_flight(url, 8)
        ray.kill(ray.get_actor(victim, namespace="serve"))
        return [f.result(timeout=150) for f in futures]


def _ask(url: str, name: str, text: str) -> tuple[int, dict, int]:
    response = httpx.post(
        f"{url}/v1/completions",
        json={"model": name, "prompt": text},
        timeout=120,
    )
    return response.status_code, response.json(), int(response.headers.get(ATTEMPTS_HEADER, 0))


def _wait_for_in_flight(url: str, count: int, within: float = 20.0) -> None:
    """Until the ingress has `count` requests out to replicas (its /health queue)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health", timeout=10).json()["queue"] >= count:
            return
        time.sleep(0.01)
    pytest.fail(f"fewer than {count} requests were ever in flight")


def test_the_serve_run_builder_checks_its_arguments(tmp_path):
    app = app_builder({"prompts_dir": str(tmp_path), "replicas": "3", "retries": "1"})
    assert isinstance(app, serve.Application)
    with pytest.raises(ValidationError, match="replicas"):
        app_builder({"prompts_dir": str(tmp_path), "replicas": "0"})
    with pytest.raises(ValidationError, match="replica_count"):
        app_builder({"prompts_dir": str(tmp_path), "replica_count": "2"})


def test_the_cli_refuses_before_starting_a_cluster(tmp_path, capsys):
    prompts = str(tmp_path)
    assert main(["serve", "--ray", "--prompts-dir", prompts, "--host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err
    assert main(["serve", "--ray", "--prompts-dir", prompts, "--max-queue", "0"]) == 2
    assert "--max-queue" in capsys.readouterr().err


def test_a_replica_reads_a_prompt_when_named_and_again_when_its_files_change(tiny_models, tmp_path):
    backbone = load_backbone(str(tiny_models["llama"]))
    root = write_prompts(tmp_path / "prompts", backbone)
    options = ServeOptions(
        prompts_dir=str(root), model=str(tiny_models["llama"]), reload_interval=0.01
    )
    resident = ResidentPrompts(PromptServer.load(options, read_prompts=False), keep=1)
    assert resident.knows("bank/title") and not resident.knows("../qa")
    with pytest.raises(PromptMissing):
        resident.read("qa/extra")  # "qa" is one prompt, not a bank of tasks
    held = resident.read("qa")
    assert held.prompt.virtual_tokens == 4 and resident.holds("qa")
    write_prompt(root / "qa", backbone, 5, 9)  # retrained in place
    time.sleep(0.05)
    assert resident.refresh(held).virtual_tokens == 5
    shutil.rmtree(root / "qa")
    time.sleep(0.05)
    with pytest.raises(PromptMissing):
        resident.refresh(held)
    assert [c["id"] for c in resident.listing()["loaded"]] == ["bank/title", "long", "team/short"]
    del held
    assert not resident.holds("qa")  # dropped by the multiplexer: freed with its last user
    resident.server.spool.close()


class _Dying:
    """A handle to replicas that are all killed: every call fails as theirs do."""

    def __init__(self, events_before_death: int = 0) -> None:
        self.events = events_before_death
        self.calls = 0

    def options(self, **_):
        return self

    @property
    def answer(self):
        return self

    @property
    def stream(self):
        return self

    def remote(self, *_):
        self.calls += 1
        return self._stream() if self.events else self._fail()

    async def _fail(self):
        raise ActorDiedError()

    async def _stream(self):
        yield Reply("replica-a")
        for index in range(self.events):
            yield f"data: {index}\n\n"
        raise ActorDiedError()


def test_requests_whose_replicas_all_stop_get_a_503_after_the_retries(tmp_path):
    settings = RaySettings(prompts_dir=str(tmp_path), retries=2)
    dying = _Dying()
    body = CompletionRequest(model="qa", prompt="x")
    with pytest.raises(ApiError) as refused:
        asyncio.run(RayBackend(dying, settings).answer("completions", body))
    assert (refused.value.status, refused.value.code) == (503, "replica_unavailable")
    assert refused.value.headers == {"Retry-After": "1"} and dying.calls == 3


def test_a_stream_whose_replica_stops_ends_with_an_error_event(tmp_path):
    backend = RayBackend(_Dying(events_before_death=2), RaySettings(prompts_dir=str(tmp_path)))
    body = CompletionRequest(model="qa", prompt="x", stream=True)

    async def collect():
        answered = await backend.answer("completions", body)
        return answered.headers, [event async for event in answered.events]

    headers, events = asyncio.run(collect())
    assert headers[REPLICA_HEADER] == "replica-a" and events[:2] == ["data: 0\n\n", "data: 1\n\n"]
    assert json.loads(events[2][len("data: ") :])["error"]["code"] == "replica_lost"
    assert events[3] == "data: [DONE]\n\n"
