"""The service's Ray metrics (names in ``lifelong.metrics``; dashboards/lifelong-serve.json)."""

from __future__ import annotations

from ray.util import metrics as ray_metrics

from lifelong import metrics


class ServeTelemetry:
    """Requests (by route and status code), latency, the batches Serve formed, learn writes
    and replays, and a per-replica gauge set on a timer (so an idle service keeps a series).

    Args:
        service: The service's name (tag ``service``).
        replica: This replica's id (tag ``replica`` of the up gauge).
    """

    def __init__(self, service: str, replica: str):
        keys = metrics.SERVE_TAG_KEYS
        self.requests = ray_metrics.Counter(metrics.SERVE_REQUESTS, "HTTP requests answered",
                                            tag_keys=(*keys, "code"))
        self.latency = ray_metrics.Histogram(
            metrics.SERVE_LATENCY_S, "seconds from request to answer",
            boundaries=metrics.SERVE_LATENCY_BOUNDARIES, tag_keys=keys)
        self.batch_requests = ray_metrics.Histogram(
            metrics.SERVE_BATCH_REQUESTS, "requests per batch Serve formed",
            boundaries=metrics.SERVE_BATCH_BOUNDARIES, tag_keys=keys)
        self.batch_examples = ray_metrics.Histogram(
            metrics.SERVE_BATCH_EXAMPLES, "examples per batch Serve formed",
            boundaries=metrics.SERVE_BATCH_BOUNDARIES, tag_keys=keys)
        self.writes = ray_metrics.Counter(metrics.SERVE_LEARN_WRITES,
                                          "examples written into the memory by /learn",
                                          tag_keys=("service",))
        self.replays = ray_metrics.Counter(metrics.SERVE_LEARN_REPLAYS,
                                           "/learn requests answered from the record",
                                           tag_keys=("service",))
        self.up = ray_metrics.Gauge(metrics.SERVE_HEARTBEAT, "1 while the replica runs",
                                    tag_keys=("service", "replica"))
        for m in (self.requests, self.latency, self.batch_requests, self.batch_examples,
                  self.writes, self.replays):
            m.set_default_tags({"service": service})
        self.up.set_default_tags({"service": service, "replica": replica})
        self.up.set(1)
        self._timer = metrics.GaugeTimer(lambda: self.up.set(1), name="serve-gauges").start()

    def request(self, route: str, code: int, seconds: float) -> None:
        self.requests.inc(1, {"route": route, "code": str(code)})
        self.latency.observe(seconds, {"route": route})

    def batch(self, route: str, requests: int, examples: int) -> None:
        self.batch_requests.observe(requests, {"route": route})
        self.batch_examples.observe(examples, {"route": route})

    def close(self) -> None:
        self._timer.close()
