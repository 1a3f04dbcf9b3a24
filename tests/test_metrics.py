"""Prometheus metrics of the coordinator: counters fed by round lines, device gauges, and a scrape during a run."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.errors import ConfigError
from coordinator.metrics import CoordinatorMetrics
from edge_runtime.protocol import DeviceStatus
from tests.conftest import FederationFiles
from tests.federation_tools import (
    SYSTEM_BROKER,
    LineReader,
    coordinator_command,
    edgefl,
    free_port,
    start,
    start_device,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def line(number: int, status: str, reported: int, rejected: dict[str, int], late: int, bytes_in: int,
         bytes_out: int, duration: float, accuracy: float | None) -> dict[str, Any]:
    """The fields of a round line that the metrics read."""
    return {"round": number, "status": status, "closed_by": "goal", "model_version": number, "reported": reported,
            "rejected": rejected, "late": late, "bytes_in": bytes_in, "bytes_out": bytes_out, "duration_s": duration,
            "test": None if accuracy is None else {"accuracy": accuracy, "loss": 1.0, "examples": 10},
            "federated_eval": None}


def test_counters_add_up_the_round_lines_and_gauges_keep_the_last_values() -> None:
    metrics = CoordinatorMetrics()
    metrics.observe_round({**line(1, "committed", 3, {"norm_exceeded": 1}, 2, 1000, 5000, 1.5, 0.75),
                           "bytes_up": 900, "bytes_up_float32": 3600, "bytes_down": 4000, "codec_mix": {"int8": 3}})
    metrics.observe_round({**line(2, "abandoned", 1, {"norm_exceeded": 2, "malformed": 1}, 0, 300, 200, 30.0, None),
                           "bytes_up": 100, "bytes_up_float32": 400, "bytes_down": 300, "codec_mix": {"float32": 1}})
    metrics.observe_devices([DeviceStatus("a", True, True), DeviceStatus("b", True, False, ("battery low",)),
                             DeviceStatus("c", False, False, ("offline",))])
    got = samples(metrics.exposition().decode())
    assert got[("edgefl_rounds_total", (("status", "committed"),))] == 1
    assert got[("edgefl_rounds_total", (("status", "abandoned"),))] == 1
    assert got[("edgefl_updates_accepted_total", ())] == 4
    refused = {labels[0][1]: value for (name, labels), value in got.items() if name == "edgefl_updates_refused_total"}
    assert refused == {"norm_exceeded": 3, "malformed": 1, "late": 2}
    assert (got[("edgefl_bytes_received_total", ())], got[("edgefl_bytes_sent_total", ())]) == (1300, 5200)
    assert got[("edgefl_update_bytes_total", ())] == 900 + 100
    assert got[("edgefl_update_bytes_float32_total", ())] == 3600 + 400
    assert got[("edgefl_model_bytes_down_total", ())] == 4000 + 300
    assert got[("edgefl_updates_by_codec_total", (("codec", "int8"),))] == 3
    assert got[("edgefl_updates_by_codec_total", (("codec", "float32"),))] == 1
    assert got[("edgefl_round_duration_seconds_count", ())] == 2
    assert got[("edgefl_round_duration_seconds_sum", ())] == 31.5
    assert got[("edgefl_round_duration_seconds_bucket", (("le", "2.0"),))] == 1
    assert got[("edgefl_test_accuracy", ())] == 0.75  # round 2 committed nothing, so was not tested
    assert (got[("edgefl_round", ())], got[("edgefl_model_version", ())]) == (2, 2)
    assert (got[("edgefl_devices_online", ())], got[("edgefl_devices_eligible", ())]) == (2, 1)


def test_a_port_in_use_is_refused_naming_the_flag() -> None:
    first = CoordinatorMetrics()
    port = free_port()
    first.serve(port, "127.0.0.1")
    try:
        with pytest.raises(ConfigError, match="metrics-port"):
            CoordinatorMetrics().serve(port, "127.0.0.1")
    finally:
        first.close()


def test_prometheus_client_is_imported_only_when_metrics_are_asked_for() -> None:
    code = ("import sys, coordinator.server, coordinator.cli, coordinator.metrics; "
            "assert 'prometheus_client' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def check_against(got: Samples, lines: list[dict[str, Any]]) -> None:
    """The scraped counters are the sums of the round lines so far, the gauges the last line's values."""
    assert sum(v for (n, _), v in got.items() if n == "edgefl_rounds_total") == len(lines)
    committed = sum(line["status"] == "committed" for line in lines)
    assert got[("edgefl_rounds_total", (("status", "committed"),))] == committed
    assert got[("edgefl_updates_accepted_total", ())] == sum(line["reported"] for line in lines)
    refused = sum(v for (n, _), v in got.items() if n == "edgefl_updates_refused_total")
    assert refused == sum(line["late"] + sum(line["rejected"].values()) for line in lines)
    assert got[("edgefl_bytes_received_total", ())] == sum(line["bytes_in"] for line in lines)
    assert got[("edgefl_bytes_sent_total", ())] == sum(line["bytes_out"] for line in lines)
    assert got[("edgefl_round_duration_seconds_count", ())] == len(lines)
    assert got[("edgefl_round_duration_seconds_sum", ())] == pytest.approx(sum(line["duration_s"] for line in lines))
    assert got[("edgefl_test_accuracy", ())] == pytest.approx(lines[-1]["test"]["accuracy"])
    assert got[("edgefl_round", ())] == lines[-1]["round"]


@pytest.mark.broker
@pytest.mark.usefixtures("stop_processes")
def test_metrics_are_scraped_during_a_federation_and_match_its_round_lines(
        federation_files: FederationFiles, tmp_path: Path, federation: str) -> None:
    port = free_port()
    # The round interval leaves seconds between a round line and the next round's, for the scrape.
    coord = start(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--rounds", "3",
                                      "--fraction", "1", "--min-clients", "3", "--min-reports", "2",
                                      "--round-timeout", "30", "--round-interval", "6", "--eval-every", "0",
                                      "--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
                  tmp_path / "coordinator.log")
    wait_until(lambda: "waits for 3 eligible devices" in (tmp_path / "coordinator.log").read_text(), 60,
               "the coordinator to say why it waits")
    for i in range(2):
        start_device(SYSTEM_BROKER, federation, f"d{i}", federation_files.devices[i], tmp_path)
    # One device at the default log level: it says what it does without -v.
    start(edgefl("device", "--broker", SYSTEM_BROKER, "--federation", federation, "--device-id", "d2", "--data",
                 str(federation_files.devices[2]), "--cache-dir", str(tmp_path / "cache-d2")), tmp_path / "d2.log")
    reader = LineReader(coord)
    lines = [reader.next(120)]
    check_against(scrape(port), lines)
    lines.append(reader.next(60))
    got = scrape(port)
    check_against(got, lines)
    assert (got[("edgefl_devices_online", ())], got[("edgefl_devices_eligible", ())]) == (3, 3)
    lines.append(reader.next(60))
    assert coord.wait(30) == 0
    assert all(line["status"] == "committed" for line in lines), lines
    quiet = (tmp_path / "d2.log").read_text()
    for said in ("connected to", "d2: eligible", "received", "round 1: training", "round 1: trained"):
        assert said in quiet, (said, quiet)
