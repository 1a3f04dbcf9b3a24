"""Coordinator benchmark: ingest per strategy vs the broker's raw publish->subscribe throughput, each strategy's
per-update cost, and memory vs updates per round.

Three targets of ``DESIGN.md`` and the update pipeline, measured in one run against the same Mosquitto:

* **Ingest.** The raw baseline is a paho publisher (this process) sending N
  update-sized payloads (QoS 1) to a topic, and a paho subscriber in a fresh
  process receiving them: bytes and messages per second from the first send
  to the last receive. The coordinator side runs the real ``edgefl
  coordinator`` CLI in a fresh process (``--rounds 1 --fraction 1
  --min-clients N --over-select 1 --min-reports N --strategy S``) on an
  exported mlp, once per ``--strategy`` (fedavg and fedadam by default), while
  this process plays N devices over one paho connection, speaking
  ``edge_runtime.protocol``: a retained eligible ``DeviceStatus`` per device,
  then, once every device's ``TrainTask`` has arrived, one valid update per
  device (``UpdateHeader`` + float32 tensors with an L2 norm under
  ``clip_norm``) sent as fast as paho sends, by the same publisher code as the
  baseline. Ingest is accepted updates per second from the first update sent
  to the moment the coordinator prints its round line (after the commit:
  strategy applied, checkpoint written, global model published), read from
  its stdout as it comes. Each repetition runs raw (two subscribers), the
  coordinator once per strategy (their order alternating between
  repetitions), and the first strategy again with ``OPENBLAS_NUM_THREADS=1``
  as a diagnostic. Where the time goes is shown twice: the steps of the
  coordinator's per-update path (``OpenRound`` with the float32 codec) timed
  in-process on fresh payloads, and a cProfile of the coordinator's thread in
  one more run per strategy.
* **Strategies.** Every strategy of ``coordinator.strategies.STRATEGIES``, in
  this process on the same model: the cost of one ``accumulated.add`` (median),
  of ``apply`` at the end of a round of N updates, and, under tracemalloc,
  what the accumulator holds after N updates (streaming: O(model); buffered:
  O(N x model)) and the peak while ``apply`` runs.
* **Memory.** The coordinator process (first strategy) for N = 10, 100, 1000
  devices, one round each, a fresh state folder each time; peak RSS is the
  process's ``VmHWM`` read by the process itself as it exits (the CLI's
  ``main`` runs inside a small wrapper that does only that: ``--worker
  coordinator``), and RSS is sampled every 50 ms by psutil for the time
  course. Updates are sent two ways: in a burst (as fast as possible, like the
  ingest run) and paced below the measured ingest rate, which separates what
  the aggregation keeps from a backlog of received payloads. Where the
  coordinator as shipped cannot start the round (paho's client-side queue
  limit), the failure is recorded and the run repeated with that one limit
  lifted by the wrapper.

Each run uses a fresh federation name, and every retained topic of it (device
statuses and tasks, artifact, global model, coordinator state) is cleared
afterwards. The load average and the busiest other processes are recorded at
start and end: other work on the machine shares its CPUs. Run from the
project root: ``python bench/bench_coordinator.py`` (``--quick`` for a smoke
run that writes nothing unless ``--out`` is given). It writes
``bench/results/coordinator.json`` and its section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from bench_markdown import (  # bench/bench_markdown.py: run as `python bench/<script>.py`
    cpu_name,
    ok,
    package_version,
    update_section,
)

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "
READY = "BENCH_READY"
START, END = "<!-- coordinator:start -->", "<!-- coordinator:end -->"
TARGET_INGEST_RATIO = 0.7  # each ingest strategy's coordinator MB/s over the raw baseline's
INGEST_STRATEGIES = ("fedavg", "fedadam")
APPLY_COUNTS = (10, 100)  # updates per round for the in-process apply cost and the accumulator's memory
FLAT_MODELS = 10  # "flat": what the updates add to RSS grows by at most this many model sizes from the smallest N
PACKAGES = ("paho-mqtt", "numpy", "safetensors", "psutil")
HIDDEN = (256, 128)
INPUT, CLASSES = 784, 10
UPDATE_NORM, CLIP_NORM = 1.0, 5.0
EXAMPLES, TRAIN_LOSS = 64, 0.5
MB = 1e6
SAMPLE_S = 0.05
PACED_SHARE = 0.5  # paced runs send at this share of the measured coordinator ingest rate
STALL_S = 10.0  # the emulated devices subscribe to their tasks again after this long without a new one
BUSY_LOAD = 1.0  # 1-min load average from which the machine counts as shared with other work
STAGES = ("decode_tensors: safetensors header, metadata, parse into numpy (protocol.py)",
          "has_non_finite: isfinite over every tensor (rounds.py)",
          "codec.decode: float32 check_weights, names, shapes, dtypes, isfinite (codecs.py, weights.py)",
          "l2_norm vs codec.max_norm: einsum accumulating in float64 (updates.py, codecs.py)",
          "accumulated.add: the strategy's accumulator (fedavg: WeightedSum.add, arith.py)")


# ---------------------------------------------------------------- small helpers


def mqtt_client(client_id: str) -> Any:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


def connect(client: Any, host: str, port: int, timeout: float = 10) -> None:
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not connected.wait(timeout):
        raise SystemExit(f"no connection to mqtt://{host}:{port} within {timeout:.0f} s")


def subscribe(client: Any, topics: Iterable[str], timeout: float = 10) -> None:
    """Subscribe (QoS 1) and wait for every SUBACK."""
    acked: set[int] = set()
    changed = threading.Condition()

    def on_subscribe(_c: Any, _u: Any, mid: int, *_: Any) -> None:
        with changed:
            acked.add(mid)
            changed.notify_all()

    client.on_subscribe = on_subscribe  # before subscribing: a SUBACK can arrive before subscribe() returns
    pending = {client.subscribe(topic, qos=1)[1] for topic in topics}
    with changed:
        if not changed.wait_for(lambda: pending <= acked, timeout):
            raise SystemExit(f"no SUBACK for {list(topics)} within {timeout:.0f} s")


def vm_status_mb(field: str) -> float:
    """A ``VmHWM``/``VmRSS`` line of this process's ``/proc/self/status``, in MB (10^6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def publish_all(client: Any, messages: Iterable[tuple[str, bytes]], count: int, rate: float | None,
                desc: str, timeout: float = 300) -> dict[str, float]:
    """Publish ``messages`` (QoS 1) as fast as paho sends them, or ``rate`` per second; wait for every PUBACK.

    Returns the wall-clock time of the first publish call and of the last PUBACK, and the bytes sent.
    """
    from tqdm import tqdm

    infos, sent = [], 0
    first = time.time()
    start = time.perf_counter()
    for i, (topic, payload) in enumerate(tqdm(messages, total=count, desc=desc, unit="msg", leave=False)):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        info = client.publish(topic, payload, qos=1)
        if info.rc != 0:
            raise SystemExit(f"publish to {topic} failed with paho error code {info.rc}")
        infos.append(info)
        sent += len(payload)
    issued = time.time()
    for info in infos:
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise SystemExit(f"a publish was not acknowledged within {timeout:.0f} s")
    return {"first_send": first, "issued": issued, "acked": time.time(), "bytes": sent}


# ---------------------------------------------------------------- workers (child processes)


def export_worker(out: Path) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from model_export.exporter import export_model
    from model_export.spec import ModelSpec

    spec = ModelSpec(family="mlp", input_shape=(INPUT,), num_classes=CLASSES, hidden=HIDDEN, name="bench-mlp")
    started = time.perf_counter()
    manifest = export_model(spec, out)
    return {"export_s": time.perf_counter() - started, "model": manifest.model_name,
            "params": manifest.parameter_count}


def subscriber_worker(broker: str, topic: str, count: int, timeout: float, keep: bool) -> dict[str, Any]:
    """Receive ``count`` messages on ``topic``; the times of the first and the last (wall clock).

    ``keep``: hold on to every payload instead of dropping it at once. Measured both ways because
    freeing each 1 MB payload right away (memory handed back to the OS and faulted in again for the
    next one) makes the plain subscriber the slower of the two here.
    """
    kept: list[bytes] = []
    host, port = broker_host_port(broker)
    client = mqtt_client(f"bench-sub-{os.getpid()}")
    got = {"n": 0, "bytes": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        now = time.time()
        if got["n"] == 0:
            got["first"] = now
        got["n"] += 1
        got["bytes"] += len(message.payload)
        if keep:
            kept.append(message.payload)
        got["last"] = now
        if got["n"] >= count:
            done.set()

    client.on_message = on_message
    connect(client, host, port)
    subscribe(client, [topic])
    print(READY, flush=True)
    done.wait(timeout)
    client.disconnect()
    client.loop_stop()
    return {"received": got["n"], "bytes": got["bytes"], "first_receive": got["first"],
            "last_receive": got["last"], "peak_rss_mb": vm_status_mb("VmHWM")}


def coordinator_worker(argv: list[str], profile: Path | None, lift_queue_limit: bool) -> int:
    """``edgefl`` exactly as ``python -m edge_runtime.cli``, reporting this process's peak RSS as it ends.

    ``lift_queue_limit``: paho's client-side limit of 1000 unacknowledged publishes, which
    ``edge_runtime.mqtt`` sets, is lifted (the only change); used only where the coordinator as
    shipped fails at round start with ``MQTT_ERR_QUEUE_SIZE``, and reported as such.
    """
    if lift_queue_limit:
        import paho.mqtt.client as paho

        original = paho.Client.max_queued_messages_set
        paho.Client.max_queued_messages_set = lambda self, _value: original(self, 0)  # type: ignore[method-assign,assignment]
    from edge_runtime.cli import main as edgefl_main

    profiler = cProfile.Profile() if profile else None
    code = -1
    try:
        if profiler is not None:
            profiler.enable()
        code = edgefl_main(argv)
    finally:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        print(RESULT_PREFIX + json.dumps({"exit": code, "vmhwm_mb": vm_status_mb("VmHWM"),
                                          "vmrss_mb": vm_status_mb("VmRSS")}), flush=True)
    return code


def broker_host_port(url: str) -> tuple[str, int]:
    from edge_runtime.mqtt import BrokerUrl

    parsed = BrokerUrl.parse(url)
    return parsed.host, parsed.port


# ---------------------------------------------------------------- emulated devices


class Fleet:
    """N devices behind one paho connection: retained statuses, tasks received, updates sent, global watched."""

    def __init__(self, broker: str, federation: str, count: int, update: dict[str, np.ndarray]) -> None:
        from edge_runtime.protocol import Topics

        self.topics = Topics(federation)
        self.devices = [f"dev-{i:04d}" for i in range(count)]
        self.update = update
        self.tasks: dict[str, Any] = {}
        self.globals: dict[int, float] = {}  # model version -> wall time this process received it
        self.withdrawn: dict[str, float] = {}  # task topic -> wall time its empty (withdrawing) payload arrived
        self._lock = threading.Lock()
        self._all_tasks = threading.Event()
        self.resubscribed = 0  # times the task topics were subscribed again (tasks the broker dropped)
        self._new_global = threading.Condition(self._lock)
        host, port = broker_host_port(broker)
        self.client = mqtt_client(f"bench-fleet-{federation}")
        self.client.on_message = self._on_message
        connect(self.client, host, port)
        subscribe(self.client, [f"{self.topics.root}/devices/+/task", self.topics.global_model])

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:  # paho's network thread
        from edge_runtime.protocol import GlobalHeader, TrainTask, decode, decode_tensors

        now, payload = time.time(), bytes(message.payload)
        if not payload:  # a task withdrawn by the coordinator as the round closes (or a topic being cleared)
            device = message.topic.split("/")[-2]
            with self._lock:
                if device in self.tasks:  # not the withdrawals a starting coordinator sends before its round
                    self.withdrawn.setdefault(message.topic, now)
            return
        if message.topic == self.topics.global_model:
            header, _ = decode_tensors(payload, GlobalHeader, len(payload))
            with self._lock:
                self.globals.setdefault(header.version, now)
                self._new_global.notify_all()
            return
        task = decode(payload, TrainTask)
        device = message.topic.split("/")[-2]
        with self._lock:
            self.tasks[device] = task
            if len(self.tasks) == len(self.devices):
                self._all_tasks.set()

    def announce(self) -> None:
        from edge_runtime.protocol import DeviceStatus, encode

        messages = ((self.topics.status(d), encode(DeviceStatus(d, online=True, eligible=True, examples=EXAMPLES,
                                                                sent_at=time.time()))) for d in self.devices)
        infos = [self.client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(60)

    def wait_tasks(self, timeout: float, alive: Callable[[], bool]) -> None:
        """Until every device holds its task. Mosquitto drops QoS 1 messages past a slow subscriber's queue
        (``max_queued_messages``, 1000 by default), and on a busy machine this process can be that subscriber (seen:
        825 of 1000 tasks arrived while all 1000 were retained): after
        ``STALL_S`` without a new task the task topics are subscribed again, and the retained tasks come again."""
        deadline = time.monotonic() + timeout
        seen, since = len(self.tasks), time.monotonic()
        while not self._all_tasks.wait(0.2):
            now = time.monotonic()
            if now > deadline or not alive():
                raise RuntimeError(f"{len(self.tasks)} of {len(self.devices)} tasks arrived")
            if len(self.tasks) != seen:
                seen, since = len(self.tasks), now
            elif seen and now - since > STALL_S:
                self.resubscribed += 1
                subscribe(self.client, [f"{self.topics.root}/devices/+/task"])
                since = now

    def updates(self) -> Iterator[tuple[str, bytes]]:
        """Each device's update for its task, encoded when it is sent."""
        from edge_runtime.protocol import UpdateHeader, encode_tensors
        from edge_runtime.updates import l2_norm

        norm = l2_norm(self.update)
        for device in self.devices:
            task = self.tasks[device]
            header = UpdateHeader(device, task.task_id, task.round, task.model_version, EXAMPLES, TRAIN_LOSS, norm)
            yield self.topics.update(device), encode_tensors(header, self.update)

    def wait_global(self, model_version: int, timeout: float) -> float | None:
        with self._new_global:
            self._new_global.wait_for(lambda: model_version in self.globals, timeout)
            return self.globals.get(model_version)

    def clear_retained(self) -> None:
        """Empty retained payloads on every topic of this federation that this run retained."""
        topics = [self.topics.artifact, self.topics.global_model, self.topics.coordinator]
        topics += [t for d in self.devices for t in (self.topics.status(d), self.topics.task(d))]
        infos = [self.client.publish(topic, b"", qos=1, retain=True) for topic in topics]
        for info in infos:
            info.wait_for_publish(60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------- runs


class StdoutReader:
    """Reads a process's stdout on a thread, noting when each line arrived (the round line marks the commit)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._round = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))
            if line.startswith("{"):
                self._round.set()

    def wait_round(self, timeout: float, alive: Callable[[], bool]) -> float | None:
        """Wall time the round line was printed, or None if the process ended or ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while not self._round.wait(0.05):
            if time.monotonic() > deadline or not (alive() or self._thread.is_alive()):
                return None
        return next(t for t, line in self.lines if line.startswith("{"))

    def text(self) -> str:
        self._thread.join(30)
        return "\n".join(line for _, line in self.lines)


class RssSampler:
    """psutil RSS of a process every ``SAMPLE_S`` seconds until it exits: [(wall time, MB)]."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.samples: list[tuple[float, float]] = []
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                rss = self._process.memory_info().rss
            except psutil.Error:
                return
            self.samples.append((time.time(), rss / MB))
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, when: float) -> float | None:
        """The last sample taken before ``when``."""
        before = [mb for t, mb in self.samples if t <= when]
        return before[-1] if before else None


def raw_messages(topic: str, update: dict[str, np.ndarray], count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` update payloads, encoded as they are sent, exactly as ``Fleet.updates`` does (same sender work)."""
    from edge_runtime.protocol import UpdateHeader, encode_tensors
    from edge_runtime.updates import l2_norm

    norm = l2_norm(update)
    for i in range(count):
        header = UpdateHeader(f"dev-{i:04d}", "0" * 16, 1, 0, EXAMPLES, TRAIN_LOSS, norm)
        yield topic, encode_tensors(header, update)


def raw_run(args: argparse.Namespace, update: dict[str, np.ndarray], count: int, folder: Path,
            keep: bool) -> dict[str, Any]:
    """The broker alone: N update payloads from a paho publisher to a paho subscriber in another process."""
    topic = f"edgefl-bench/raw-{uuid.uuid4().hex[:10]}/data"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "subscriber", "--broker", args.broker,
           "--topic", topic, "--count", str(count)] + (["--keep"] if keep else [])
    with open(folder / "subscriber.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != READY:
        proc.kill()
        raise SystemExit(f"raw subscriber did not start; see {folder / 'subscriber.log'}")
    host, port = broker_host_port(args.broker)
    client = mqtt_client(f"bench-pub-{os.getpid()}")
    connect(client, host, port)
    try:
        sent = publish_all(client, raw_messages(topic, update, count), count, None, "raw publish")
    finally:
        client.disconnect()
        client.loop_stop()
    out, _ = proc.communicate(timeout=120)
    sub = parse_result(out, "raw subscriber")
    if sub["received"] != count:
        raise SystemExit(f"raw subscriber received {sub['received']} of {count} messages")
    seconds = sub["last_receive"] - sent["first_send"]
    return {"subscriber": "keeps payloads" if keep else "drops payloads", "messages": count,
            "payload_bytes": sent["bytes"] / count, "bytes": sub["bytes"], "seconds": seconds,
            "msgs_per_s": count / seconds, "mb_per_s": sub["bytes"] / MB / seconds,
            "publisher_acked_s": sent["acked"] - sent["first_send"], "subscriber_peak_rss_mb": sub["peak_rss_mb"]}


def coordinator_run(args: argparse.Namespace, artifact: Path, count: int, update: dict[str, np.ndarray],
                    folder: Path, strategy: str, rate: float | None = None, profile: Path | None = None,
                    label: str = "", lift_queue_limit: bool = False,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """One round of a real coordinator process (``--strategy strategy``) with ``count`` emulated devices; timings
    and memory.

    A coordinator that exits before every device has its task comes back as ``{"failed": ...}``.
    """
    federation = f"bench-{uuid.uuid4().hex[:12]}"
    state = folder / f"state-{federation}"
    log_path = folder / f"coordinator-{federation}.log"
    fleet = Fleet(args.broker, federation, count, update)
    proc: subprocess.Popen[str] | None = None
    sampler: RssSampler | None = None
    failed = None
    try:
        fleet.announce()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "coordinator"]
        cmd += ["--profile", str(profile)] if profile else []
        cmd += ["--lift-queue-limit"] if lift_queue_limit else []
        cmd += ["--", "coordinator", "--artifact", str(artifact), "--state-dir", str(state), "--broker", args.broker,
                "--federation", federation, "--rounds", "1", "--fraction", "1", "--min-clients", str(count),
                "--over-select", "1", "--min-reports", str(count), "--round-timeout", "300", "--eval-every", "0",
                "--strategy", strategy]
        spawned = time.time()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        sampler, reader = RssSampler(proc.pid), StdoutReader(proc)
        running = proc
        try:
            fleet.wait_tasks(120, lambda: running.poll() is None)
        except RuntimeError as exc:
            failed = f"{exc} before the coordinator exited (code {proc.poll()})"
            if proc.poll() is None:
                proc.terminate()
            proc.wait(60)
            out = reader.text()
        else:
            tasks_at = time.time()
            desc = f"{label or 'updates'} ({strategy}, {'paced' if rate else 'burst'}, N={count})"
            sent = publish_all(fleet.client, fleet.updates(), count, rate, desc)
            committed = reader.wait_round(args.commit_timeout, lambda: running.poll() is None)
            if committed is None:
                proc.terminate()  # the CLI stops cleanly on SIGTERM, and the wrapper still reports its peak RSS
            proc.wait(120)
            out = reader.text()
            global_at = fleet.wait_global(1, 3.0)  # what the devices saw: the new global model, the withdrawn tasks
            withdrawn = len(fleet.withdrawn)
            closed_at = min(fleet.withdrawn.values(), default=None)
        sampler.stop()
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        fleet.clear_retained()
        fleet.close()
        shutil.rmtree(state, ignore_errors=True)
    result = parse_result(out, f"coordinator (log: {log_path})")
    base: dict[str, Any] = {"strategy": strategy, "devices": count,
                            "arrivals": f"paced {rate:.0f}/s" if rate else "burst", "rate": rate,
                            "queue_limit_lifted": lift_queue_limit, "env": env or {}, "exit": result["exit"],
                            "task_resubscribes": fleet.resubscribed,
                            "peak_rss_mb": result["vmhwm_mb"], "rss_at_exit_mb": result["vmrss_mb"]}
    if failed is not None:
        errors = [ln.strip() for ln in log_path.read_text().splitlines() if "error" in ln.lower()]
        return base | {"failed": failed, "committed": False, "errors": errors[-3:]}
    round_lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    line = round_lines[-1] if round_lines else {}
    first = sent["first_send"]
    payload_bytes = sent["bytes"] / count
    run = base | {
        "payload_bytes": payload_bytes, "bytes": sent["bytes"], "committed": committed is not None,
        "rss_when_updates_start_mb": sampler.at(first), "sampled_peak_rss_mb": max(mb for _, mb in sampler.samples),
        "startup_to_tasks_s": tasks_at - spawned, "send_s": sent["acked"] - first,
        "first_withdrawal_s": closed_at - first if closed_at else None,
        "devices_got_new_global": global_at is not None, "devices_got_withdrawal": withdrawn,
        "round_line": line,
        "rss_samples": [(round(t - first, 3), round(mb, 1)) for t, mb in sampler.samples],
    }
    if committed is not None:
        seconds = committed - first
        reported = int(line.get("reported", 0))
        run |= {"seconds": seconds, "accepted": reported, "updates_per_s": reported / seconds,
                "mb_per_s": reported * payload_bytes / MB / seconds}
    return run


def parse_result(stdout: str, what: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise SystemExit(f"{what} printed no result:\n{stdout[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):])
    return result


# ---------------------------------------------------------------- where the time goes


def make_update(specs: Iterable[Any], norm: float, seed: int = 0) -> dict[str, np.ndarray]:
    """A random float32 update with L2 norm ``norm``."""
    from edge_runtime.updates import l2_norm

    rng = np.random.default_rng(seed)
    tensors = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in specs}
    scale = np.float32(norm / l2_norm(tensors))
    return {name: (value * scale).astype(np.float32) for name, value in tensors.items()}


def round_setup(artifact: Path, strategy: Any, capacity: int) -> tuple[Any, Any, Any]:
    """The artifact's weight specs, a fresh ``ServerState`` for ``strategy`` and a ``RoundPlan`` for ``capacity``
    devices (``dev-0000`` ...) with the float32 codec, as the coordinator's round holds them."""
    from coordinator.rounds import RoundPlan
    from coordinator.server_state import ServerState
    from edge_runtime.artifact import Artifact

    loaded = Artifact.load(artifact)
    weights = loaded.initial_weights()
    state = ServerState("bench", strategy.name, weights, strategy.init(weights))
    devices = frozenset(f"dev-{i:04d}" for i in range(capacity))
    plan = RoundPlan(1, "task", 0, devices, capacity, capacity, capacity, CLIP_NORM, time.time() + 3600,
                     codec="float32", max_examples=EXAMPLES, weighting="examples")
    return loaded.manifest, state, plan


def stage_times(artifact: Path, update: dict[str, np.ndarray], reps: int,
                strategies: Iterable[str]) -> dict[str, Any]:
    """Each step of the coordinator's per-update path, timed in this process on the same payload (median ms); the
    steps with fedavg's accumulator, the whole path (``decode_tensors`` + ``OpenRound.offer_update``) per strategy."""
    from coordinator.rounds import OpenRound, has_non_finite
    from coordinator.strategies import build_strategy
    from edge_runtime.codecs import get_codec
    from edge_runtime.protocol import UpdateHeader, decode_tensors, encode_tensors
    from edge_runtime.updates import l2_norm

    fedavg = build_strategy("fedavg", {})
    manifest, state, plan = round_setup(artifact, fedavg, reps + 1)
    codec = get_codec(plan.codec)
    specs, limit, parameters = manifest.weights, codec.payload_limit(manifest.parameter_count), manifest.parameter_count
    devices = sorted(plan.selected)
    norm = l2_norm(update)
    payloads = [encode_tensors(UpdateHeader(d, "task", 1, 0, EXAMPLES, TRAIN_LOSS, norm), update) for d in devices]
    accumulated = fedavg.begin(state.weights, len(devices))
    steps: dict[str, list[float]] = {name: [] for name in STAGES}
    for payload in payloads:  # the path of OpenRound.offer_update, step by step, on a fresh payload each time
        t0 = time.perf_counter()
        _header, tensors = decode_tensors(payload, UpdateHeader, limit)
        t1 = time.perf_counter()
        if has_non_finite(tensors):
            raise SystemExit("the benchmark's own update holds NaN or Inf")
        t2 = time.perf_counter()
        checked = codec.decode(tensors, specs, 0)
        t3 = time.perf_counter()
        if l2_norm(checked) > codec.max_norm(CLIP_NORM, parameters):
            raise SystemExit("the benchmark's own update is over the clip bound")
        t4 = time.perf_counter()
        accumulated.add(checked, float(EXAMPLES))
        t5 = time.perf_counter()
        for name, took in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            steps[name].append(took * 1e3)
    medians = {name: statistics.median(times[1:]) for name, times in steps.items()}  # the first one warms up
    whole: dict[str, float] = {}
    for name in strategies:
        strategy = build_strategy(name, {})
        _manifest, state, plan = round_setup(artifact, strategy, reps + 1)
        current = OpenRound(plan, state, specs, strategy)
        times_ms = []
        for device, payload in zip(devices, payloads, strict=True):
            started = time.perf_counter()
            header, tensors = decode_tensors(payload, UpdateHeader, limit)
            refused = current.offer_update(device, True, header, tensors)
            times_ms.append((time.perf_counter() - started) * 1e3)
            if refused is not None:
                raise SystemExit(f"the benchmark's own update was refused by a {name} round: {refused}")
        whole[name] = statistics.median(times_ms[1:])
    return {"reps": reps, "steps_ms": medians, "sum_of_steps_ms": sum(medians.values()), "whole_ms": whole,
            "max_updates_per_s": {name: 1e3 / ms for name, ms in whole.items()}}


def strategy_costs(artifact: Path, update: dict[str, np.ndarray], counts: Iterable[int],
                   apply_reps: int) -> dict[str, Any]:
    """Every registered strategy, in this process: ``accumulated.add`` per update and ``apply`` per round (median
    ms, untraced), then what the accumulator holds and the peak of ``apply`` under tracemalloc (fresh decoded
    updates, as a round receives them)."""
    from coordinator.strategies import STRATEGIES, build_strategy
    from edge_runtime.artifact import Artifact
    from edge_runtime.codecs import get_codec
    from edge_runtime.protocol import UpdateHeader, decode_tensors, encode_tensors
    from edge_runtime.updates import l2_norm

    counts = sorted(counts)
    codec = get_codec("float32")
    specs = Artifact.load(artifact).manifest.weights
    limit = codec.payload_limit(sum(v.size for v in update.values()))
    payload = encode_tensors(UpdateHeader("dev-0000", "task", 1, 0, EXAMPLES, TRAIN_LOSS, l2_norm(update)), update)

    def fresh() -> dict[str, np.ndarray]:
        """A freshly decoded update, as ``OpenRound`` hands it to the accumulator."""
        _header, tensors = decode_tensors(payload, UpdateHeader, limit)
        return codec.decode(tensors, specs, 0)

    out: dict[str, Any] = {}
    for name in STRATEGIES:
        strategy = build_strategy(name, {})
        _manifest, state, _plan = round_setup(artifact, strategy, max(counts))
        row: dict[str, Any] = {"streaming": bool(strategy.streaming), "accumulator": None, "apply_ms": {},
                               "add_ms": None, "held_mb": {}, "begin_mb": {}, "apply_peak_mb": {}}
        for n in counts:
            accumulated = strategy.begin(state.weights, n)
            row["accumulator"] = type(accumulated).__name__
            adds = []
            for _ in range(n):
                tensors = fresh()
                started = time.perf_counter()
                accumulated.add(tensors, float(EXAMPLES))
                adds.append((time.perf_counter() - started) * 1e3)
            if n == max(counts):
                row["add_ms"] = statistics.median(adds[1:])
            applies = []
            for _ in range(apply_reps):
                started = time.perf_counter()
                strategy.apply(state, accumulated)
                applies.append((time.perf_counter() - started) * 1e3)
            row["apply_ms"][n] = statistics.median(applies)
            del accumulated
            row["begin_mb"][n], row["held_mb"][n], row["apply_peak_mb"][n] = traced_round(strategy, state, n, fresh)
        out[name] = row
        print(f"strategy {name:13s} add {row['add_ms']:.3f} ms, apply " + ", ".join(
            f"N={n} {row['apply_ms'][n]:.1f} ms" for n in counts) + "; held " + ", ".join(
            f"N={n} {row['held_mb'][n]:.1f} MB" for n in counts), flush=True)
    return {"counts": counts, "apply_reps": apply_reps, "strategies": out}


def traced_round(strategy: Any, state: Any, count: int,
                 fresh: Callable[[], dict[str, np.ndarray]]) -> tuple[float, float, float]:
    """Under tracemalloc: MB held by a fresh accumulator, by it after ``count`` updates (each decoded inside the
    trace, then dropped by the caller), and the peak above that while ``apply`` runs."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        accumulated = strategy.begin(state.weights, count)
        begun = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            accumulated.add(fresh(), float(EXAMPLES))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = strategy.apply(state, accumulated)
        peak = tracemalloc.get_traced_memory()[1]
        del result, accumulated
    finally:
        tracemalloc.stop()
    return begun / MB, held / MB, (peak - held) / MB


PROFILED = [("machine.py", "_dispatch"), ("machine.py", "_on_update"), ("protocol.py", "decode_tensors"),
            ("weights.py", "weights_from_bytes"), ("rounds.py", "offer_update"), ("rounds.py", "_check_tensors"),
            ("rounds.py", "has_non_finite"), ("codecs.py", "decode"), ("weights.py", "check_weights"),
            ("updates.py", "l2_norm"), ("arith.py", "add"), ("machine.py", "_on_status"),
            ("machine.py", "_end_training"), ("rounds.py", "close"), ("fedavg.py", "apply"), ("_adaptive.py", "apply"),
            ("checkpoint.py", "save_checkpoint"), ("machine.py", "_publish_global")]


def profile_summary(path: Path, updates: int) -> dict[str, Any]:
    """The coordinator thread's time per update in the functions of its update path (cProfile)."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    functions: dict[str, Any] = {}
    for (file, _line, name), (_cc, calls, _tt, cumulative, _callers) in stats.items():
        for suffix, wanted_name in PROFILED:
            if name == wanted_name and file.endswith("/" + suffix):
                functions[f"{suffix}:{name}"] = {"calls": calls, "cumulative_s": cumulative,
                                                  "ms_per_update": cumulative * 1e3 / updates}
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)
    idle = ("acquire", "wait", "sleep", "get")
    busiest = [{"function": f"{Path(file).name}:{line}:{name}", "calls": calls, "own_s": own}
               for (file, line, name), (_cc, calls, own, _ct, _c) in top if not any(name.endswith(w) for w in idle)]
    ordered = {key: functions[key] for key in (f"{s}:{n}" for s, n in PROFILED) if key in functions}
    return {"updates": updates, "functions": ordered, "top_own_time": busiest[:12]}


# ---------------------------------------------------------------- machine and report


def strategy_names() -> list[str]:
    from coordinator.strategies import STRATEGIES

    return list(STRATEGIES)


def busy_processes(least_percent: float = 10.0) -> list[dict[str, Any]]:
    """Other processes using at least ``least_percent`` of a CPU over one second: name, script, CPU %."""
    import psutil

    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid != os.getpid()]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)  # the first call starts the measurement
    time.sleep(1.0)
    busy = []
    for proc in procs:
        try:
            percent = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if percent >= least_percent:
            cmdline = proc.info["cmdline"] or []
            rest = cmdline[1:]
            script = next((Path(a).name for a in rest if a.endswith(".py")), "")
            if not script and "-m" in rest[:-1]:
                script = "-m " + rest[rest.index("-m") + 1]
            busy.append({"name": proc.info["name"], "script": script, "cpu_percent": percent})
    return sorted(busy, key=lambda b: -b["cpu_percent"])


def machine_info() -> dict[str, Any]:
    cpu = cpu_name()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        first = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        broker = first[0].strip() if first else "unknown"
    except OSError:
        broker = "unknown (mosquitto not on PATH)"
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "mosquitto": broker,
            "packages": {p: package_version(p) for p in PACKAGES}}





def render_markdown(report: dict[str, Any]) -> str:
    m, model, ingest = report["machine"], report["model"], report["ingest"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [START, "## Coordinator: ingest per strategy vs raw broker throughput, strategy costs, memory vs "
             "updates per round", "",
             "One run of the benchmark against the local Mosquitto (its system configuration: persistence on, "
             "default queue and in-flight limits), on the update pipeline (`coordinator/strategies/`, "
             "`RoundMachine`, float32 codec). The model is an exported mlp "
             f"({model['input']} → {' → '.join(str(h) for h in model['hidden'])} → {model['classes']}, "
             f"{model['params']:,} float32 parameters, {model['float32_mb']:.2f} MB); one update is "
             f"{model['update_payload_bytes'] / MB:.3f} MB of safetensors. The benchmark process plays the devices "
             "over one paho connection speaking `edge_runtime.protocol` (retained eligible status, wait for the "
             "`TrainTask`, one valid update each, L2 norm 1 under the clip bound 5); the coordinator is the real "
             "`edgefl coordinator` in its own process (`--rounds 1 --fraction 1 --min-clients N --over-select 1 "
             "--min-reports N --round-timeout 300 --eval-every 0 --strategy S`, the strategy's default "
             "hyperparameters), a fresh federation and state folder per run, every retained topic cleared afterwards.",
             "", "Reproduce: `python bench/bench_coordinator.py` (raw numbers: `bench/results/coordinator.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cpu_count']} CPUs), {m['platform']}, Python {m['python']}; "
             f"{m['mosquitto']}; {pkgs}. Load average at start {report['loadavg_start'][0]:.2f}, at end "
             f"{report['loadavg_end'][0]:.2f} (1 min); {report['bench_seconds']:.0f} s in all.", ""]
    lines += render_load(report)
    lines += render_ingest(ingest)
    lines += render_stages(ingest)
    lines += render_strategies(report["strategy_costs"], model)
    lines += render_memory(report["memory"])
    lines += render_lost(report)
    return "\n".join([*lines, END])


def render_load(report: dict[str, Any]) -> list[str]:
    """A warning when other work shared the machine: load average at or above ``BUSY_LOAD``, or busy processes."""
    loads = (report["loadavg_start"][0], report["loadavg_end"][0])
    others = [*report.get("busy_processes_start", []), *report.get("busy_processes_end", [])]
    if loads[0] < BUSY_LOAD and not others:  # the load at the end includes this benchmark's own processes
        return []
    seen = sorted({f"{o['name']}{' ' + o['script'] if o['script'] else ''}" for o in others})
    return [f"**The machine was shared.** This {report['machine']['cpu_count']}-core machine had a 1-min load "
            f"average of {loads[0]:.2f} at the start and {loads[1]:.2f} at the end: other benchmark and test "
            "processes (other engineers' work on the same tree, some against the same Mosquitto) may have been "
            "running at the same time, and rates measured then are lower and noisier than on an idle machine "
            "(the CPU busy share before each ingest turn is listed below)."
            + (f" Processes above 10% of a CPU at start or end: {', '.join(seen)}." if seen else ""), ""]


def render_ingest(ingest: dict[str, Any]) -> list[str]:
    drop, keep = ingest["raw_drops_median"], ingest["raw_keeps_median"]
    single, names = ingest["coordinator_one_blas_thread_median"], ingest["strategies"]
    raw = ingest["raw_median"]
    n = ingest["updates"]
    busy = ", ".join(f"{r['cpu_busy_percent_before']:.0f}%" for r in ingest["raw_runs_subscriber_drops"])
    target = f"{ingest['target_min']:.0%}"

    def share(run: dict[str, Any]) -> str:
        return f"{run['mb_per_s'] / raw['mb_per_s']:.0%}"

    lines = ["### Ingest vs the broker's raw publish → subscribe, per strategy", "",
             f"N = {n} update-sized payloads (QoS 1) per run, each encoded as it is sent by the same sender code on "
             f"both sides. Runs in turn, {ingest['repeats']} times: raw with a subscriber that drops each payload, raw "
             f"with one that keeps them, the coordinator with each of {', '.join(f'`{x}`' for x in names)} (their "
             f"order alternating between turns), `{ingest['one_blas_thread_strategy']}` again with "
             "`OPENBLAS_NUM_THREADS=1` (a diagnostic, not a target number); the median run of each is shown. Raw: a "
             "paho publisher to a paho subscriber in another process, first send to last receive; the faster of the "
             "two subscribers is the baseline. Coordinator: first update sent to the round line the coordinator "
             "prints after the commit (strategy applied, checkpoint written, new global model published); all "
             f"{n} updates accepted in every run. CPU busy (all processes) in the second before each turn: {busy}.",
             "", "| path | updates | seconds | updates/s | MB/s | share of raw |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for label, run in (("raw, subscriber drops each payload", drop), ("raw, subscriber keeps the payloads", keep)):
        mark = " (baseline)" if run is raw or run["mb_per_s"] == raw["mb_per_s"] else ""
        lines.append(f"| {label}{mark} | {n} | {run['seconds']:.2f} | {run['msgs_per_s']:.0f} | "
                     f"{run['mb_per_s']:.0f} | {share(run)} |")
    for name in names:
        entry = ingest["coordinator"][name]
        c = entry["median"]
        lines.append(f"| **coordinator ingest, `{name}`** | {c['accepted']} | {c['seconds']:.2f} | "
                     f"{c['updates_per_s']:.0f} | {c['mb_per_s']:.0f} | **{entry['ratio']:.0%}**, target ≥ {target}: "
                     f"{ok(entry['target_holds'])} |")
    lines += [f"| coordinator, `{ingest['one_blas_thread_strategy']}`, `OPENBLAS_NUM_THREADS=1` | "
              f"{single['accepted']} | {single['seconds']:.2f} | {single['updates_per_s']:.0f} | "
              f"{single['mb_per_s']:.0f} | {ingest['ratio_one_blas_thread']:.0%} |", ""]
    columns = ["raw drops", "raw keeps", *names, f"{ingest['one_blas_thread_strategy']} with one BLAS thread"]
    turns = zip(ingest["raw_runs_subscriber_drops"], ingest["raw_runs_subscriber_keeps"],
                *(ingest["coordinator"][name]["runs"] for name in names), ingest["coordinator_one_blas_thread_runs"],
                strict=True)
    lines += [f"Every turn, MB/s ({' / '.join(columns)}): "
              + "; ".join(" / ".join(f"{r['mb_per_s']:.0f}" for r in turn) for turn in turns) + ".", ""]
    return lines


def render_stages(ingest: dict[str, Any]) -> list[str]:
    stages, names = ingest["stages"], ingest["strategies"]
    lines = ["Where the coordinator's time goes per update. The steps of its update path (`decode_tensors` in "
             "`RoundMachine._on_update`, then what `OpenRound.offer_update` does, with fedavg's accumulator) timed "
             f"one after the other in the benchmark process on fresh payloads (median of {stages['reps']}), and the "
             "whole path timed as one per strategy. Below, cumulative time per update in a cProfile of the "
             f"coordinator's thread during one more {ingest['updates']}-update round per strategy (profiling adds "
             "overhead; the machine is also busy with the broker, the sender and paho's network thread then).", "",
             "| step (per update) | in-process (ms) | share |", "| --- | ---: | ---: |"]
    total = stages["sum_of_steps_ms"]
    lines += [f"| {name} | {ms:.2f} | {ms / total:.0%} |" for name, ms in stages["steps_ms"].items()]
    lines += [f"| **whole path, `{name}`**, timed as one | **{stages['whole_ms'][name]:.2f}** | at most "
              f"{stages['max_updates_per_s'][name]:.0f} updates/s on one core |" for name in names]
    lines += ["", "The `OPENBLAS_NUM_THREADS=1` row above is the same coordinator with only BLAS limited to one "
              "thread (the update path does not call BLAS: the norm is an `einsum`, the sum uses a preallocated "
              "float64 buffer)."]
    profiles = {name: ingest["coordinator"][name]["profile"] for name in names}
    if all(profiles.values()):
        keys = [key for key in (f"{s}:{n}" for s, n in PROFILED)
                if any(key in prof["functions"] for prof in profiles.values())]
        lines += ["", "| function (cProfile, coordinator thread) | "
                  + " | ".join(f"`{name}`: calls | ms per update" for name in names) + " |",
                  "| --- |" + " ---: | ---: |" * len(names)]
        for key in keys:
            cells = []
            for name in names:
                f = profiles[name]["functions"].get(key)
                cells += [str(f["calls"]), f"{f['ms_per_update']:.2f}"] if f else ["-", "-"]
            lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_strategies(costs: dict[str, Any], model: dict[str, Any]) -> list[str]:
    low, high = costs["counts"][0], costs["counts"][-1]
    lines = ["### Cost per strategy (in-process)", "",
             "Every registered strategy with its default hyperparameters, in the benchmark process on the same model "
             "and update. `add`: one `accumulated.add(update, weight)` of a freshly decoded float32 update, median "
             f"over a round of {high} (the first left out). `apply`: `strategy.apply(state, accumulated)` at the end "
             f"of a round of N updates, median of {costs['apply_reps']}. Memory, under tracemalloc (numpy's buffers "
             "included), with each update decoded inside the trace and then dropped by the caller: what the "
             "accumulator holds after N updates (a fresh one included), and how far above that `apply` peaks. "
             f"One update is {model['float32_mb']:.2f} MB in float32. Timings without tracemalloc.", "",
             f"| strategy | accumulator | add (ms) | apply, N = {low} (ms) | apply, N = {high} (ms) "
             f"| held after {low} updates (MB) | held after {high} (MB) | apply peak above held, N = {high} (MB) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in costs["strategies"].items():
        kind = "streaming" if r["streaming"] else "buffered"
        lines.append(f"| `{name}` | {kind} (`{r['accumulator']}`) | {r['add_ms']:.3f} | {r['apply_ms'][low]:.1f} | "
                     f"{r['apply_ms'][high]:.1f} | {r['held_mb'][low]:.1f} | {r['held_mb'][high]:.1f} | "
                     f"{r['apply_peak_mb'][high]:.1f} |")
    return [*lines, ""]


def render_lost(report: dict[str, Any]) -> list[str]:
    """Runs whose devices missed the new global model or a task withdrawal (published just before disconnecting)."""
    ingest, memory = report["ingest"], report["memory"]
    runs = [*(r for v in ingest["coordinator"].values() for r in v["runs"]),
            *ingest["coordinator_one_blas_thread_runs"],
            *(r for mode_runs in memory["runs"].values() for r in mode_runs)]
    no_global = [r for r in runs if not r["devices_got_new_global"]]
    short = [r for r in runs if r["devices_got_withdrawal"] < r["devices"]]
    fewest = min(short, key=lambda r: r["devices_got_withdrawal"] / r["devices"]) if short else None
    resubscribed = [r for r in runs if r.get("task_resubscribes")]
    return ["", "### Final publishes", "",
            "As a round closes the coordinator withdraws every task (an empty retained payload each), writes the "
            "checkpoint, publishes the new global model and its `finished` state, then disconnects. What the devices "
            f"received, over the {len(runs)} coordinator runs of this benchmark: the new global model never arrived "
            f"in {len(no_global)} runs; not every withdrawal arrived in {len(short)} runs"
            + (f" (fewest: {fewest['devices_got_withdrawal']} of {fewest['devices']})" if fewest else "") + "."
            + (f" In {len(resubscribed)} runs (N = {', '.join(str(r['devices']) for r in resubscribed)}) the "
               "benchmark's device side stopped receiving tasks before it had them all while the broker held every "
               "task retained (likely Mosquitto dropping QoS 1 messages past a slow subscriber's queue) and "
               "subscribed to the task topics again to get the retained ones; that happens before the first "
               "update is sent, outside every timed window." if resubscribed else "")]


def render_memory(memory: dict[str, Any]) -> list[str]:
    lines = ["### Coordinator memory vs updates per round", "",
             f"The coordinator with `--strategy {memory['strategy']}`. Peak RSS is the coordinator process's "
             "`VmHWM`, read by the process itself as it exits; \"when updates "
             "start\" is the psutil sample (every 50 ms) just before the first update was sent, so peak minus it is "
             "what the updates added. Burst: the devices send as fast as paho sends. Paced: they send "
             f"{memory['paced_rate']:.0f} updates/s, {PACED_SHARE:.0%} of the measured median ingest rate. Flat "
             f"(O(model)) here means what the updates add (peak minus start) grows by at most {FLAT_MODELS} model "
             f"sizes ({FLAT_MODELS * memory['model_mb']:.1f} MB) from N = {memory['counts'][0]} to "
             f"N = {memory['counts'][-1]}; holding every update would add about one model size per update. The "
             "devices' own bookkeeping (statuses, tasks), already there when the updates start, is shown apart.", ""]
    for failure in memory["as_shipped_failures"]:
        lifted = " (paho's client-side queue limit lifted by the wrapper)" if failure["queue_limit_lifted"] else ""
        lines += [f"- **N = {failure['devices']} failed** ({failure['mode']} run{lifted}): the round did not start "
                  f"for the benchmark's devices: {failure['failed']}"
                  + (f"; {' '.join(failure['errors'])}" if failure["errors"] else "") + ". The benchmark's wrapper "
                  "then repeats the run with paho's client-side limit of unacknowledged publishes lifted (`--lift-"
                  "queue-limit`; `edge_runtime/mqtt.py` now sets no limit, so this is the same coordinator) and "
                  "marks such rows †."]
    if memory["as_shipped_failures"]:
        lines += [""]
    lines += ["| arrivals | updates (N) | RSS when updates start (MB) | peak RSS (MB) | peak minus start (MB) "
              "| peak growth over smallest N (MB) | first update → commit (s) | round |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for mode, runs in memory["runs"].items():
        base = runs[0]["peak_rss_mb"]
        for r in runs:
            start, line = r["rss_when_updates_start_mb"], r["round_line"]
            mark = " †" if r["queue_limit_lifted"] else ""
            lines.append(f"| {mode} | {r['devices']}{mark} | {start:.0f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['peak_rss_mb'] - start:.0f} | {r['peak_rss_mb'] - base:+.1f} | "
                         f"{r.get('seconds', float('nan')):.2f} | {line.get('status', 'none')}, "
                         f"{line.get('reported', 0)} accepted |")
    low, high = memory["counts"][0], memory["counts"][-1]
    lines += ["", f"| arrivals | peak RSS, N = {low} → {high} (MB) | peak growth per extra update | RSS when updates "
              f"start, growth (MB) | peak minus start, N = {low} → {high} (MB) | flat (O(model)) |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    for mode, v in memory["verdicts"].items():
        first, last = memory["runs"][mode][0], memory["runs"][mode][-1]
        added = v["updates_added_mb"]
        lines.append(f"| {mode} | {first['peak_rss_mb']:.0f} → {last['peak_rss_mb']:.0f} | "
                     f"{v['per_extra_update_kb']:.1f} kB ({v['per_extra_update_share']:.1%} of an update) | "
                     f"{v['devices_before_updates_mb']:+.1f} | {added[0]:.1f} → {added[1]:.1f} "
                     f"({v['updates_added_growth_models']:+.1f} model sizes) | {ok(v['flat'])} |")
    return lines




def plot_memory(memory: dict[str, Any], path: Path) -> bool:
    """RSS over time of every memory run; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(memory["runs"]), figsize=(6 * len(memory["runs"]), 4), sharey=True,
                             squeeze=False)
    for ax, (mode, runs) in zip(axes[0], memory["runs"].items(), strict=True):
        for r in runs:
            t, mb = zip(*r["rss_samples"], strict=True)
            ax.plot(t, mb, label=f"N = {r['devices']}")
        ax.set(title=f"coordinator RSS, {mode} arrivals", xlabel="seconds since the first update", ylabel="RSS (MB)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- orchestration


def export_artifact(folder: Path) -> tuple[Path, dict[str, Any]]:
    out = folder / "artifact"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "export", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise SystemExit(f"export failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out, parse_result(proc.stdout, "export")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from edge_runtime.artifact import Artifact
    from edge_runtime.protocol import UpdateHeader, encode_tensors
    from edge_runtime.updates import l2_norm

    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "broker": args.broker, "quick": args.quick,
                              "loadavg_start": os.getloadavg(), "busy_processes_start": busy_processes()}
    with tempfile.TemporaryDirectory(prefix="edgefl-bench-coord-") as tmp:
        folder = Path(tmp)
        if args.artifact:
            artifact, exported = args.artifact, {"export_s": None}
        else:
            print("exporting the mlp artifact (TensorFlow, in a child process) ...", flush=True)
            artifact, exported = export_artifact(folder)
        manifest = Artifact.load(artifact).manifest
        update = make_update(manifest.weights, UPDATE_NORM)
        sample = encode_tensors(UpdateHeader("dev-0000", "0" * 16, 1, 0, EXAMPLES, TRAIN_LOSS, l2_norm(update)),
                                update)
        report["model"] = {"name": manifest.model_name, "input": INPUT, "hidden": list(HIDDEN), "classes": CLASSES,
                           "params": manifest.parameter_count, "float32_mb": manifest.parameter_count * 4 / MB,
                           "update_payload_bytes": len(sample), "export_s": exported["export_s"],
                           "artifact_files_mb": {p.name: p.stat().st_size / MB for p in Path(artifact).iterdir()}}
        print(f"model: {manifest.parameter_count:,} parameters, update payload {len(sample) / MB:.3f} MB", flush=True)
        report["ingest"] = ingest = measure_ingest(args, artifact, update, folder)
        first = args.strategies[0]
        report["strategy_costs"] = strategy_costs(artifact, update, APPLY_COUNTS, args.apply_reps)
        report["memory"] = measure_memory(args, artifact, update, folder, first,
                                          ingest["coordinator"][first]["median"])
    return report


def measure_ingest(args: argparse.Namespace, artifact: Path, update: dict[str, np.ndarray],
                   folder: Path) -> dict[str, Any]:
    import psutil

    n, names = args.updates, args.strategies
    drops, keeps, single = [], [], []
    coords: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i in range(args.repeats):
        busy = psutil.cpu_percent(interval=1.0)  # what else the machine was doing just before this turn
        drops.append(raw_run(args, update, n, folder, keep=False) | {"cpu_busy_percent_before": busy})
        keeps.append(raw_run(args, update, n, folder, keep=True))
        for name in names if i % 2 == 0 else names[::-1]:  # alternate, so drift over the run favours neither
            coords[name].append(coordinator_run(args, artifact, n, update, folder, name,
                                                label=f"ingest run {i + 1}"))
        single.append(coordinator_run(args, artifact, n, update, folder, names[0],
                                      label=f"1 BLAS thread, run {i + 1}", env={"OPENBLAS_NUM_THREADS": "1"}))
        for c in (*(runs[-1] for runs in coords.values()), single[-1]):
            if not c["committed"] or c.get("accepted") != n:
                raise SystemExit(f"coordinator run did not commit all {n} updates: {c}")
        d, k, o = drops[-1], keeps[-1], single[-1]
        print(f"turn {i + 1} (machine {busy:.0f}% busy before), MB/s: raw {d['mb_per_s']:6.1f} (subscriber drops "
              f"payloads) {k['mb_per_s']:6.1f} (keeps them) | " + " | ".join(
                  f"{name} {runs[-1]['mb_per_s']:6.1f} ({runs[-1]['updates_per_s']:.0f} updates/s)"
                  for name, runs in coords.items()) + f" | {names[0]} with OPENBLAS_NUM_THREADS=1 "
              f"{o['mb_per_s']:6.1f}", flush=True)
    raw_mb = {"drops": statistics.median(r["mb_per_s"] for r in drops),
              "keeps": statistics.median(r["mb_per_s"] for r in keeps)}
    baseline = max(raw_mb, key=lambda key: raw_mb[key])  # the faster subscriber: the stricter baseline
    raws = drops if baseline == "drops" else keeps
    stages = stage_times(artifact, update, args.stage_reps, names)
    per_strategy: dict[str, Any] = {}
    for name, runs in coords.items():
        ratio = statistics.median(c["mb_per_s"] for c in runs) / raw_mb[baseline]
        profile = None
        if not args.no_profile:
            stats_path = folder / f"coordinator-{name}.pstats"
            profiled = coordinator_run(args, artifact, n, update, folder, name, profile=stats_path,
                                       label="profiled run")
            profile = profile_summary(stats_path, n) | {"seconds": profiled.get("seconds")}
        for run in runs:
            run.pop("rss_samples")
        per_strategy[name] = {"runs": runs, "median": _median_run(runs, "mb_per_s"), "ratio": ratio,
                              "target_holds": ratio >= TARGET_INGEST_RATIO, "profile": profile}
        print(f"ingest {name}: coordinator/raw = {ratio:.0%}; in-process update path {stages['whole_ms'][name]:.2f} "
              f"ms (max {stages['max_updates_per_s'][name]:.0f} updates/s)", flush=True)
    for run in single:
        run.pop("rss_samples")
    return {"updates": n, "repeats": args.repeats, "strategies": names, "raw_runs_subscriber_drops": drops,
            "raw_runs_subscriber_keeps": keeps, "raw_baseline": baseline, "coordinator": per_strategy,
            "coordinator_one_blas_thread_runs": single, "one_blas_thread_strategy": names[0],
            "raw_drops_median": _median_run(drops, "mb_per_s"), "raw_keeps_median": _median_run(keeps, "mb_per_s"),
            "raw_median": _median_run(raws, "mb_per_s"),
            "coordinator_one_blas_thread_median": _median_run(single, "mb_per_s"),
            "ratio_one_blas_thread": statistics.median(c["mb_per_s"] for c in single) / raw_mb[baseline],
            "target_min": TARGET_INGEST_RATIO, "target_holds": all(v["target_holds"] for v in per_strategy.values()),
            "stages": stages}


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[len(ordered) // 2]


def measure_memory(args: argparse.Namespace, artifact: Path, update: dict[str, np.ndarray], folder: Path,
                   strategy: str, ingest: dict[str, Any]) -> dict[str, Any]:
    paced_rate = PACED_SHARE * ingest["updates_per_s"]
    counts = sorted(args.memory_counts)
    runs: dict[str, list[dict[str, Any]]] = {"burst": [], "paced": []}
    failures: list[dict[str, Any]] = []
    lifted: set[int] = set()  # device counts at which the coordinator as shipped failed to start its round
    for mode, rate in (("burst", None), ("paced", paced_rate)):
        for n in counts:
            run = coordinator_run(args, artifact, n, update, folder, strategy, rate=rate, label="memory",
                                  lift_queue_limit=n in lifted)
            if run.get("failed"):
                failures.append(run | {"mode": mode})
                print(f"memory {mode:5s} N={n:5d}: the coordinator as shipped FAILED: {run['failed']}; "
                      f"{' | '.join(run['errors'])}", flush=True)
                lifted.add(n)
                run = coordinator_run(args, artifact, n, update, folder, strategy, rate=rate,
                                      label="memory, limit lifted", lift_queue_limit=True)
                if run.get("failed"):
                    failures.append(run | {"mode": mode})
                    print(f"memory {mode:5s} N={n:5d}: FAILED again with the queue limit lifted: {run['failed']}",
                          flush=True)
                    continue
            runs[mode].append(run)
            print(f"memory {mode:5s} N={n:5d}{' (paho queue limit lifted)' if run['queue_limit_lifted'] else ''}: "
                  f"peak RSS {run['peak_rss_mb']:7.1f} MB (when updates start "
                  f"{run['rss_when_updates_start_mb'] or float('nan'):.1f} MB), commit after "
                  f"{run.get('seconds', float('nan')):.2f} s, {run['round_line'].get('reported', 0)} accepted",
                  flush=True)
    model_mb = float(np.sum([v.nbytes for v in update.values()])) / MB
    update_mb = runs["burst"][0]["payload_bytes"] / MB
    verdicts = {}
    for mode, mode_runs in runs.items():
        low, high = mode_runs[0], mode_runs[-1]
        growth = high["peak_rss_mb"] - low["peak_rss_mb"]
        added = [r["peak_rss_mb"] - r["rss_when_updates_start_mb"] for r in (low, high)]
        per_update_kb = growth * 1e3 / max(high["devices"] - low["devices"], 1)
        verdicts[mode] = {"growth_mb": growth, "growth_models": growth / model_mb, "per_extra_update_kb": per_update_kb,
                          "per_extra_update_share": per_update_kb / (update_mb * 1e3),
                          "updates_added_mb": added, "updates_added_growth_models": (added[1] - added[0]) / model_mb,
                          "devices_before_updates_mb": high["rss_when_updates_start_mb"]
                          - low["rss_when_updates_start_mb"],
                          "flat": added[1] - added[0] <= FLAT_MODELS * model_mb
                          and all(r["committed"] for r in mode_runs) and len(mode_runs) == len(counts)}
    return {"strategy": strategy, "counts": counts, "paced_rate": paced_rate, "flat_rule_models": FLAT_MODELS,
            "model_mb": model_mb,
            "runs": runs, "verdicts": verdicts, "as_shipped_failures": failures,
            "queue_limit_lifted_at": sorted(lifted)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few updates, one repeat, nothing written")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="Mosquitto to measure (%(default)s)")
    p.add_argument("--updates", type=int, help="updates per ingest run (200; quick: 30)")
    p.add_argument("--repeats", type=int, help="ingest runs of each kind (5; quick: 1)")
    p.add_argument("--memory-counts", type=int, nargs="+", help="devices per memory run (10 100 1000; quick: 10 40)")
    p.add_argument("--strategy", dest="strategies", nargs="+", choices=sorted(strategy_names()),
                   help=f"strategies whose ingest is measured ({' '.join(INGEST_STRATEGIES)}); memory runs use the "
                        "first")
    p.add_argument("--stage-reps", type=int, help="repetitions of each in-process step (50; quick: 10)")
    p.add_argument("--apply-reps", type=int, help="repetitions of each strategy's apply (5; quick: 1)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile'd coordinator run")
    p.add_argument("--commit-timeout", type=float, default=300, help="give up on a round after (%(default)s s)")
    p.add_argument("--artifact", type=Path, help="reuse this exported artifact instead of exporting one")
    p.add_argument("--out", type=Path, help="JSON results (bench/results/coordinator.json; quick: none)")
    p.add_argument("--markdown", type=Path, help="benchmarks file to update (BENCHMARKS.md; quick: none)")
    p.add_argument("--plot", type=Path, help="also draw the memory runs' RSS over time to this PNG (needs matplotlib)")
    args = p.parse_args(argv)
    quick = args.quick
    args.updates = args.updates or (30 if quick else 200)
    args.repeats = args.repeats or (1 if quick else 5)
    args.memory_counts = args.memory_counts or ([10, 40] if quick else [10, 100, 1000])
    args.stage_reps = args.stage_reps or (10 if quick else 50)
    args.apply_reps = args.apply_reps or (1 if quick else 5)
    args.strategies = list(dict.fromkeys(args.strategies or INGEST_STRATEGIES))
    if not quick:
        args.out = args.out or ROOT / "bench" / "results" / "coordinator.json"
        args.markdown = args.markdown or ROOT / "BENCHMARKS.md"
    if args.updates < 2 or args.repeats < 1 or min(args.memory_counts) < 1:
        raise SystemExit("need --updates >= 2, --repeats >= 1 and device counts >= 1")
    return args


def worker_main(argv: list[str]) -> int:
    """``--worker KIND ...``: the child processes this benchmark starts."""
    kind, rest = argv[1], argv[2:]
    if kind == "coordinator":
        split = rest.index("--")
        own = argparse.ArgumentParser()
        own.add_argument("--profile", type=Path)
        own.add_argument("--lift-queue-limit", action="store_true")
        flags = own.parse_args(rest[:split])
        return coordinator_worker(rest[split + 1:], flags.profile, flags.lift_queue_limit)
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path)
    p.add_argument("--broker")
    p.add_argument("--topic")
    p.add_argument("--count", type=int)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(rest)
    if kind == "export":
        result = export_worker(args.out)
    elif kind == "subscriber":
        result = subscriber_worker(args.broker, args.topic, args.count, timeout=300, keep=args.keep)
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        return worker_main(argv)
    args = parse_args(argv)
    started = time.perf_counter()
    report = run_all(args)
    report["bench_seconds"] = time.perf_counter() - started
    report["loadavg_end"] = os.getloadavg()
    report["busy_processes_end"] = busy_processes()
    memory = report["memory"]
    print("ingest " + ", ".join(f"{name} {v['ratio']:.0%}" for name, v in report["ingest"]["coordinator"].items())
          + f" of raw (target ≥ {TARGET_INGEST_RATIO:.0%}: {'pass' if report['ingest']['target_holds'] else 'MISS'}); "
          "memory growth "
          + ", ".join(f"{m} {v['growth_mb']:+.1f} MB ({'flat' if v['flat'] else 'NOT flat'})"
                      for m, v in memory["verdicts"].items()) + f"; {report['bench_seconds']:.0f} s in all")
    if args.plot is not None:
        png = args.plot.resolve()
        if plot_memory(memory, png):
            report["memory"]["plot"] = str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png)
            print(f"wrote {png}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    if args.markdown is not None:
        update_section(args.markdown, render_markdown(report), START, END)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
