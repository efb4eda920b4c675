"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _PromptCacheCollector:
    """Hits and misses of the model's prompt key/value cache, read when scraped."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self.counts = counts

    def collect(self):
        hits, misses = self.counts()
        for name, value, what in (
            ("hits", hits, "served from"),
            ("misses", misses, "computed for"),
        ):
            family = CounterMetricFamily(
                f"softprompt_prompt_cache_{name}",
                f"Prompt key/value lookups {what} the prompt cache.",
            )
            family.add_metric([], value)
            yield family


class ServerMetrics:
    """Requests by prompt and status, queue depth, batch sizes, latency and time to first
    token, prompt-cache hits and misses."""

    def __init__(self, cache_counts: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "softprompt_requests", "Requests answered, by prompt and HTTP status.",
            ["prompt", "status"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "softprompt_queue_depth", "Inputs waiting to be batched.", registry=r
        )
        self.batch_size = Histogram(
            "softprompt_batch_size", "Inputs answered together in one batch.",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "softprompt_request_latency_seconds", "Time from arrival to the whole answer.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.first_token = Histogram(
            "softprompt_time_to_first_token_seconds", "Time from arrival to the first token.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        r.register(_PromptCacheCollector(cache_counts))

    def observe(self, event: str, value: float) -> None:
        """The engine's events: "batch" (rows in a batch), "queue" (inputs waiting)."""
        if event == "batch":
            self.batch_size.observe(value)
        elif event == "queue":
            self.queue_depth.set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
