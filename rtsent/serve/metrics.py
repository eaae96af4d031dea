"""The server's Prometheus metrics, through prometheus_client: the standard exposition, process metrics included."""

from __future__ import annotations

from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """One registry per app (so that two apps in one process never share counts):

    rtsent_requests_total{endpoint, status}   scoring requests answered (/predict, /classify)
    rtsent_request_duration_seconds{endpoint} time from request to response
    rtsent_batch_size                         texts scored together in one forward pass
    rtsent_queue_requests                     requests waiting for the model
    rtsent_model_loaded                       1 once the model answers
    process_* / python_*                      the process's CPU, memory, file descriptors; Python's GC
    """

    def __init__(self, queued: Callable[[], int], loaded: Callable[[], bool]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
        from prometheus_client import GCCollector, PlatformCollector

        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.requests = Counter("rtsent_requests", "Scoring requests answered, by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("rtsent_request_duration_seconds", "Time from request to response of a scoring request.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("rtsent_batch_size", "Texts scored together in one forward pass.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        Gauge("rtsent_queue_requests", "Requests waiting for the model.",
              registry=self.registry).set_function(queued)
        Gauge("rtsent_model_loaded", "1 once the model is loaded and the scoring endpoints answer.",
              registry=self.registry).set_function(lambda: float(loaded()))

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
