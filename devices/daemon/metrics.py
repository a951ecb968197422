"""Prometheus metrics of the daemon (``GET /metrics``), with prometheus-client.

Counters and gauges are read from the daemon's status at scrape time (one source of truth, no double
book-keeping); the latency distributions are real histograms observed by the loop. Times are in
seconds, as Prometheus names them (``edgesight_inference_seconds``: multiply by 1000 for ms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

#: Inference on a Pi 4 ranges from ~15 ms (FastestDet INT8) to ~400 ms (YOLOX-Nano fp32 at 512).
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
_AGE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)

#: (metric, status section, key, help) for the counters the loop and the source keep.
_COUNTERS = (
    ("edgesight_frames_captured", "source", "frames", "Frames read from the source (also those dropped later)."),
    ("edgesight_frames_dropped", "source", "dropped",
     "Frames replaced by a newer one before the detector took them (latest-frame delivery)."),
    ("edgesight_frames_bad", "source", "bad", "Malformed frames from the source, skipped (None, wrong dtype/shape)."),
    ("edgesight_frames_detected", "loop", "detected", "Frames the detector ran on."),
    ("edgesight_frames_motion_skipped", "loop", "motion_skipped", "Frames the motion gate kept from the detector."),
    ("edgesight_frames_processed", "loop", "processed", "Frames through the events stage."),
    ("edgesight_source_reconnects", "source", "reconnects", "Successful reopens of the source after a loss or stall."),
    ("edgesight_source_stalls", "source", "stalls",
     "Opens or reads stuck past stale_after, abandoned by the watchdog."),
    ("edgesight_source_open_failures", "source", "open_failures", "Failed attempts to open the source."),
    ("edgesight_detector_stalls", "loop", "detector_stalls",
     "Detector calls stuck past detect_timeout, abandoned; the detector was reopened."),
    ("edgesight_detector_errors", "loop", "detector_errors", "Detector calls that raised an error."),
    ("edgesight_detector_bad_frames", "loop", "bad_frames", "Frames the detector refused as malformed."),
    ("edgesight_observer_errors", "loop", "observer_errors", "Frame observer calls that raised an error."),
    ("edgesight_observer_dropped", "loop", "observer_dropped", "Frames not shown to observers (their queue was full)."),
)


class DaemonMetrics:
    """The daemon's registry: a collector over ``status()`` plus latency histograms.

    Args:
        status: Returns the daemon's status dict (``Daemon.status``), called on every scrape.
    """

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.inference = Histogram("edgesight_inference_seconds", "Detector call duration (pre-processing, "
                                   "model, decoding).", buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.frame_age = Histogram("edgesight_frame_age_seconds", "Age of the frame when the detector started "
                                   "on it (capture to inference).", buckets=_AGE_BUCKETS, registry=self.registry)
        self.event_latency = Histogram("edgesight_capture_to_event_seconds", "From a frame's capture to its "
                                       "events being durable in the spool.", buckets=_AGE_BUCKETS,
                                       registry=self.registry)
        self.registry.register(_StatusCollector(status))
        ProcessCollector(registry=self.registry)

    def observe_inference(self, seconds: float, frame_age: float) -> None:
        self.inference.observe(seconds)
        self.frame_age.observe(frame_age)

    def observe_events(self, latency: float) -> None:
        self.event_latency.observe(latency)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        for name, section, key, text in _COUNTERS:
            yield CounterMetricFamily(name, text, value=status[section][key])
        source, loop = status["source"], status["loop"]
        yield _gauge("edgesight_capture_fps", "Frames read per second (last 5 s).", source["fps"])
        yield _gauge("edgesight_detect_fps", "Detector calls per second (last 5 s).", loop["detect_fps"])
        yield _gauge("edgesight_publish_fps", "Frames through the events stage and sinks per second (last 5 s).",
                     loop["process_fps"])
        yield _gauge("edgesight_source_up", "1 while the source is streaming.", source["state"] == "streaming")
        if source["last_frame_age"] is not None:
            yield _gauge("edgesight_source_last_frame_age_seconds", "Seconds since the source last gave a frame.",
                         source["last_frame_age"])
        yield _gauge("edgesight_source_abandoned_threads", "Abandoned capture threads still blocked in the device.",
                     source["abandoned_alive"])
        yield _gauge("edgesight_healthy", "1 when frames flow and the detector answers (as /healthz).",
                     status["health"]["ok"])
        queues = GaugeMetricFamily("edgesight_queue_depth", "Items waiting in the loop's queues.", labels=["queue"])
        for queue, depth in status["queues"].items():
            queues.add_metric([queue], depth)
        yield queues
        events = CounterMetricFamily("edgesight_events", "Events published, per label and type.",
                                     labels=["label", "type"])
        for row in status["events"]:
            events.add_metric([row["label"], row["type"]], row["count"])
        yield events
        reloads = CounterMetricFamily("edgesight_reloads", "Bundle reloads, per result.", labels=["result"])
        for result in ("ok", "refused"):
            reloads.add_metric([result], status["reloads"][result])
        yield reloads
        bundle = status["bundle"]
        yield InfoMetricFamily("edgesight_bundle", "The bundle in use.", value={
            key: str(bundle[key]) for key in ("name", "sha256", "format", "precision", "arch")
        })
        yield from _publisher_metrics(status.get("publisher"))


def _gauge(name: str, text: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


def _publisher_metrics(stats: dict[str, Any] | None) -> Iterator[Metric]:
    """Spool and per-sink figures from ``Publisher.stats()`` (absent until sinks are configured)."""
    if not stats:
        return
    if "spool_depth" in stats:
        yield _gauge("edgesight_spool_depth", "Events in the spool not yet acknowledged by every sink.",
                     stats["spool_depth"])
    if "spool_dropped" in stats:
        yield CounterMetricFamily("edgesight_spool_dropped", "Events dropped because the spool was full.",
                                  value=stats["spool_dropped"])
    sinks = stats.get("sinks") or {}
    sent = CounterMetricFamily("edgesight_sink_sent", "Events a sink acknowledged.", labels=["sink"])
    failed = CounterMetricFamily("edgesight_sink_failed", "Failed sends (retried from the spool).", labels=["sink"])
    connected = GaugeMetricFamily("edgesight_sink_connected", "1 while a sink is connected.", labels=["sink"])
    for sink, figures in sinks.items():
        sent.add_metric([sink], figures.get("sent", 0))
        failed.add_metric([sink], figures.get("failed", 0))
        connected.add_metric([sink], float(bool(figures.get("connected", False))))
    yield from (sent, failed, connected)
