"""The HTTP API against its own OpenAPI document: docs/openapi.json is current, and
requests generated from the document (valid and invalid ones, by schemathesis) never get
a server error from a real server on 127.0.0.1, and every 4xx is an OpenAI-shaped error.

The servers run the tiny Llama (rotary positions) and the tiny GPT-2 (learned positions,
which end: budgets and inputs must stay within them). Examples are bounded per operation
and drawn deterministically, so a run is the same on every machine.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import httpx
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
EXAMPLES_PER_OPERATION = 25


def test_openapi_document_is_current():
    assert DOCUMENT.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: run `python tools/write_openapi.py`"
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def served(request, tiny_models, tmp_path_factory):
    """The base URL of a server of a prompt and a two-task bank (`SERVED`) on a tiny
    model, on 127.0.0.1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine run fastest so
    root = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    backbone = load_backbone(str(tiny_models[request.param]))
    write_prompt(root / "summary", backbone, length=4, seed=0)
    tasks = {"short": {"max_new_tokens": 3}, "long": {"max_new_tokens": 8}}
    write_bank(root / "bank", backbone, tasks)
    server = start_server(root, max_batch_size=8, max_wait_ms=2, max_queue=128)
    try:
        assert sorted(server.pool.prompts) == SERVED, server.pool.refused
        with serving(server) as url:
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


# Requests the fuzzer found answered with 500 once, kept so they are sent on every run.
EDGES = {
    "subnormal temperature": {"prompt": "hi", "temperature": 5e-324, "seed": 1},
    "budget past the positions": {"prompt": "hi", "max_tokens": 4096},
    "input past the positions": {"prompt": "hello " * 600, "max_tokens": 1},
    "empty input": {"prompt": "", "max_tokens": 2},
    "empty inputs": {"prompt": ["", ""], "max_tokens": 2, "stream": True},
}


@pytest.mark.parametrize("body", EDGES.values(), ids=EDGES.keys())
def test_edge_requests_get_no_server_error(served, body):
    response = httpx.post(f"{served}/v1/completions", json={"model": "summary", **body}, timeout=60)
    # a stream reports a failure as an error event: it must not be an internal error either
    assert response.status_code < 500 and "internal_error" not in response.text, response.text


schema = schemathesis.openapi.from_dict(fuzz_document(SERVED))
schema.config.update(request_timeout=60)
# Reports show every field as sent (the default hides `max_tokens`, a "token" field).
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
    case.call_and_validate(base_url=served, checks=[not_a_server_error, openai_error_shape])
