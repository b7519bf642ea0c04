"""Request metrics in the Prometheus text format (`GET /metrics`), one registry per app; for cached
decoders also the scheduler's: rows per decode step (batch occupancy), queue time, time to first
token and inter-token latency."""

from __future__ import annotations

from mlpdeploy.errors import require

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


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

        self.occupancy = prom.Histogram("mlpdeploy_batch_occupancy", "Sequences in each decode step of a decoder's scheduler.",
                                        ["model"], buckets=ROWS, registry=self.registry)
        self.step_seconds = prom.Histogram("mlpdeploy_decode_step_seconds", "Time of each decode step (all its sequences).",
                                           ["model"], buckets=BUCKETS, registry=self.registry)
        self.queue = prom.Histogram("mlpdeploy_queue_seconds", "Generate requests: arrival to admission (a row and cache budget free).",
                                    ["model"], buckets=BUCKETS, registry=self.registry)
        self.first_token = prom.Histogram("mlpdeploy_time_to_first_token_seconds", "Generate requests: arrival to first token.",
                                          ["model"], buckets=BUCKETS, registry=self.registry)
        self.inter_token = prom.Histogram("mlpdeploy_inter_token_seconds", "Generate requests: time between consecutive tokens.",
                                          ["model"], buckets=BUCKETS, registry=self.registry)
        self.prompt_tokens = prom.Counter("mlpdeploy_prompt_tokens", "Generate requests' prompt tokens, by how their cache was made "
                                          "(prefilled | reused: copied from a kept prompt's prefix, --prefix-cache-mb).",
                                          ["model", "cache"], registry=self.registry)
        self.finished = prom.Counter("mlpdeploy_generate_finished", "Generate requests ended, by finish reason (stop | length | cancelled | error).",
                                     ["model", "finish"], registry=self.registry)

    def scheduler_observer(self, model: str) -> "SchedulerMetrics":
        """An observer for `model`'s scheduler (`Scheduler.observers`)."""
        return SchedulerMetrics(self, model)

    def observe(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        outcome = "success" if status < 400 else "client_error" if status < 500 else "server_error"
        self.requests.labels(model, endpoint, outcome).inc()
        if status < 400:
            self.latency.labels(model, endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST


class SchedulerMetrics:
    """Feeds one model's scheduler events into the histograms (called on the scheduler's thread)."""

    def __init__(self, metrics: Metrics, model: str):
        self.occupancy, self.step_seconds = metrics.occupancy.labels(model), metrics.step_seconds.labels(model)
        self.queue, self.first_token = metrics.queue.labels(model), metrics.first_token.labels(model)
        self.inter_token, self.finished_counter = metrics.inter_token.labels(model), metrics.finished.labels
        self.prefilled, self.reused = metrics.prompt_tokens.labels(model, "prefilled"), metrics.prompt_tokens.labels(model, "reused")
        self.model = model

    def step(self, rows: int, seconds: float) -> None:
        self.occupancy.observe(rows)
        self.step_seconds.observe(seconds)

    def finished(self, request) -> None:
        if request.admitted is not None:
            self.queue.observe(request.admitted - request.arrived)
        times = request.token_times
        if times:  # its prefill ran to the end
            self.reused.inc(request.reused_tokens)
            self.prefilled.inc(len(request.prompt) - request.reused_tokens)
            self.first_token.observe(times[0] - request.arrived)
        for before, after in zip(times, times[1:]):
            self.inter_token.observe(after - before)
        self.finished_counter(self.model, "error" if request.error else request.finish or "cancelled").inc()
