"""Prompts written as training writes them, and a server on 127.0.0.1 for the tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch
import uvicorn

from softprompt.artifacts.fingerprint import fingerprint
from softprompt.serving.app import create_app
from softprompt.serving.server import PromptServer, ServeOptions
from softprompt.tuners.prompt_tuning.bank import PromptBank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner


def context(backbone, task: dict | None = None) -> dict:
    """What a run saves with its prompts (family, base model, fingerprint, task)."""
    return {
        "family": backbone.family,
        "base_model": backbone.name_or_path,
        "fingerprint": fingerprint(backbone.word_embeddings(), backbone.tokenizer),
        "task": task or {"max_new_tokens": 6},
        "placement": "prepend",
    }


def random_prompt(backbone, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(length, backbone.hidden_size, generator=generator) * 0.5


def write_prompt(directory: Path, backbone, length: int = 4, seed: int = 0, task=None) -> Path:
    """A prompt directory as a prompt-tuning run saves it."""
    tuner = PromptTuner.from_weight(random_prompt(backbone, length, seed))
    tuner.save(directory, {**context(backbone, task), "extra": None})
    return directory


def write_bank(directory: Path, backbone, records: dict[str, dict], seed: int = 10) -> Path:
    """A multi-task bank: one random prompt per task record."""
    members = {
        name: PromptTuner.from_weight(random_prompt(backbone, 3 + i, seed + i))
        for i, name in enumerate(records)
    }
    PromptBank(members, records, kind="tasks").save(directory, context(backbone))
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(server: PromptServer) -> Iterator[str]:
    """`server` over real HTTP on 127.0.0.1 (its lifespan starts and stops it); yields
    the base URL (`http://127.0.0.1:PORT`)."""
    port = free_port()
    config = uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning")
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not web.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        web.should_exit = True
        thread.join(30)


def start_server(root: Path, **settings) -> PromptServer:
    """A loaded (not started) server of the prompts under `root`."""
    return PromptServer.load(ServeOptions(prompts_dir=str(root), **settings))


def get_json(url: str, path: str, **kwargs) -> tuple[int, dict]:
    response = httpx.get(url + path, timeout=30, **kwargs)
    return response.status_code, response.json()


def post_json(url: str, path: str, body, **kwargs) -> tuple[int, dict | list]:
    response = httpx.post(url + path, json=body, timeout=60, **kwargs)
    return response.status_code, response.json()
