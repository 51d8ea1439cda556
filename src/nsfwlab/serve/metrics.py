"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (several apps in one process,
as in the tests, never collide)."""

from __future__ import annotations

from typing import Any

__all__ = ["SCORE_BUCKETS", "ServiceMetrics"]

SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("nsfwlab_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("nsfwlab_http_request_seconds", "HTTP request latency by route",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("nsfwlab_images", "Images handled by outcome (scored or error)",
                              ["outcome"], registry=r)
        self.errors = Counter("nsfwlab_errors", "Errors by code (per image, or per request when it is refused)",
                              ["code"], registry=r)
        self.scores = Histogram("nsfwlab_score", "NSFW scores of scored images", buckets=SCORE_BUCKETS,
                                registry=r)
        self.labels = Counter("nsfwlab_labels", "Scored images by label", ["label"], registry=r)
        self.batch_size = Histogram("nsfwlab_batch_size", "Images per model call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.model_seconds = Histogram("nsfwlab_model_call_seconds", "Duration of one model call",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("nsfwlab_queue_depth", "Images waiting for the model", registry=r)
        self.in_flight = Gauge("nsfwlab_requests_in_flight", "Scoring requests being handled", registry=r)
        self.review_queued = Counter("nsfwlab_review_queued", "Images queued for human review by reason",
                                     ["reason"], registry=r)
        self.review_labels = Counter("nsfwlab_review_labels", "Human review decisions by label",
                                     ["label"], registry=r)
        self.bank_matches = Counter("nsfwlab_bank_matches", "Uploads that matched the hash bank, by banked decision",
                                    ["decision"], registry=r)
        self.bank_added = Counter("nsfwlab_bank_added", "Review decisions sent to the hash bank, by outcome "
                                  "(added, or skipped: a video, below PDQ's quality floor, an error)",
                                  ["outcome"], registry=r)
        self.key_requests = Counter("nsfwlab_key_requests", "Requests to /v1 by API key id (a hash, never the key; "
                                    "'-' without keys) and outcome (allowed or rate_limited)",
                                    ["key", "outcome"], registry=r)
        self.attack_flags = Counter("nsfwlab_attack_flags", "Callers flagged as running a query attack (each new "
                                    "flag; by API key id, a hash, '-' without keys)", ["key"], registry=r)
        self.attack_requests = Counter("nsfwlab_attack_requests", "Scoring requests of flagged callers by what "
                                       "was done (blocked, slowed, logged)", ["outcome"], registry=r)
        self.ready = Gauge("nsfwlab_ready", "1 when the model is loaded and the service scores", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def sample(self, name: str, labels: dict[str, str] | None = None) -> Any:
        """The current value of one sample (tests and the benchmark read counters with it)."""
        return self.registry.get_sample_value(name, labels or {})
