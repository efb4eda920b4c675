"""The server under closed-loop load: many soft prompts on one model, against PEFT.

    OMP_NUM_THREADS=1 python bench/bench_serve.py [--requests 96] [--max-tokens 16] [--quick]

SmolLM2-135M (`embedded:smollm2-135m`, float32, CPU) serves 8 prompts of 8 virtual tokens,
each initialised from the embeddings of a short instruction ("Summarise:", ...), from a
temporary directory: `PromptServer` (max batch 16, max wait 10 ms) behind uvicorn on
127.0.0.1, in this process. C closed-loop clients (asyncio + httpx, C = 1, 4, 16) send
POST /v1/completions one after another (greedy, --max-tokens new tokens, short varied
inputs; request k uses prompt k % 8) until --requests per level are answered or the time
cap passes. Each level has a plain pass (requests/s, generated tokens/s = sum of
usage.completion_tokens / wall time, latency) and a streamed pass of a quarter as many
requests (TTFT: until the first SSE chunk carrying text). Ratios, all measured in this run:

  1. throughput (tokens/s) of the 8 prompts interleaved against the same stream on one
     prompt, at 16 clients (target >= 0.9x);
  2. the server at 16 clients against PEFT: a `PeftModel` holding the same 8 prompts as
     PROMPT_TUNING adapters on a fresh copy of the model, `set_adapter` + `generate`
     (batch 1, greedy) per request, called by 16 client threads through one lock (a single
     model, serialized, no HTTP); target >= 4x. Its texts are compared with the server's;
  3. TTFT at 1 client with the prompt-prefix cache against without it (`prompt_cache.enabled
     = False`, cleared), the two passes back to back (target < 1).

Memory: the resident set (psutil RSS) of a fresh process (`--rss-only DIR`) serving 1 prompt
against 100 (written here), right after loading and after one request to each prompt
(which keeps each prompt's keys and values); target: at most 5% more. Results: stdout and
bench/results/serve.json (serve_quick.json with --quick, serve_custom.json otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
import uvicorn

from softprompt.artifacts.fingerprint import fingerprint
from softprompt.backbones.embedded import resolve_embedded
from softprompt.backbones.loading import load_backbone
from softprompt.serving.app import create_app
from softprompt.serving.server import PromptServer, ServeOptions
from softprompt.tuners.prompt_tuning.tuner import PromptTuner

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

MODEL = "embedded:smollm2-135m"
VIRTUAL_TOKENS = 8
LEVELS = (1, 4, 16)
TTFT_ROUNDS = 4
MAX_BATCH, MAX_WAIT_MS = 16, 10
PROMPT_TEXTS = (
    "Summarise:|Translate to French:|Answer the question:|Fix the grammar:|Write a title for:|"
    "Classify the sentiment of:|Explain simply:|List the keywords of:"
).split("|")
INPUTS = (
    "The cat sat on the mat.|Paris is the capital of France.|How many legs does a spider have?|"
    "Rain fell all day in the valley.|The meeting moved to Tuesday.|Why is the sky blue?|"
    "She bought three apples and a pear.|Water boils at one hundred degrees.|"
    "The train was late again this morning.|He plays the violin every evening.|"
    "Our team won the final match.|The library opens at nine."
).split("|")
DEFAULTS = {"requests": 96, "max_tokens": 16, "time_cap": 120.0, "rss_prompts": 100}
QUICK = {"requests": 16, "max_tokens": 4, "time_cap": 30.0, "rss_prompts": 20}


def prompt_vectors(backbone, index: int) -> torch.Tensor:
    """(8, D) rows of the vocabulary: instruction `index`'s tokens, repeated to 8 rows;
    past the 8 instructions, seeded random rows (so no two prompts are equal)."""
    if index < len(PROMPT_TEXTS):
        ids = backbone.tokenizer(PROMPT_TEXTS[index], add_special_tokens=False)["input_ids"]
        ids = (ids * VIRTUAL_TOKENS)[:VIRTUAL_TOKENS]
    else:
        g = torch.Generator().manual_seed(index)
        vocab = backbone.word_embeddings().shape[0]
        ids = torch.randint(1000, vocab, (VIRTUAL_TOKENS,), generator=g).tolist()
    return backbone.word_embeddings().detach()[ids].clone().float()


def write_prompts(root: Path, backbone, count: int, max_new_tokens: int) -> list[str]:
    """`count` prompt directories `p000`, `p001`, ... under `root`, as a prompt-tuning run
    saves them (text2text, template `{input}`); returns their served names."""
    context = {
        "family": backbone.family,
        "base_model": backbone.name_or_path,
        "fingerprint": fingerprint(backbone.word_embeddings(), backbone.tokenizer),
        "task": {"max_new_tokens": max_new_tokens, "template": "{input}"},
        "placement": "prepend",
        "extra": None,
    }
    names = [f"p{i:03d}" for i in range(count)]
    for i, name in enumerate(names):
        PromptTuner.from_weight(prompt_vectors(backbone, i)).save(root / name, context)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(server: PromptServer) -> Iterator[str]:
    """`server` over HTTP on 127.0.0.1 (uvicorn in a thread; its lifespan starts and
    stops the server); yields the base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning")
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(30)


def load_server(root: Path) -> PromptServer:
    options = ServeOptions(prompts_dir=str(root), max_batch_size=MAX_BATCH, max_wait_ms=MAX_WAIT_MS)
    return PromptServer.load(options)


def request_body(k: int, names: list[str], max_tokens: int, stream: bool) -> dict:
    """Request k of a pass: prompt k % len(names), input k % len(INPUTS)."""
    prompt, text = names[k % len(names)], INPUTS[k % len(INPUTS)]
    return dict(model=prompt, prompt=text, max_tokens=max_tokens, temperature=0, stream=stream)


async def send_plain(http: httpx.AsyncClient, body: dict) -> dict:
    response = await http.post("/v1/completions", json=body)
    response.raise_for_status()
    answer = response.json()
    return {"tokens": answer["usage"]["completion_tokens"], "text": answer["choices"][0]["text"]}


async def send_streamed(http: httpx.AsyncClient, body: dict, start: float) -> dict:
    """Reads the SSE stream to `[DONE]`; TTFT is the first chunk that carries text."""
    first, pieces = None, []
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            text = chunk["choices"][0].get("text") or ""
            if text and first is None:
                first = time.perf_counter() - start
            pieces.append(text)
    return {"ttft": first, "text": "".join(pieces)}


async def closed_loop(url: str, names, clients: int, ks: range, max_tokens: int,
                      stream: bool, time_cap: float) -> tuple[list[dict], float]:  # fmt: skip
    """C clients, each sending its next request (of indices `ks`) when its last is
    answered, until all are answered or `time_cap` seconds pass; (records, wall s)."""
    order = iter(ks)
    records: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()

        async def client() -> None:
            for k in order:
                if time.perf_counter() - start > time_cap:
                    return
                body = request_body(k, names, max_tokens, stream)
                sent = time.perf_counter()
                if stream:
                    record = await send_streamed(http, body, sent)
                else:
                    record = await send_plain(http, body)
                records.append({"k": k, "latency": time.perf_counter() - sent, **record})

        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return records, wall


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 values is their maximum)."""
    ranked = sorted(values)
    return ranked[max(0, min(len(ranked) - 1, math.ceil(q * len(ranked)) - 1))]


def summarise(records: list[dict], wall: float) -> dict:
    latencies = [r["latency"] for r in records]
    stats = {"requests": len(records), "seconds": wall, "requests_per_s": len(records) / wall}
    stats.update(latency_p50_ms=1000 * percentile(latencies, 0.5),
                 latency_p99_ms=1000 * percentile(latencies, 0.99))  # fmt: skip
    if "tokens" in records[0]:
        stats["tokens_per_s"] = sum(r["tokens"] for r in records) / wall
        stats["tokens_per_request"] = sum(r["tokens"] for r in records) / len(records)
    if "ttft" in records[0]:
        ttfts = [r["ttft"] for r in records if r["ttft"] is not None]
        stats["ttft_p50_ms"] = 1000 * percentile(ttfts, 0.5) if ttfts else None
        stats["ttft_p99_ms"] = 1000 * percentile(ttfts, 0.99) if ttfts else None
    return stats


def measured(work: Callable[[], Any]) -> tuple[Any, float]:
    """work()'s value and the cores other processes kept busy meanwhile (the machine may
    be shared: a busy one slows every pass it overlaps)."""
    busy, cpu, wall = common.machine_busy_seconds(), time.process_time(), time.perf_counter()
    value = work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return value, max(0.0, common.machine_busy_seconds() - busy - cpu) / wall


def run_pass(url, names, clients: int, ks: range, args, stream: bool,
             tokens: int | None = None, label: str = "") -> tuple[dict, list[dict]]:  # fmt: skip
    """One closed-loop pass: its stats and records."""
    tokens = tokens or args.max_tokens
    (records, wall), other = measured(
        lambda: asyncio.run(closed_loop(url, names, clients, ks, tokens, stream, args.time_cap))
    )
    stats = {"clients": clients, "prompts": len(names), "stream": stream}
    stats.update(summarise(records, wall), background_cores=other)
    print(f"  {len(names)} prompt(s), {clients} client(s), stream={stream}{label}: "
          f"{stats['requests_per_s']:.2f} req/s", flush=True)  # fmt: skip
    return stats, records


def server_passes(server: PromptServer, url: str, names: list[str], args) -> dict:
    """Every level (plain and streamed), one prompt at 16 clients, TTFT with and without
    the prompt cache."""
    requests, streamed_requests = range(args.requests), range(max(4, args.requests // 4))
    run_pass(url, names, MAX_BATCH, range(2 * len(names)), args, False, label=" (warm-up)")
    out: dict = {"levels": {}}
    for clients in LEVELS:
        plain, records = run_pass(url, names, clients, requests, args, stream=False)
        streamed, _ = run_pass(url, names, clients, streamed_requests, args, stream=True)
        out["levels"][clients] = {"plain": plain, "streamed": streamed}
        if clients == LEVELS[-1]:
            out["texts"] = {r["k"]: r["text"] for r in records}
    out["one_prompt"], _ = run_pass(url, names[:1], LEVELS[-1], requests, args, False)
    out.update(ttft_with_and_without_cache(server, url, names, args))
    cache = server.backbone.prompt_cache
    out["prompt_cache"] = {"hits": cache.hits, "misses": cache.misses}
    return out


def ttft_with_and_without_cache(server: PromptServer, url: str, names, args) -> dict:
    """1 client, streamed, the cache off (cleared) and on in alternating order over
    TTFT_ROUNDS rounds; re-enabled, it is refilled first (1 token per prompt, untimed)."""
    cache = server.backbone.prompt_cache
    share = max(2, args.requests // (4 * TTFT_ROUNDS))
    records, seconds, busy = {"on": [], "off": []}, {"on": 0.0, "off": 0.0}, {"on": 0.0, "off": 0.0}
    for r in range(TTFT_ROUNDS):
        for way in ("off", "on") if r % 2 == 0 else ("on", "off"):
            cache.enabled = way == "on"
            if way == "off":
                cache.clear()
            else:
                run_pass(url, names, 1, range(len(names)), args, True, 1, " (cache refill)")
            ks = range(r * share, (r + 1) * share)
            stats, found = run_pass(url, names, 1, ks, args, True, label=f" (cache {way})")
            records[way] += found
            seconds[way] += stats["seconds"]
            busy[way] += stats["background_cores"] * stats["seconds"]
    cache.enabled = True
    out = {}
    for way in ("on", "off"):
        stats = {"clients": 1, "prompts": len(names), "stream": True, "rounds": TTFT_ROUNDS}
        stats.update(summarise(records[way], seconds[way]))
        out[f"ttft_cache_{way}"] = {**stats, "background_cores": busy[way] / seconds[way]}
    return out


def peft_model(backbone, names: list[str]):
    """A PeftModel with one PROMPT_TUNING adapter per prompt, on a fresh copy of the model."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = resolve_embedded(backbone.name_or_path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL_TOKENS)
    model = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    for i, name in enumerate(names):
        with torch.no_grad():
            model.prompt_encoder[name].embedding.weight.copy_(prompt_vectors(backbone, i))
    return model.eval()


def peft_pass(model, tokenizer, names, clients: int, ks: range, args) -> tuple[dict, dict]:
    """`clients` threads, each taking the next request and answering it through one lock."""
    order, take, lock, records = iter(ks), threading.Lock(), threading.Lock(), []
    eos = tokenizer.eos_token_id
    start = time.perf_counter()

    def client() -> None:
        while time.perf_counter() - start <= args.time_cap:
            with take:
                k = next(order, None)
            if k is None:
                return
            sent = time.perf_counter()
            batch = tokenizer([INPUTS[k % len(INPUTS)]], return_tensors="pt")
            with lock, torch.no_grad():
                model.set_adapter(names[k % len(names)])
                out = model.generate(**batch, max_new_tokens=args.max_tokens, do_sample=False)
            new = out[0, batch["input_ids"].shape[1] :].tolist()
            new = new[: new.index(eos)] if eos in new else new
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            records.append({"k": k, "latency": time.perf_counter() - sent, "tokens": len(new),
                            "text": text})  # fmt: skip

    threads = [threading.Thread(target=client) for _ in range(clients)]
    _, other = measured(lambda: [[t.start() for t in threads], [t.join() for t in threads]])
    stats = {"clients": clients, "prompts": len(names), "stream": False}
    stats.update(summarise(records, time.perf_counter() - start), background_cores=other)
    print(f"  PEFT, {clients} threads, one lock: {stats['requests_per_s']:.2f} req/s", flush=True)
    return stats, {r["k"]: r["text"] for r in records}


def rss_only(root: str) -> None:
    """Prints the RSS (MiB) of this process serving the prompts under `root`: loaded,
    then after one request (of one new token: the prompt's keys and values are kept at
    its first step) to each."""
    server = load_server(Path(root))
    names = sorted(server.pool.prompts)
    gc.collect()
    loaded = psutil.Process().memory_info().rss / 2**20
    with serving(server) as url, httpx.Client(base_url=url, timeout=60) as http:
        for k, name in enumerate(names):
            body = request_body(k, [name], 1, stream=False)
            http.post("/v1/completions", json=body).raise_for_status()
    gc.collect()
    served = psutil.Process().memory_info().rss / 2**20
    print(json.dumps({"prompts": len(names), "loaded_mb": loaded, "served_mb": served}))


def measure_rss(backbone, count: int, max_tokens: int) -> dict:
    """`rss_only` in a fresh process, of `count` prompts written here."""
    with tempfile.TemporaryDirectory() as tmp:
        write_prompts(Path(tmp), backbone, count, max_tokens)
        command = [sys.executable, __file__, "--rss-only", tmp]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table_row(label: str, plain: dict, streamed: dict | None = None) -> str:
    def cell(stats: dict, key: str, form: str) -> str:
        return format(stats[key], form) if stats.get(key) is not None else "-"

    keys = [("requests_per_s", ".2f"), ("tokens_per_s", ".1f"), ("latency_p50_ms", ".0f"),
            ("latency_p99_ms", ".0f")]  # fmt: skip
    cells = [label, str(plain["prompts"]), str(plain["clients"]), str(plain["requests"])]
    cells += [cell(plain, key, form) for key, form in keys]
    cells += [cell(streamed or {}, key, ".0f") for key in ("ttft_p50_ms", "ttft_p99_ms")]
    return "| " + " | ".join([*cells, cell(plain, "background_cores", ".2f")]) + " |"


def report(result: dict) -> str:
    lines = [
        "| engine | prompts | clients | requests | req/s | tokens/s | p50 ms | p99 ms | "
        "p50 TTFT ms | p99 TTFT ms | other processes (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    served = result["server"]
    lines += [table_row("server", x["plain"], x["streamed"]) for x in served["levels"].values()]
    lines.append(table_row("server, one prompt", served["one_prompt"]))
    lines.append(table_row("PEFT, one lock", result["peft"]))
    for way in ("on", "off"):
        ttft = served[f"ttft_cache_{way}"]
        lines.append(table_row(f"server, stream, prompt cache {way}", ttft, ttft))
    r, mem = result["ratios"], result["memory"]
    lines += [
        "",
        f"8 prompts interleaved / one prompt, tokens/s at 16 clients: "
        f"{r['interleaved_vs_one_prompt']:.2f}x (target >= 0.9x)",
        f"server at 16 clients / PEFT serialized, tokens/s: {r['server_vs_peft']:.2f}x "
        f"(target >= 4x); same text as PEFT: {result['same_text_as_peft']}",
        f"p50 TTFT at 1 client, prompt cache on / off: {r['ttft_cache_on_vs_off']:.2f} "
        f"(target < 1)",
        f"RSS, {mem['many']['prompts']} prompts / 1 prompt: loaded {r['rss_loaded']:.3f}x "
        f"({mem['one']['loaded_mb']:.0f} -> {mem['many']['loaded_mb']:.0f} MiB), after one "
        f"request each {r['rss_served']:.3f}x ({mem['one']['served_mb']:.0f} -> "
        f"{mem['many']['served_mb']:.0f} MiB) (target <= 1.05x)",
    ]
    return "\n".join(lines)


def same_texts(ours: dict[int, str], theirs: dict[int, str]) -> str:
    both = sorted(set(ours) & set(theirs))
    return f"{sum(ours[k] == theirs[k] for k in both)}/{len(both)}"


def ratios(server: dict, peft: dict, memory: dict) -> dict:
    top = server["levels"][LEVELS[-1]]["plain"]
    return {
        "interleaved_vs_one_prompt": top["tokens_per_s"] / server["one_prompt"]["tokens_per_s"],
        "server_vs_peft": top["tokens_per_s"] / peft["tokens_per_s"],
        "ttft_cache_on_vs_off": server["ttft_cache_on"]["ttft_p50_ms"]
        / server["ttft_cache_off"]["ttft_p50_ms"],
        "rss_loaded": memory["many"]["loaded_mb"] / memory["one"]["loaded_mb"],
        "rss_served": memory["many"]["served_mb"] / memory["one"]["served_mb"],
    }


def benchmark(args) -> dict:
    """Memory first (fresh processes serving nothing else), then the server, then PEFT."""
    backbone = load_backbone(MODEL)
    memory = {"one": measure_rss(backbone, 1, args.max_tokens)}
    memory["many"] = measure_rss(backbone, args.rss_prompts, args.max_tokens)
    print(f"  RSS: {memory}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_prompts(Path(tmp), backbone, len(PROMPT_TEXTS), args.max_tokens)
        server = load_server(Path(tmp))
        with serving(server) as url:
            result = server_passes(server, url, names, args)
    texts = result.pop("texts")
    del server
    gc.collect()
    model = peft_model(backbone, names)
    for ks in (range(len(names)), range(args.requests)):  # a warm-up, then the timed pass
        peft, peft_texts = peft_pass(model, backbone.tokenizer, names, LEVELS[-1], ks, args)
    same = same_texts(texts, peft_texts)
    return {"server": result, "peft": peft, "memory": memory, "same_text_as_peft": same,
            "ratios": ratios(result, peft, memory)}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, help=f"per pass (default {DEFAULTS['requests']})")
    parser.add_argument("--max-tokens", type=int, help="new tokens per request (default 16)")
    parser.add_argument("--time-cap", type=float, help="seconds per pass at most (default 120)")
    parser.add_argument("--rss-prompts", type=int, help="prompts of the larger RSS process")
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--out", help="results file name (default: from the settings)")
    parser.add_argument("--rss-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.custom = any(getattr(args, k) is not None for k in DEFAULTS)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def quiet() -> None:
    """No progress bars, and none of the libraries' deprecation notes, in the report."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("softprompt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Position ids are not supported")


def main() -> None:
    args = parse_args()
    quiet()
    if args.rss_only is not None:
        rss_only(args.rss_only)
        return
    torch.manual_seed(0)
    result = benchmark(args)
    text = report(result)
    print(text)
    name = "serve_custom" if args.custom else "serve_quick" if args.quick else "serve"
    out = HERE / "results" / (args.out or f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"model": MODEL, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "virtual_tokens": VIRTUAL_TOKENS, "max_batch_size": MAX_BATCH,
                "max_wait_ms": MAX_WAIT_MS, "requests": args.requests,
                "max_tokens": args.max_tokens, "time_cap_s": args.time_cap}  # fmt: skip
    out.write_text(json.dumps({"settings": settings, **result, "table": text}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
