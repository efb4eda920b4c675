"""The HTTP API against its own OpenAPI document: docs/openapi.json is current, and
requests generated from the document (valid and invalid ones, schemathesis) never get a
server error from a real server on 127.0.0.1, and every 4xx is an OpenAI-shaped error."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from serve_helpers import serving, start_server, write_bank, write_prompt

from softprompt.backbones.loading import load_backbone

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from write_openapi import DOCUMENT, openapi_document, render  # noqa: E402

# Bodies that name a prompt: the fuzzed `model` is one the server has (invalid bodies
# still get other strings), so requests reach the engine rather than stopping at 404.
NAMED_BODIES = ("CompletionRequest", "ChatRequest", "PredictRequest")
SERVED = ["bank/long", "bank/short", "summary"]
import os

EXAMPLES_PER_OPERATION = int(os.environ.get("FZ_N", 25))


def test_openapi_document_is_current():
    assert DOCUMENT.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: run `python tools/write_openapi.py`"
    )


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    """The base URL of a server of a prompt and a two-task bank (`SERVED`) on the tiny
    Llama, on 127.0.0.1."""
    if os.environ.get("FZ_FIX"):
        from softprompt.backbones.decoding import Decoding

        Decoding.samples = property(lambda s: s.temperature >= 1e-5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz-prompts")
    backbone = load_backbone(str(tiny_models["llama"]))
    write_prompt(root / "summary", backbone, length=4, seed=0)
    tasks = {"short": {"max_new_tokens": 3}, "long": {"max_new_tokens": 8}}
    write_bank(root / "bank", backbone, tasks)
    server = start_server(root, max_batch_size=8, max_wait_ms=2, max_queue=128)
    try:
        with serving(server) as url:
            assert sorted(server.pool.prompts) == SERVED, server.pool.refused
            yield url
    finally:
        torch.set_num_threads(before)


def fuzz_document(names: list[str]) -> dict:
    """The app's document with `model` limited to the served names."""
    document = copy.deepcopy(openapi_document())
    for body in NAMED_BODIES:
        document["components"]["schemas"][body]["properties"]["model"]["enum"] = names
    return document


def openai_error_shape(ctx, response, case) -> bool | None:
    """A 4xx answer is `{"error": {"message": str, "type": str, "code": str | null}}`."""
    if not 400 <= response.status_code < 500:
        return None
    body = json.loads(response.content)
    assert set(body) == {"error"}, f"not an error object: {body}"
    error = body["error"]
    assert set(error) == {"message", "type", "code"}, f"error fields: {sorted(error)}"
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return True


schema = schemathesis.openapi.from_dict(fuzz_document(SERVED))
schema.config.update(request_timeout=60)
schema.config.output.sanitization.update(enabled=False)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_get_no_server_error(case, served):
    r = case.call_and_validate(base_url=served, checks=[not_a_server_error, openai_error_shape])
    try:
        code = json.loads(r.content)["error"]["code"]
    except Exception:
        code = "-"
    with open("/tmp/fz/tally.txt", "a") as f:
        f.write(
            f"{case.method} {case.path} {r.status_code} {code} {len(r.request.body or b'')} {r.elapsed:.3f}\n"
        )
