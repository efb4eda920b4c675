"""Every error answer of `softprompt serve` (OpenAI's JSON shape), a bad request beside good
ones in a batch, what the server refuses to load or start with, and SIGTERM draining."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from PIL import Image
from serve_helpers import (
    context,
    free_port,
    post_json,
    random_prompt,
    serving,
    start_server,
    write_bank,
    write_prompt,
)

from softprompt.artifacts.bundle import write_bundle
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.commands.cli import main
from softprompt.data.records import TextExample
from softprompt.errors import UserError
from softprompt.serving.engine import Answer, Job
from softprompt.serving.server import ServeOptions
from softprompt.tasks.kinds import VisionTask
from softprompt.tuners.prompt_tuning.bank import PromptBank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_backbone(str(tiny_models["llama"]))


@pytest.fixture(scope="module")
def prompts_root(llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    write_prompt(root / "text", llama, 3, 1)
    return root


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_request_errors_are_openai_shaped(prompts_root):
    server = start_server(prompts_root, max_body_mb=0.01)
    with serving(server) as url:
        post = lambda body, **kw: httpx.post(f"{url}/v1/completions", json=body, timeout=30, **kw)  # noqa: E731
        assert_error(post({"model": "nope", "prompt": "x"}), 404, "model_not_found")
        raw = httpx.post(
            f"{url}/v1/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_error(raw, 400, "invalid_json")
        for bad in ({"model": "text"}, {"model": "text", "prompt": "x", "temperature": 9},
                    {"model": "text", "prompt": "x", "max_tokens": 0}, {"model": "text", "prompt": []}):  # fmt: skip
            assert_error(post(bad), 422, "invalid_field")
        assert (
            "temperature"
            in assert_error(post({"model": "text", "prompt": "x", "temperature": 9}), 422)[
                "message"
            ]
        )
        assert_error(post({"model": "text", "prompt": "x" * 20_000}), 413, "body_too_large")
        chunked = httpx.post(
            f"{url}/v1/completions",
            content=iter([b'{"model": "text", "prompt": "', b"x" * 20_000, b'"}']),
        )
        assert_error(chunked, 413, "body_too_large")
        assert post({"model": "text", "prompt": "fine"}).status_code == 200


def png_bytes(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_errors(tiny_vlms, llama, tmp_path):
    backbone = load_backbone(str(tiny_vlms["blip2-opt"]), vision=VisionSettings())
    root = tmp_path / "prompts"
    task = VisionTask("caption", "{instruction}", "A photo of", max_new_tokens=3)
    write_prompt(root / "caption", backbone, 2, 1, {"vision_task": task.to_record(), "vision": {}})
    server = start_server(root, max_image_pixels=40 * 40)
    with serving(server) as url:

        def chat(model, url_or_text):
            part = {"type": "image_url", "image_url": {"url": url_or_text}}
            body = {"model": model, "messages": [{"role": "user", "content": [part]}]}
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)

        good = base64.b64encode(png_bytes(16)).decode()
        assert chat("caption", "data:image/png;base64," + good).status_code == 200
        assert_error(chat("caption", "data:image/png;base64,@@@"), 400, "invalid_image")
        assert_error(
            chat("caption", "data:image/png;base64," + base64.b64encode(b"not an image").decode()),
            400,
            "invalid_image",
        )
        assert_error(chat("caption", "/etc/passwd"), 400, "invalid_image")
        assert_error(chat("caption", "https://example.com/cat.png"), 400, "invalid_image")
        big = base64.b64encode(png_bytes(64)).decode()
        assert (
            "pixel" in assert_error(chat("caption", "data:image/png;base64," + big), 400)["message"]
        )
        text_only = httpx.post(f"{url}/v1/completions", json={"model": "caption", "prompt": "x"})
        assert_error(text_only, 400, "image_required")
        predict = {"model": "caption", "inputs": [{"image": good}, {"text": "no image"}]}
        assert_error(httpx.post(f"{url}/v1/predict", json=predict), 422, "invalid_field")


def test_api_key(prompts_root):
    server = start_server(prompts_root, api_key="sesame")
    with serving(server) as url:
        body = {"model": "text", "prompt": "x", "max_tokens": 2}
        assert_error(httpx.post(f"{url}/v1/completions", json=body), 401, "invalid_api_key")
        wrong = {"Authorization": "Bearer nope"}
        assert_error(httpx.get(f"{url}/v1/models", headers=wrong), 401)
        right = {"Authorization": "Bearer sesame"}
        assert httpx.post(f"{url}/v1/completions", json=body, headers=right).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_full_queue_is_503_with_retry_after(prompts_root):
    server = start_server(prompts_root, max_queue=1, max_batch_size=1, max_wait_ms=0)
    gate, entered = threading.Event(), threading.Event()
    run = server.engine.run

    def held(jobs):
        entered.set()
        gate.wait(30)
        run(jobs)

    server.engine.run = held
    with serving(server) as url, ThreadPoolExecutor(2) as pool:
        body = {"model": "text", "prompt": "x", "max_tokens": 2}
        first = pool.submit(post_json, url, "/v1/completions", body)
        assert entered.wait(30)
        second = pool.submit(post_json, url, "/v1/completions", body)
        deadline = time.monotonic() + 10
        while server.engine.depth < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = httpx.post(f"{url}/v1/completions", json=body)
        assert_error(full, 503, "queue_full")
        assert full.headers["retry-after"] == "1"
        gate.set()
        assert first.result()[0] == 200 and second.result()[0] == 200


def test_a_bad_row_fails_alone_and_the_rest_of_its_batch_is_answered(prompts_root):
    server = start_server(prompts_root)
    good = server.pool.get("text")
    broken = type(good)("broken", good.route, torch.zeros(2, 3), good.directory)  # wrong width
    results = {}
    jobs = [
        Job(
            prompt,
            TextExample(id=str(i), input=f"row {i}"),
            lambda v, i=i: results.__setitem__(i, v),
            3,
        )
        for i, prompt in enumerate([good, broken, good])
    ]
    server.engine.run(jobs)
    assert isinstance(results[1], Exception)
    alone = []
    server.engine.run([Job(good, TextExample(id="0", input="row 0"), alone.append, 3)])
    assert isinstance(results[0], Answer) and isinstance(results[2], Answer)
    assert results[0].text == alone[0].text


def test_bundles_that_change_the_model_and_ensembles_are_refused(llama, tmp_path):
    from test_artifacts import _FileTuner

    root = tmp_path / "prompts"
    write_prompt(root / "ok", llama, 3, 1)
    prompt = PromptTuner.from_weight(random_prompt(llama, 3, 2))
    write_bundle(root / "with-lora", [prompt, _FileTuner()], context(llama), {})
    members = {n: PromptTuner.from_weight(random_prompt(llama, 3, i)) for i, n in enumerate("ab")}
    PromptBank(members, {}, kind="ensemble").save(root / "ensemble", context(llama))
    write_bank(root / "tasks", llama, {"x": {}})
    server = start_server(root)
    assert set(server.pool.prompts) == {"ok", "tasks/x"}
    assert "lora" in server.pool.refused["with-lora"]
    assert "ensemble" in server.pool.refused["ensemble"]


def test_binding_beyond_loopback_needs_a_key(prompts_root):
    with pytest.raises(UserError, match="--api-key"):
        ServeOptions(prompts_dir=str(prompts_root), host="0.0.0.0").check()
    assert main(["serve", "--prompts-dir", str(prompts_root), "--host", "0.0.0.0"]) != 0
    ServeOptions(prompts_dir=str(prompts_root), host="0.0.0.0", api_key="k").check()


def test_sigterm_finishes_requests_in_flight_and_exits_0(prompts_root, tiny_models):
    port = free_port()
    command = [sys.executable, "-m", "softprompt", "serve", "--prompts-dir", str(prompts_root),
               "--port", str(port), "--max-wait-ms", "300", "--max-batch-size", "4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        body = {"model": "text", "prompt": "in flight", "max_tokens": 12}
        with ThreadPoolExecutor(6) as pool:
            replies = [pool.submit(post_json, url, "/v1/completions", body) for _ in range(6)]
            time.sleep(0.15)  # all six are in the server, waiting to be batched
            process.send_signal(signal.SIGTERM)
            statuses = [r.result(timeout=60)[0] for r in replies]
        assert statuses == [200] * 6
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode())
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not start in 120 s")


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(prompts_root, port, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--prompts-dir", str(prompts_root), "--port", port])
    assert stop.value.code == 2
    assert "not a port number" in capsys.readouterr().err
