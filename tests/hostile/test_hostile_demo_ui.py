"""`softprompt demo-ui --port`: a bad number is an argparse error, a busy port one line that
names our `--port` flag (never Gradio's own settings), whenever the port was taken."""

from __future__ import annotations

import socket

import pytest
from helpers import make_config, toy_task, write_config, write_jsonl

from softprompt.commands import demo_ui
from softprompt.commands.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def busy_port():
    """A loopback port another program listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1", "80.5", "http", ""])
def test_bad_port_numbers_are_argparse_errors(port, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["demo-ui", "--prompt", str(tmp_path), "--port", port])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "OverflowError" not in err
    assert "argument --port" in err.strip().splitlines()[-1] and "1-65535" in err


def test_good_port_number_is_accepted():
    assert demo_ui.port_number(" 8080 ") == 8080
    assert demo_ui.port_number("65535") == 65535


def test_busy_port_is_named_with_our_flag_before_the_model_loads(busy_port, tmp_path, capsys):
    missing_prompt = tmp_path / "not-loaded"  # the port is checked first
    assert main(["demo-ui", "--prompt", str(missing_prompt), "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"port {busy_port} is in use: pass --port with a free one"


def test_port_taken_while_the_model_loads_is_named_with_our_flag(
    tiny_models, tmp_path, busy_port, monkeypatch, capsys
):
    pytest.importorskip("gradio")
    out = tmp_path / "run"
    data = {"train": write_jsonl(tmp_path / "train.jsonl", toy_task(8))}
    prompt = {"num_virtual_tokens": 2, "init_method": "RANDOM"}
    raw = make_config(tiny_models["gpt2"], data, out, method={"prompt_tuning": prompt}, max_steps=1)
    assert main(["train", str(write_config(tmp_path / "config.yaml", raw)), "--no-progress"]) == 0
    real_check, calls = demo_ui.port_problem, []

    def free_at_first(host: str, port: int) -> str | None:
        calls.append(port)  # free when first checked, taken by the time the page starts
        return None if len(calls) == 1 else real_check(host, port)

    monkeypatch.setattr(demo_ui, "port_problem", free_at_first)
    capsys.readouterr()
    argv = ["demo-ui", "--prompt", str(out / "best"), "--port", str(busy_port)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"port {busy_port} is in use: pass --port with a free one" in err
    assert "GRADIO" not in err and "server_port" not in err and "Traceback" not in err
