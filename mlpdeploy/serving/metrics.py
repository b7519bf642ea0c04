"""Request metrics in the Prometheus text format (`GET /metrics`), one registry per app."""

from __future__ import annotations

from mlpdeploy.errors import require

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        prom = require("prometheus_client", "serve", "mlpdeploy serve's /metrics")
        self.prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            "mlpdeploy_requests", "Inference and generate requests by model, endpoint and outcome (success | client_error | server_error).",
            ["model", "endpoint", "outcome"], registry=self.registry)
        self.inferences = prom.Counter("mlpdeploy_inference_count", "Batch items inferred (the leading dim of the first input).",
                                       ["model"], registry=self.registry)
        self.tokens = prom.Counter("mlpdeploy_generated_tokens", "Tokens generated.", ["model"], registry=self.registry)
        self.latency = prom.Histogram("mlpdeploy_request_duration_seconds", "Request time in the server, body read to response ready.",
                                      ["model", "endpoint"], buckets=BUCKETS, registry=self.registry)

    def observe(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        outcome = "success" if status < 400 else "client_error" if status < 500 else "server_error"
        self.requests.labels(model, endpoint, outcome).inc()
        if status < 400:
            self.latency.labels(model, endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST
