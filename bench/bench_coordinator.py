"""Coordinator benchmark: ingest vs the broker's raw publish->subscribe throughput, and memory vs updates per round.

Two targets of ``DESIGN.md``, measured in one run against the same Mosquitto:

* **Ingest.** The raw baseline is a paho publisher (this process) sending N
  update-sized payloads (QoS 1) to a topic, and a paho subscriber in a fresh
  process receiving them: bytes and messages per second from the first send
  to the last receive. The coordinator side runs the real ``edgefl
  coordinator`` CLI in a fresh process (``--rounds 1 --fraction 1
  --min-clients N --over-select 1 --min-reports N``) on an exported mlp, while
  this process plays N devices over one paho connection, speaking
  ``edge_runtime.protocol``: a retained eligible ``DeviceStatus`` per device,
  then, once every device's ``TrainTask`` has arrived, one valid update per
  device (``UpdateHeader`` + tensors with an L2 norm under ``clip_norm``) sent
  as fast as paho sends, by the same publisher code as the baseline. Ingest is
  accepted updates per second from the first update sent to the moment the
  coordinator prints its round line (after the commit: checkpoint written,
  global model published), read from its stdout as it comes. Each repetition
  runs raw, coordinator, and the coordinator again with
  ``OPENBLAS_NUM_THREADS=1`` as a diagnostic. Where the time goes is shown
  twice: the steps of the coordinator's per-update path timed in-process on
  fresh payloads, and a cProfile of the coordinator's thread in one more run.
* **Memory.** The same coordinator process for N = 10, 100, 1000 devices, one
  round each, a fresh state folder each time; peak RSS is the process's
  ``VmHWM`` read by the process itself as it exits (the CLI's ``main`` runs
  inside a small wrapper that does only that: ``--worker coordinator``), and
  RSS is sampled every 50 ms by psutil for the time course. Updates are sent
  two ways: in a burst (as fast as possible, like the ingest run) and paced
  below the measured ingest rate, which separates what the aggregation keeps
  from a backlog of received payloads. Where the coordinator as shipped
  cannot start the round (paho's client-side queue limit), the failure is
  recorded and the run repeated with that one limit lifted by the wrapper.

Each run uses a fresh federation name, and every retained topic of it (device
statuses and tasks, artifact, global model, coordinator state) is cleared
afterwards. Run from the project root: ``python bench/bench_coordinator.py``
(``--quick`` for a smoke run that writes nothing unless ``--out`` is given).
It writes ``bench/results/coordinator.json`` and its section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
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
TARGET_INGEST_RATIO = 0.5
FLAT_MODELS = 10  # "flat": what the updates add to RSS grows by at most this many model sizes from the smallest N
PACKAGES = ("paho-mqtt", "numpy", "safetensors", "psutil")
HIDDEN = (256, 128)
INPUT, CLASSES = 784, 10
UPDATE_NORM, CLIP_NORM = 1.0, 5.0
EXAMPLES, TRAIN_LOSS = 64, 0.5
MB = 1e6
SAMPLE_S = 0.05
PACED_SHARE = 0.5  # paced runs send at this share of the measured coordinator ingest rate
STAGES = ("decode_tensors: safetensors header, metadata, parse into numpy (protocol.py)",
          "has_non_finite + check_weights: isfinite twice, names, shapes, dtypes",
          "within_bound: L2 norm, einsum accumulating in float64 (updates.py)",
          "FedAvg.accumulate: weight x update into a float64 scratch buffer, added (aggregate.py)")


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
        paho.Client.max_queued_messages_set = lambda self, _value: original(self, 0)  # type: ignore[method-assign]
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
        deadline = time.monotonic() + timeout
        while not self._all_tasks.wait(0.2):
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"{len(self.tasks)} of {len(self.devices)} tasks arrived")

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
                    folder: Path, rate: float | None = None, profile: Path | None = None,
                    label: str = "", lift_queue_limit: bool = False,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """One round of a real coordinator process with ``count`` emulated devices; timings and memory.

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
                "--over-select", "1", "--min-reports", str(count), "--round-timeout", "300", "--eval-every", "0"]
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
            desc = f"{label or 'updates'} ({'paced' if rate else 'burst'}, N={count})"
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
    base: dict[str, Any] = {"devices": count, "arrivals": f"paced {rate:.0f}/s" if rate else "burst", "rate": rate,
                            "queue_limit_lifted": lift_queue_limit, "env": env or {}, "exit": result["exit"],
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


def stage_times(artifact: Path, update: dict[str, np.ndarray], reps: int) -> dict[str, Any]:
    """Each step of the coordinator's per-update path, timed in this process on the same payload (median ms)."""
    from coordinator.fedavg import FedAvg
    from coordinator.rounds import OpenRound, RoundPlan, has_non_finite
    from edge_runtime.artifact import Artifact
    from edge_runtime.protocol import UpdateHeader, decode_tensors, encode_tensors, tensor_payload_limit
    from edge_runtime.updates import l2_norm, within_bound
    from edge_runtime.weights import check_weights

    manifest = Artifact.load(artifact).manifest
    specs, limit = manifest.weights, tensor_payload_limit(manifest.parameter_count)
    devices = [f"dev-{i:04d}" for i in range(reps + 1)]
    norm = l2_norm(update)
    payloads = [encode_tensors(UpdateHeader(d, "task", 1, 0, EXAMPLES, TRAIN_LOSS, norm), update) for d in devices]
    strategy = FedAvg()
    state = strategy.begin(update)
    steps: dict[str, list[float]] = {name: [] for name in STAGES}
    for payload in payloads:  # the path of OpenRound.offer_update, step by step, on a fresh payload each time
        t0 = time.perf_counter()
        _header, tensors = decode_tensors(payload, UpdateHeader, limit)
        t1 = time.perf_counter()
        if has_non_finite(tensors):
            raise SystemExit("the benchmark's own update holds NaN or Inf")
        checked = check_weights(tensors, specs)
        t2 = time.perf_counter()
        if not within_bound(checked, CLIP_NORM):
            raise SystemExit("the benchmark's own update is over the clip bound")
        t3 = time.perf_counter()
        strategy.accumulate(state, checked, EXAMPLES)
        t4 = time.perf_counter()
        for name, took in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[name].append(took * 1e3)
    plan = RoundPlan(1, "task", 0, frozenset(devices), reps, reps, reps, CLIP_NORM, time.time() + 3600)
    current = OpenRound(plan, update, specs, strategy)
    whole = []
    for device, payload in zip(devices, payloads, strict=True):
        started = time.perf_counter()
        header, tensors = decode_tensors(payload, UpdateHeader, limit)
        if current.offer_update(device, True, header, tensors) is not None:
            raise SystemExit("the benchmark's own update was refused")
        whole.append((time.perf_counter() - started) * 1e3)
    medians = {name: statistics.median(times[1:]) for name, times in steps.items()}  # the first one warms up
    whole_ms = statistics.median(whole[1:])
    return {"reps": reps, "steps_ms": medians, "whole_ms": whole_ms, "sum_of_steps_ms": sum(medians.values()),
            "max_updates_per_s": 1e3 / whole_ms}


def profile_summary(path: Path, updates: int) -> dict[str, Any]:
    """The coordinator thread's time per update in the functions of its update path (cProfile)."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    wanted = [("server.py", "_dispatch"), ("server.py", "_on_update"), ("protocol.py", "decode_tensors"),
              ("weights.py", "weights_from_bytes"), ("rounds.py", "offer_update"), ("rounds.py", "_check_tensors"),
              ("weights.py", "check_weights"), ("rounds.py", "has_non_finite"), ("updates.py", "within_bound"),
              ("aggregate.py", "add"), ("server.py", "_on_status"), ("server.py", "_finish_round"),
              ("checkpoint.py", "save_checkpoint"), ("server.py", "_publish_global")]
    functions: dict[str, Any] = {}
    for (file, _line, name), (_cc, calls, _tt, cumulative, _callers) in stats.items():
        for suffix, wanted_name in wanted:
            if name == wanted_name and file.endswith(suffix):
                functions[f"{suffix}:{name}"] = {"calls": calls, "cumulative_s": cumulative,
                                                  "ms_per_update": cumulative * 1e3 / updates}
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)
    idle = ("acquire", "wait", "sleep", "get")
    busiest = [{"function": f"{Path(file).name}:{line}:{name}", "calls": calls, "own_s": own}
               for (file, line, name), (_cc, calls, own, _ct, _c) in top if not any(name.endswith(w) for w in idle)]
    ordered = {key: functions[key] for key in (f"{s}:{n}" for s, n in wanted) if key in functions}
    return {"updates": updates, "functions": ordered, "top_own_time": busiest[:12]}


# ---------------------------------------------------------------- machine and report


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
    lines = [START, "## Coordinator: ingest vs raw broker throughput, memory vs updates per round", "",
             "One run of the benchmark against the local Mosquitto (its system configuration: persistence on, "
             "default queue and in-flight limits). The model is an exported mlp "
             f"({model['input']} → {' → '.join(str(h) for h in model['hidden'])} → {model['classes']}, "
             f"{model['params']:,} float32 parameters, {model['float32_mb']:.2f} MB); one update is "
             f"{model['update_payload_bytes'] / MB:.3f} MB of safetensors. The benchmark process plays the devices "
             "over one paho connection speaking `edge_runtime.protocol` (retained eligible status, wait for the "
             "`TrainTask`, one valid update each, L2 norm 1 under the clip bound 5); the coordinator is the real "
             "`edgefl coordinator` in its own process (`--rounds 1 --fraction 1 --min-clients N --over-select 1 "
             "--min-reports N --round-timeout 300 --eval-every 0`), a fresh federation and state folder per run, "
             "every retained topic cleared afterwards.",
             "", "Reproduce: `python bench/bench_coordinator.py` (raw numbers: `bench/results/coordinator.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cpu_count']} CPUs), {m['platform']}, Python {m['python']}; "
             f"{m['mosquitto']}; {pkgs}. Load average at start {report['loadavg_start'][0]:.2f}, at end "
             f"{report['loadavg_end'][0]:.2f} (1 min); {report['bench_seconds']:.0f} s in all.", ""]
    lines += render_ingest(ingest)
    lines += render_stages(ingest)
    lines += render_memory(report["memory"])
    lines += render_lost(report)
    return "\n".join([*lines, END])


TURN_KEYS = ("raw_runs_subscriber_drops", "raw_runs_subscriber_keeps", "coordinator_runs",
             "coordinator_one_blas_thread_runs")


def render_ingest(ingest: dict[str, Any]) -> list[str]:
    drop, keep, coord = ingest["raw_drops_median"], ingest["raw_keeps_median"], ingest["coordinator_median"]
    single = ingest["coordinator_one_blas_thread_median"]
    raw = ingest["raw_median"]
    n = ingest["updates"]
    busy = ", ".join(f"{r['cpu_busy_percent_before']:.0f}%" for r in ingest["raw_runs_subscriber_drops"])

    def share(run: dict[str, Any]) -> str:
        return f"{run['mb_per_s'] / raw['mb_per_s']:.0%}"

    lines = ["### Ingest vs the broker's raw publish → subscribe", "",
             f"N = {n} update-sized payloads (QoS 1) per run, each encoded as it is sent by the same sender code on "
             f"both sides. Runs in turn, {ingest['repeats']} times: raw with a subscriber that drops each payload, raw "
             "with one that keeps them, the coordinator, the coordinator again with `OPENBLAS_NUM_THREADS=1` (a "
             "diagnostic, not the target number); the median run of each is shown. Raw: a paho publisher to a paho "
             "subscriber in another process, first send to last receive; the faster of the two subscribers is the "
             "baseline. Coordinator: first update sent to the round line the coordinator prints after the commit "
             f"(checkpoint written, new global model published); all {n} updates accepted in every run. CPU busy "
             f"(all processes) in the second before each turn: {busy}.", "",
             "| path | updates | seconds | updates/s | MB/s | share of raw |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, run in (("raw, subscriber drops each payload", drop), ("raw, subscriber keeps the payloads", keep)):
        mark = " (baseline)" if run is raw or run["mb_per_s"] == raw["mb_per_s"] else ""
        lines.append(f"| {name}{mark} | {n} | {run['seconds']:.2f} | {run['msgs_per_s']:.0f} | "
                     f"{run['mb_per_s']:.0f} | {share(run)} |")
    lines += [f"| **coordinator ingest** | {coord['accepted']} | {coord['seconds']:.2f} | "
              f"{coord['updates_per_s']:.0f} | {coord['mb_per_s']:.0f} | **{ingest['ratio']:.0%}**, target ≥ 50%: "
              f"{ok(ingest['target_holds'])} |",
              f"| coordinator, `OPENBLAS_NUM_THREADS=1` | {single['accepted']} | {single['seconds']:.2f} | "
              f"{single['updates_per_s']:.0f} | {single['mb_per_s']:.0f} | {ingest['ratio_one_blas_thread']:.0%} |",
              "", "Every turn, MB/s (raw drops / raw keeps / coordinator / coordinator with one BLAS thread): "
              + "; ".join(f"{d['mb_per_s']:.0f} / {k['mb_per_s']:.0f} / {c['mb_per_s']:.0f} / {o['mb_per_s']:.0f}"
                          for d, k, c, o in zip(*(ingest[key] for key in TURN_KEYS), strict=True)) + ".", ""]
    return lines


def render_stages(ingest: dict[str, Any]) -> list[str]:
    stages, prof = ingest["stages"], ingest.get("profile")
    whole = stages["whole_ms"]
    lines = ["Where the coordinator's time goes per update. Left: the steps of its update path "
             "(`decode_tensors`, then what `OpenRound.offer_update` does) timed one after the other in the benchmark "
             f"process on fresh payloads (median of {stages['reps']}). Right: cumulative time per update in a "
             f"cProfile of the coordinator's thread during one more {ingest['updates']}-update round (profiling adds "
             "overhead; the machine is also busy with the broker, the sender and paho's network thread then).", "",
             "| step (per update) | in-process (ms) | share |", "| --- | ---: | ---: |"]
    total = stages["sum_of_steps_ms"]
    lines += [f"| {name} | {ms:.2f} | {ms / total:.0%} |" for name, ms in stages["steps_ms"].items()]
    lines += [f"| **whole path**, timed as one | **{whole:.2f}** | at most {stages['max_updates_per_s']:.0f} "
              "updates/s on one core |", "",
              "The `OPENBLAS_NUM_THREADS=1` row above is the same coordinator with only BLAS limited to one "
              "thread (the update path no longer calls BLAS: the norm is an `einsum`, the sum uses a "
              "preallocated float64 buffer)."]
    if prof:
        lines += ["", "| function (cProfile, coordinator thread) | calls | ms per update |", "| --- | ---: | ---: |"]
        lines += [f"| `{key}` | {f['calls']} | {f['ms_per_update']:.2f} |" for key, f in prof["functions"].items()]
    return [*lines, ""]


def render_lost(report: dict[str, Any]) -> list[str]:
    """Runs whose devices missed the new global model or a task withdrawal (published just before disconnecting)."""
    ingest, memory = report["ingest"], report["memory"]
    runs = [*ingest["coordinator_runs"], *ingest["coordinator_one_blas_thread_runs"],
            *(r for mode_runs in memory["runs"].values() for r in mode_runs)]
    no_global = [r for r in runs if not r["devices_got_new_global"]]
    short = [r for r in runs if r["devices_got_withdrawal"] < r["devices"]]
    fewest = min(short, key=lambda r: r["devices_got_withdrawal"] / r["devices"]) if short else None
    return ["", "### Final publishes", "",
            "As a round closes the coordinator withdraws every task (an empty retained payload each), writes the "
            "checkpoint, publishes the new global model and its `finished` state, then disconnects. What the devices "
            f"received, over the {len(runs)} coordinator runs of this benchmark: the new global model never arrived "
            f"in {len(no_global)} runs; not every withdrawal arrived in {len(short)} runs"
            + (f" (fewest: {fewest['devices_got_withdrawal']} of {fewest['devices']})" if fewest else "") + "."]


def render_memory(memory: dict[str, Any]) -> list[str]:
    lines = ["### Coordinator memory vs updates per round", "",
             "Peak RSS is the coordinator process's `VmHWM`, read by the process itself as it exits; \"when updates "
             "start\" is the psutil sample (every 50 ms) just before the first update was sent, so peak minus it is "
             "what the updates added. Burst: the devices send as fast as paho sends. Paced: they send "
             f"{memory['paced_rate']:.0f} updates/s, {PACED_SHARE:.0%} of the measured median ingest rate. Flat "
             f"(O(model)) here means what the updates add (peak minus start) grows by at most {FLAT_MODELS} model "
             f"sizes ({FLAT_MODELS * memory['model_mb']:.1f} MB) from N = {memory['counts'][0]} to "
             f"N = {memory['counts'][-1]}; holding every update would add about one model size per update. The "
             "devices' own bookkeeping (statuses, tasks), already there when the updates start, is shown apart.", ""]
    for failure in memory["as_shipped_failures"]:
        lines += [f"- **As shipped, N = {failure['devices']} fails** ({failure['mode']} run): the round never "
                  f"starts: {failure['failed']}; {' '.join(failure['errors'])}. At start the coordinator publishes "
                  "an empty retained task for every registered device (`_wait_for_devices`), then a task for every "
                  "selected one (`_train_round`), all QoS 1 in a row, past paho's client-side limit of 1000 "
                  "unacknowledged publishes that `edge_runtime/mqtt.py` sets. The rows marked † ran with that one "
                  "limit lifted in the coordinator process by the benchmark's wrapper (later runs at the same N "
                  "went straight to it)."]
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
                              "loadavg_start": os.getloadavg()}
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
        report["memory"] = measure_memory(args, artifact, update, folder, ingest["coordinator_median"])
    return report


def measure_ingest(args: argparse.Namespace, artifact: Path, update: dict[str, np.ndarray],
                   folder: Path) -> dict[str, Any]:
    import psutil

    n = args.updates
    drops, keeps, coords, single = [], [], [], []
    for i in range(args.repeats):
        busy = psutil.cpu_percent(interval=1.0)  # what else the machine was doing just before this turn
        drops.append(raw_run(args, update, n, folder, keep=False) | {"cpu_busy_percent_before": busy})
        keeps.append(raw_run(args, update, n, folder, keep=True))
        coords.append(coordinator_run(args, artifact, n, update, folder, label=f"ingest run {i + 1}"))
        single.append(coordinator_run(args, artifact, n, update, folder, label=f"1 BLAS thread, run {i + 1}",
                                      env={"OPENBLAS_NUM_THREADS": "1"}))
        for c in (coords[-1], single[-1]):
            if not c["committed"] or c.get("accepted") != n:
                raise SystemExit(f"coordinator run did not commit all {n} updates: {c}")
        d, k, c, o = drops[-1], keeps[-1], coords[-1], single[-1]
        print(f"turn {i + 1} (machine {busy:.0f}% busy before), MB/s: raw {d['mb_per_s']:6.1f} (subscriber drops "
              f"payloads) {k['mb_per_s']:6.1f} (keeps them) | coordinator {c['mb_per_s']:6.1f} "
              f"({c['updates_per_s']:.0f} updates/s) | with OPENBLAS_NUM_THREADS=1 {o['mb_per_s']:6.1f}", flush=True)
    raw_mb = {"drops": statistics.median(r["mb_per_s"] for r in drops),
              "keeps": statistics.median(r["mb_per_s"] for r in keeps)}
    baseline = max(raw_mb, key=lambda key: raw_mb[key])  # the faster subscriber: the stricter baseline
    raws = drops if baseline == "drops" else keeps
    ratio = statistics.median(c["mb_per_s"] for c in coords) / raw_mb[baseline]
    stages = stage_times(artifact, update, args.stage_reps)
    print(f"ingest: coordinator/raw = {ratio:.0%}; in-process update path {stages['whole_ms']:.2f} ms "
          f"(max {stages['max_updates_per_s']:.0f} updates/s)", flush=True)
    profile = None
    if not args.no_profile:
        stats_path = folder / "coordinator.pstats"
        profiled = coordinator_run(args, artifact, n, update, folder, profile=stats_path, label="profiled run")
        profile = profile_summary(stats_path, n) | {"seconds": profiled.get("seconds")}
    for run in (*coords, *single):
        run.pop("rss_samples")
    return {"updates": n, "repeats": args.repeats, "raw_runs_subscriber_drops": drops,
            "raw_runs_subscriber_keeps": keeps, "raw_baseline": baseline, "coordinator_runs": coords,
            "coordinator_one_blas_thread_runs": single,
            "raw_drops_median": _median_run(drops, "mb_per_s"), "raw_keeps_median": _median_run(keeps, "mb_per_s"),
            "raw_median": _median_run(raws, "mb_per_s"), "coordinator_median": _median_run(coords, "mb_per_s"),
            "coordinator_one_blas_thread_median": _median_run(single, "mb_per_s"), "ratio": ratio,
            "ratio_one_blas_thread": statistics.median(c["mb_per_s"] for c in single) / raw_mb[baseline],
            "target_min": TARGET_INGEST_RATIO, "target_holds": ratio >= TARGET_INGEST_RATIO,
            "stages": stages, "profile": profile}


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[len(ordered) // 2]


def measure_memory(args: argparse.Namespace, artifact: Path, update: dict[str, np.ndarray], folder: Path,
                   ingest: dict[str, Any]) -> dict[str, Any]:
    paced_rate = PACED_SHARE * ingest["updates_per_s"]
    counts = sorted(args.memory_counts)
    runs: dict[str, list[dict[str, Any]]] = {"burst": [], "paced": []}
    failures: list[dict[str, Any]] = []
    lifted: set[int] = set()  # device counts at which the coordinator as shipped failed to start its round
    for mode, rate in (("burst", None), ("paced", paced_rate)):
        for n in counts:
            run = coordinator_run(args, artifact, n, update, folder, rate=rate, label="memory",
                                  lift_queue_limit=n in lifted)
            if run.get("failed"):
                failures.append(run | {"mode": mode})
                print(f"memory {mode:5s} N={n:5d}: the coordinator as shipped FAILED: {run['failed']}; "
                      f"{' | '.join(run['errors'])}", flush=True)
                lifted.add(n)
                run = coordinator_run(args, artifact, n, update, folder, rate=rate, label="memory, limit lifted",
                                      lift_queue_limit=True)
                if run.get("failed"):
                    raise SystemExit(f"coordinator failed with N={n} even with the queue limit lifted: {run}")
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
                          and all(r["committed"] for r in mode_runs)}
    return {"counts": counts, "paced_rate": paced_rate, "flat_rule_models": FLAT_MODELS, "model_mb": model_mb,
            "runs": runs, "verdicts": verdicts, "as_shipped_failures": failures,
            "queue_limit_lifted_at": sorted(lifted)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few updates, one repeat, nothing written")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="Mosquitto to measure (%(default)s)")
    p.add_argument("--updates", type=int, help="updates per ingest run (200; quick: 30)")
    p.add_argument("--repeats", type=int, help="ingest runs of each kind (5; quick: 1)")
    p.add_argument("--memory-counts", type=int, nargs="+", help="devices per memory run (10 100 1000; quick: 10 40)")
    p.add_argument("--stage-reps", type=int, help="repetitions of each in-process step (50; quick: 10)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile'd coordinator run")
    p.add_argument("--commit-timeout", type=float, default=300, help="give up on a round after (%(default)s s)")
    p.add_argument("--artifact", type=Path, help="reuse this exported artifact instead of exporting one")
    p.add_argument("--out", type=Path, help="JSON results (bench/results/coordinator.json; quick: none)")
    p.add_argument("--markdown", type=Path, help="benchmarks file to update (BENCHMARKS.md; quick: none)")
    args = p.parse_args(argv)
    quick = args.quick
    args.updates = args.updates or (30 if quick else 200)
    args.repeats = args.repeats or (1 if quick else 5)
    args.memory_counts = args.memory_counts or ([10, 40] if quick else [10, 100, 1000])
    args.stage_reps = args.stage_reps or (10 if quick else 50)
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
    memory = report["memory"]
    print(f"ingest {report['ingest']['ratio']:.0%} of raw (target ≥ 50%: "
          f"{'pass' if report['ingest']['target_holds'] else 'MISS'}); memory growth "
          + ", ".join(f"{m} {v['growth_mb']:+.1f} MB ({'flat' if v['flat'] else 'NOT flat'})"
                      for m, v in memory["verdicts"].items()) + f"; {report['bench_seconds']:.0f} s in all")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        png = args.out.with_name(args.out.stem + "_memory.png")
        if plot_memory(memory, png):
            report["memory"]["plot"] = str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png)
            print(f"wrote {png}")
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    if args.markdown is not None:
        update_section(args.markdown, render_markdown(report), START, END)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
