"""The CUDA paths, checked on a machine with GPUs: one line per check (see gpu_check.sh).

    tools/gpu_check.sh [--model embedded:smollm2-135m] [--steps 20] [--cpu]

Checks, on the embedded SmolLM2-135M (real weights, installed from packages) and a
synthetic text task written here (no download):
  bf16     samples/s of the same training in float32 and under bf16 autocast;
  qlora    LoRA on the 4-bit (bitsandbytes nf4) base: loss before -> after, peak memory;
  ddp      two processes (NCCL), when there are two GPUs: the prompt one process trains;
  fsdp     two processes, training.sharding: fsdp, LoRA: weights against one process,
           and the trained elements each process holds;
  server   `softprompt serve` on 127.0.0.1: 20 completions, all answered, median latency.
--cpu runs the same checks on the CPU (gloo, no QLoRA) to check this script itself.
Never run in CI: the suite runs the CPU paths of all of these.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def write_task(directory: Path, n: int = 256) -> Path:
    """A learnable text task: the target is the colour word the input mentions."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        colour = rng.choice(["red", "blue", "green"])
        words = [rng.choice(["cat", "dog", "tree", "house"]) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), colour)
        rows.append({"id": f"ex{i}", "input": " ".join(words), "target": colour})
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def config(args, out: Path, data: Path, method: dict, **training) -> Path:
    raw = {
        "model": {"name_or_path": args.model},
        "method": method,
        "data": {"train_path": str(data), "template": "Colour in: {input}\nColour:"},
        "training": {
            "output_dir": str(out),
            "max_steps": args.steps,
            "batch_size": 8,
            "learning_rate": 0.03,
            "logging_steps": 1,
            "save_total_limit": 1,
            **training,
        },  # fmt: skip
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


PROMPT = {"prompt_tuning": {"num_virtual_tokens": 8, "init_method": "RANDOM"}}
LORA = {"lora": {"enabled": True, "r": 8, "dropout": 0.0, "learning_rate": 0.001}}


def train_cli(cfg: Path, processes: int = 1) -> dict:
    """`softprompt train` (under torchrun when several processes); its all_results.json."""
    command = [sys.executable, "-m", "softprompt", "train", str(cfg), "--no-progress"]
    if processes > 1:
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*run, "--nproc-per-node", str(processes), *command[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    out = yaml.safe_load(cfg.read_text())["training"]["output_dir"]
    return json.loads((Path(out) / "all_results.json").read_text())


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [e["loss"] for e in map(json.loads, lines) if e["event"] == "train"]


def max_difference(a: Path, b: Path) -> float:
    worst = 0.0
    for file in sorted(a.rglob("*.safetensors")):
        ta, tb = load_file(str(file)), load_file(str(b / file.relative_to(a)))
        worst = max([worst, *((ta[k] - tb[k]).abs().max().item() for k in ta)])
    return worst


def check_bf16(args, work: Path, data: Path) -> str:
    speed = {}
    for bf16 in (False, True):
        out = work / f"bf16-{bf16}"
        speed[bf16] = train_cli(config(args, out, data, PROMPT, bf16=bf16))
    fp32, bf16 = (speed[k]["train_samples_per_second"] for k in (False, True))
    return f"bf16: {bf16:.1f} samples/s vs {fp32:.1f} in float32 ({bf16 / fp32:.2f}x)"


def check_qlora(args, work: Path, data: Path) -> str:
    if args.cpu:
        return "qlora: skipped on the CPU (bitsandbytes 4-bit training needs CUDA)"
    method = {"lora": {**LORA["lora"], "quantization_bit": 4}}
    out = work / "qlora"
    results = train_cli(config(args, out, data, method, bf16=True))
    curve = losses(out)
    return (
        f"qlora: 4-bit LoRA, loss {curve[0]:.3f} -> {curve[-1]:.3f} in {len(curve)} steps, "
        f"peak {results['peak_memory_mb'] / 1024:.2f} GiB"
    )


def check_ddp(args, work: Path, data: Path) -> str:
    if not args.cpu and torch.cuda.device_count() < 2:
        return f"ddp: skipped ({torch.cuda.device_count()} GPU; two needed)"
    one, two = work / "ddp-one", work / "ddp-two"
    train_cli(config(args, one, data, PROMPT, batch_size=8, save_steps=args.steps))
    train_cli(config(args, two, data, PROMPT, batch_size=4, save_steps=args.steps), processes=2)
    backend = "gloo" if args.cpu else "NCCL"
    diff = max_difference(one / "best", two / "best")
    return f"ddp: 2 processes ({backend}), prompt max |diff| vs 1 process {diff:.2e}"


def check_fsdp(args, work: Path, data: Path) -> str:
    if not args.cpu and torch.cuda.device_count() < 2:
        return f"fsdp: skipped ({torch.cuda.device_count()} GPU; two needed)"
    one, two = work / "fsdp-one", work / "fsdp-two"
    method = {**PROMPT, **LORA}
    train_cli(config(args, one, data, method, batch_size=8))
    results = train_cli(config(args, two, data, method, batch_size=4, sharding="fsdp"), 2)
    sharding = results["sharding"]
    held = [p["trainable_parameters"] for p in sharding["per_process"]]
    diff = max_difference(one / "best", two / "best")
    return (
        f"fsdp: {sharding['units']} blocks over 2 processes, each holds "
        f"{held[0]:,}/{held[1]:,} of {sharding['trainable_parameters']:,} trained elements, "
        f"max |diff| vs 1 process {diff:.2e}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_server(args, work: Path, data: Path) -> str:
    import httpx

    out = work / "served"
    train_cli(config(args, out, data, PROMPT, max_steps=2))
    prompts = work / "prompts"
    prompts.mkdir()
    shutil.copytree(out / "best", prompts / "colour")
    port = free_port()
    command = [sys.executable, "-m", "softprompt", "serve", "--prompts-dir", str(prompts)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    log = (work / "server.log").open("w")
    server = subprocess.Popen([*command, "--port", str(port)], env=env, stderr=log)
    url, latencies, ok = f"http://127.0.0.1:{port}", [], 0
    try:
        wait_until_up(server, url, work / "server.log")
        body = {"model": "colour", "prompt": "Colour in: cat red dog\nColour:", "max_tokens": 4}
        for _ in range(20):
            started = time.perf_counter()
            reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            latencies.append(time.perf_counter() - started)
            ok += reply.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
    median = statistics.median(latencies) * 1000
    return f"server: {ok}/20 completions answered, median {median:.0f} ms"


def wait_until_up(server: subprocess.Popen, url: str, log: Path, seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(1)
    raise RuntimeError(f"the server did not come up: {log.read_text()[-1500:]}")


CHECKS = {"bf16": check_bf16, "qlora": check_qlora, "ddp": check_ddp, "fsdp": check_fsdp}
CHECKS["server"] = check_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="check this script on the CPU")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="these checks only")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (pass --cpu to check the script itself)")
        return 2
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        data = write_task(Path(tmp))
        for name in args.only or CHECKS:
            try:
                print(CHECKS[name](args, Path(tmp), data), flush=True)
            except Exception as err:  # one failing check must not hide the others
                failed += 1
                print(f"{name}: FAILED {type(err).__name__}: {str(err).strip()[-500:]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
