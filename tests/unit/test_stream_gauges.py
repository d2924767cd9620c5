"""A running stream job sets its Ray gauges again on a timer (issue 19, item 1): Ray drops a
gauge series not set within twice its export interval, and a caught-up job waiting for data
(its normal state) has no log points."""

import threading
import time

from lifelong import metrics
from lifelong.streaming.report import StreamGauges


class FakeGauge:
    def __init__(self, name, description="", tag_keys=()):
        self.name, self.sets = name, []
        self.lock = threading.Lock()

    def set_default_tags(self, tags):
        self.default = tags

    def set(self, value, tags=None):
        with self.lock:
            self.sets.append((value, dict(tags or {})))


def test_the_last_values_are_set_again_until_closed(monkeypatch):
    from ray.util import metrics as ray_metrics

    monkeypatch.setattr(ray_metrics, "Gauge", FakeGauge)
    gauges = StreamGauges("s", "m", windows=[100], shots=[1], interval_s=0.05)
    gauges.update({metrics.STREAM_EXAMPLES: 300, metrics.stream_window_metric(100): 0.5,
                   metrics.STREAM_PREQUENTIAL_ACC: 0.4})
    gauges.start()
    time.sleep(0.5)
    gauges.close()
    examples = [v for v, _ in gauges.examples.sets]
    assert len(examples) >= 4 and set(examples) == {300}
    windows = {tags["window"] for _, tags in gauges.acc.sets}
    assert windows == {"all", "100"}  # each tagged series again, with its own tags
    assert gauges.lag_s.sets == []  # never set: nothing invented
    after = len(gauges.examples.sets)
    time.sleep(0.2)
    assert len(gauges.examples.sets) == after  # closed: the thread has ended
