"""``/metrics`` in the Prometheus text format: a collector that reads SQL at each scrape.

Counting from the tables (``Operations.counts``) rather than from counters kept in memory
means the figures match the SQL exactly, survive restarts, and cost nothing on the C-STORE
path: the node's receive loop is untouched. Exported:

* ``spine_node_instances_received_total``  C-STOREs stored (a duplicate that replaced a copy counts)
* ``spine_node_instances_refused_total{reason}``  refusals by status code (``0xA700``, ``0xC000``...)
* ``spine_node_series_completed_total``  series finished (done, failed or rejected)
* ``spine_node_series{state}``, ``spine_node_jobs{state}``, ``spine_node_deliveries{state}``
* ``spine_node_stage_duration_seconds{stage}``  histogram of the pipeline's stage timings
  (the most recent finished jobs, ``storage.operations.TIMINGS_SAMPLE``)
* ``spine_node_outbox_depth``, ``spine_node_outbox_oldest_age_seconds``
* ``spine_node_disk_free_bytes``, ``spine_node_disk_min_free_bytes``
"""
from __future__ import annotations

import bisect
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from storage.models import JOB_STATES, SERIES_STATES

from dicom_node.web.context import WebContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
FINISHED = ("done", "failed", "rejected")


class SqlCollector:
    """A prometheus-client collector whose every figure comes from one read of the node's tables."""

    def __init__(self, context: WebContext):
        self.context = context

    def collect(self):
        counts = self.context.operations.counts()
        yield _counter("spine_node_instances_received", "Instances stored (C-STORE answered Success)",
                       counts["instances_received"])
        refused = CounterMetricFamily("spine_node_instances_refused", "Instances refused, by status code",
                                      labels=["reason"])
        for code, count in sorted(counts["refused_by_reason"].items()):
            refused.add_metric([code], count)
        yield refused
        series = counts["series_by_state"]
        yield _counter("spine_node_series_completed", "Series finished (done, failed or rejected)",
                       sum(series.get(s, 0) for s in FINISHED))
        yield _by_state("spine_node_series", "Series by state", series, SERIES_STATES)
        yield _by_state("spine_node_jobs", "Jobs by state", counts["jobs_by_state"], JOB_STATES)
        yield _by_state("spine_node_deliveries", "Deliveries by state", counts["deliveries_by_state"],
                        ("pending", "delivered"))
        yield _stage_histogram(counts["timings"])
        yield GaugeMetricFamily("spine_node_outbox_depth", "Deliveries not yet confirmed", value=counts["outbox_depth"])
        oldest = counts["outbox_oldest_at"]
        age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily("spine_node_outbox_oldest_age_seconds", "Age of the oldest pending delivery",
                                value=max(0.0, age))
        try:
            space = self.context.guard.space()
            yield GaugeMetricFamily("spine_node_disk_free_bytes", "Free bytes in the data folder's file system",
                                    value=space.free_bytes)
            yield GaugeMetricFamily("spine_node_disk_min_free_bytes", "The free-space watermark",
                                    value=space.min_free_bytes)
        except OSError:
            pass


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _by_state(name: str, documentation: str, counts: dict, states: tuple[str, ...]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state in states:
        family.add_metric([state], counts.get(state, 0))
    return family


def _stage_histogram(timings: list[dict]) -> HistogramMetricFamily:
    """One histogram per pipeline stage from the jobs' recorded timings (seconds; non-numbers skipped)."""
    family = HistogramMetricFamily("spine_node_stage_duration_seconds", "Pipeline stage durations",
                                   labels=["stage"])
    per_stage: dict[str, list[float]] = {}
    for timing in timings:
        for stage, value in timing.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                per_stage.setdefault(stage, []).append(float(value))
    for stage, values in sorted(per_stage.items()):
        values.sort()
        buckets = [(_bound(b), bisect.bisect_right(values, b)) for b in BUCKETS] + [("+Inf", len(values))]
        family.add_metric([stage], buckets, sum(values))
    return family


def _bound(value: float) -> str:
    return repr(float(value))


def render(context: WebContext) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SqlCollector(context))
    return generate_latest(registry)
