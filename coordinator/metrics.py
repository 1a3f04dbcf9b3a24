"""Prometheus metrics of a coordinator (``edgefl coordinator --metrics-port``), fed by its round lines and devices.

Counters move when a round line is written, by that line's numbers, so they
always add up to ``rounds.jsonl``; the device gauges follow the registry of
retained statuses. ``prometheus_client`` (the coordinator extra) is imported
only when metrics are asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from coordinator.errors import ConfigError
from coordinator.rounds import LATE
from edge_runtime.protocol import DeviceStatus

# Rounds last from seconds (a few devices on a LAN) to an hour (a deadline on a fleet of phones).
DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class CoordinatorMetrics:
    """The metrics, in a registry of their own; ``serve`` exposes them over HTTP at ``/metrics``."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ConfigError("command line", "metrics-port", "the prometheus-client package: "
                              "pip install 'edgefl[coordinator]'", str(exc)) from exc
        self.registry = prom.CollectorRegistry()
        self._server: Any = None
        self._prom = prom
        kw: dict[str, Any] = {"registry": self.registry}
        self.rounds = prom.Counter("edgefl_rounds", "Rounds held, by outcome", ["status"], **kw)
        self.accepted = prom.Counter("edgefl_updates_accepted", "Updates accepted into an aggregate", **kw)
        self.refused = prom.Counter("edgefl_updates_refused", "Device messages refused (updates, and the reports "
                                    "and statuses that go with them), by reason; late: an over-selected device "
                                    "finishing after its round closed", ["reason"], **kw)
        self.bytes_in = prom.Counter("edgefl_bytes_received", "Payload bytes received from devices", **kw)
        self.bytes_out = prom.Counter("edgefl_bytes_sent", "Payload bytes published (artifact, global model, "
                                      "tasks, state)", **kw)
        self.by_codec = prom.Counter("edgefl_updates_by_codec", "Updates accepted, by the codec they travelled in "
                                     "(docs/COMPRESSION.md)", ["codec"], **kw)
        self.update_bytes = prom.Counter("edgefl_update_bytes", "Payload bytes of the accepted updates", **kw)
        self.update_bytes_float32 = prom.Counter(
            "edgefl_update_bytes_float32", "What the accepted updates would have weighed in float32 (headers as sent): "
            "divided by edgefl_update_bytes_total, the compression", **kw)
        self.model_bytes = prom.Counter("edgefl_model_bytes_down", "Bytes the selected devices fetch for their tasks "
                                        "(each its task and the model, as a delta or in full)", **kw)
        self.duration = prom.Histogram("edgefl_round_duration_seconds", "Duration of a round, its evaluation "
                                       "included", buckets=DURATION_BUCKETS, **kw)
        self.test_accuracy = prom.Gauge("edgefl_test_accuracy", "Accuracy of the global model on --test-data, "
                                        "after the last commit", **kw)
        self.federated_accuracy = prom.Gauge("edgefl_federated_accuracy", "Accuracy of the global model over the "
                                             "devices of the last federated evaluation", **kw)
        self.personalized_accuracy = prom.Gauge(
            "edgefl_personalized_accuracy", "Accuracy of the global model with each device's personal weights, over "
            "the devices of the last federated evaluation (artifacts with personal weights only)", **kw)
        self.round = prom.Gauge("edgefl_round", "Number of the last round held", **kw)
        self.model_version = prom.Gauge("edgefl_model_version", "Version of the global model", **kw)
        self.online = prom.Gauge("edgefl_devices_online", "Devices whose retained status says online", **kw)
        self.eligible = prom.Gauge("edgefl_devices_eligible", "Online devices whose policy lets them train", **kw)
        for status in ("committed", "abandoned"):
            self.rounds.labels(status)  # both series exist from the start, at 0

    def observe_round(self, line: Mapping[str, Any]) -> None:
        """Count one round line (``coordinator.report.round_line``)."""
        self.rounds.labels(line["status"]).inc()
        self.accepted.inc(line["reported"])
        for reason, count in {**line["rejected"], LATE: line["late"]}.items():  # the line keeps late apart
            if count:
                self.refused.labels(reason).inc(count)
        self.bytes_in.inc(line["bytes_in"])
        self.bytes_out.inc(line["bytes_out"])
        self._observe_traffic(line)
        self.duration.observe(line["duration_s"])
        self.round.set(line["round"])
        self.model_version.set(line["model_version"])
        for gauge, metrics in ((self.test_accuracy, line.get("test")),
                               (self.federated_accuracy, line.get("federated_eval"))):
            if metrics and metrics.get("accuracy") is not None:
                gauge.set(metrics["accuracy"])
        personalized = (line.get("federated_eval") or {}).get("personalized_accuracy")
        if personalized is not None:
            self.personalized_accuracy.set(personalized)

    def _observe_traffic(self, line: Mapping[str, Any]) -> None:
        for codec, count in (line.get("codec_mix") or {}).items():
            self.by_codec.labels(codec).inc(count)
        self.update_bytes.inc(line.get("bytes_up") or 0)
        self.update_bytes_float32.inc(line.get("bytes_up_float32") or 0)
        self.model_bytes.inc(line.get("bytes_down") or 0)

    def observe_devices(self, statuses: Iterable[DeviceStatus]) -> None:
        online = [s for s in statuses if s.online]
        self.online.set(len(online))
        self.eligible.set(sum(1 for s in online if s.eligible))

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format, as ``/metrics`` serves them."""
        text: bytes = self._prom.generate_latest(self.registry)
        return text

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``host:port`` from a background thread, until ``close``."""
        try:
            self._server, _ = self._prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError("command line", "metrics-port", f"a port free on {host}", f"{port} ({exc})") from exc

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
