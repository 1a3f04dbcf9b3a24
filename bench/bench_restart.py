"""A coordinator (re)starting next to a large fleet: how many retained device statuses it sees, and how fast.

For each broker (a private Mosquitto on its defaults, and the embedded amqtt broker) and fleet size,
N retained statuses are published, then the real ``Coordinator`` starts; the script measures the time
until it has settled (phase ``waiting``) and how many devices its registry holds. Beside it, a raw
paho subscriber at QoS 1 and at QoS 0 counts what the same broker delivers of the same burst: the
reason the coordinator subscribes to statuses at QoS 0.

    python bench/bench_restart.py [--devices 1000 10000]

Writes bench/results/restart.json and the "restart" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_markdown import cpu_name, package_version, update_section  # noqa: E402
from coordinator.broker import EmbeddedBroker  # noqa: E402
from coordinator.config import CoordinatorConfig  # noqa: E402
from coordinator.server import Coordinator  # noqa: E402
from edge_runtime.protocol import DeviceStatus, Topics, encode  # noqa: E402
from tests.federation_tools import Mosquitto, Watcher, clear_retained  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "restart.json"
START, END = "<!-- restart:start -->", "<!-- restart:end -->"


def publish(url: str, topics: Topics, count: int) -> float:
    started = time.perf_counter()
    watcher = Watcher(url)
    for i in range(count):
        status = DeviceStatus(f"dev-{i:05d}", online=True, eligible=False, reasons=("not charging",))
        watcher.publish(topics.status(status.device_id), encode(status), retain=True)
    watcher.close()
    return time.perf_counter() - started


def raw_count(url: str, topic_filter: str, qos: int, quiet_s: float = 2.0) -> int:
    """Devices whose retained status a plain subscriber at ``qos`` receives (distinct topics; amqtt sends some
    twice), counted until none arrives for ``quiet_s``."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    received: set[str] = set()
    last = [time.monotonic()]

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        received.add(message.topic)
        last[0] = time.monotonic()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.connect(host, int(port))
    client.subscribe(topic_filter, qos)
    client.loop_start()
    time.sleep(quiet_s)
    while time.monotonic() - last[0] < quiet_s:
        time.sleep(0.2)
    client.loop_stop()
    client.disconnect()
    return len(received)


def coordinator_sees(url: str, federation: str, artifact: Path, state: Path) -> tuple[int, float]:
    config = CoordinatorConfig(artifact=artifact, state_dir=state, broker=url, federation=federation, rounds=1,
                               min_clients=1, min_reports=1)
    coordinator, stop = Coordinator(config), threading.Event()
    runner = threading.Thread(target=coordinator.run, args=(stop,), daemon=True)
    started = time.perf_counter()
    runner.start()
    while coordinator.machine.phase not in ("waiting", "finished") and time.perf_counter() - started < 300:
        time.sleep(0.05)
    settled = time.perf_counter() - started
    seen = len(coordinator.machine.registry)
    stop.set()
    runner.join(60)
    return seen, settled


def measure(broker: str, url: str, devices: int, artifact: Path, work: Path) -> dict[str, Any]:
    federation = f"bench-restart-{uuid.uuid4().hex[:8]}"
    topics = Topics(federation)
    publish_s = publish(url, topics, devices)
    qos1 = raw_count(url, f"{topics.root}/devices/+/status", 1)
    qos0 = raw_count(url, f"{topics.root}/devices/+/status", 0)
    seen, settled = coordinator_sees(url, federation, artifact, work / federation)
    clear_retained(url, federation)
    row = {"broker": broker, "devices": devices, "publish_s": round(publish_s, 2), "raw_qos1": qos1,
           "raw_qos0": qos0, "coordinator_saw": seen, "settle_s": round(settled, 2)}
    print(json.dumps(row), flush=True)
    return row


def export_artifact(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "edge_runtime.cli", "export", "mlp", "--input-shape", "4", "--classes", "2",
                    "--hidden", "4", "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
    return out


def render(report: dict[str, Any]) -> str:
    lines = [START, "## Coordinator restart: retained device statuses seen", "",
             f"Measured {report['when']} on {report['cpu']} ({report['python']}), mosquitto on its defaults "
             f"(a private instance, no persistence), amqtt {report['amqtt']}. Reproduce: "
             "`python bench/bench_restart.py`. N retained `status` messages are published, then a plain "
             "subscriber at QoS 1 and one at QoS 0 count what the broker delivers of the burst, then the real "
             "coordinator starts and the time until it has settled (phase `waiting`) and its registry's size are "
             "taken. Target (issue 12): the coordinator sees every device, at least 10,000.", "",
             "| broker | devices | raw QoS 1 subscriber | raw QoS 0 subscriber | coordinator saw | settled after (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        verdict = "**pass**" if row["coordinator_saw"] == row["devices"] else "**MISS**"
        lines.append(f"| {row['broker']} | {row['devices']:,} | {row['raw_qos1']:,} | {row['raw_qos0']:,} | "
                     f"{row['coordinator_saw']:,} {verdict} | {row['settle_s']} |")
    return "\n".join([*lines, "", END])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--brokers", nargs="+", default=["mosquitto", "embedded"], choices=["mosquitto", "embedded"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        work = Path(tmp)
        artifact = export_artifact(work / "artifact")
        for broker in args.brokers:
            for devices in args.devices:
                if broker == "mosquitto":
                    with Mosquitto(work) as mosquitto:
                        rows.append(measure(broker, mosquitto.url, devices, artifact, work))
                else:
                    with EmbeddedBroker(port=0) as embedded:
                        rows.append(measure(broker, embedded.url, devices, artifact, work))
    report = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
              "python": sys.version.split()[0], "amqtt": package_version("amqtt"), "rows": rows}
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    update_section(ROOT / "BENCHMARKS.md", render(report), START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
