"""Secure aggregation (issue 16): what SecAgg+ costs a device and the coordinator per round, in compute and bytes.

In this process, no broker: one round per cell (10, 50, 100 devices; a flat float32 update of 10k, 100k, 1M
parameters, ~ N(0, 0.01) clipped to L2 norm 1.0, the clip also the quantizer's bound) driven stage by stage through
the real classes as ``tests/test_secure_round.py``'s ``Round`` does: ``DeviceSession`` per device,
``SecureAggregation`` at the coordinator; the settings the coordinator makes (``new_params``: degree ``degree_for(n,
dropout)``, threshold a strict majority, 16-bit values mod 2^32) for two planned drop-outs (``--secure-dropout``: the
default 10%, and 30%), the graph's seed fixed per device count instead of fresh; a discarded warm-up round first.
Messages cross ``encode`` / ``decode`` (masked inputs ``encode_tensors`` / ``decode_tensors``) outside the timed
calls: sizes are the exact wire bytes.

1. **device**: each device's calls timed (``time.perf_counter``) by stage: keys (the session: two X25519 key pairs,
   the self-mask seed, the graph; and ``keys()``), shares (agreement with each neighbour, Shamir split, sealing),
   routed (opening shares), masked (quantize, self mask, pairwise masks), reveal. Medians over the round's devices;
   total: the median of each device's sum.
2. **bytes**: per device, sent (keys, shares, masked input, reveal) and received (roster, routed shares, unmask
   request, and what the secure fields and peer list add to the task) against the plain float32 update
   (``encode_tensors`` of an ``UpdateHeader`` and the update as one tensor).
3. **coordinator**: each stage's ``offer`` of every message plus ``advance``, and ``result()`` (unmasking), with no
   drop-out and with 30% of the devices gone after sharing (keys and shares sent, no masked input), drawn at random
   (``DROP_SEED``) ``DRAWS`` times, each closed on a copy of the coordinator at the masked stage: the coordinator
   abandons a draw that leaves a neighbourhood below the threshold, and the section says how many it could unmask.
   The first it can is timed through unmasking (survivors reveal from copies of their sessions); if none can, a
   drop-out spread evenly along the graph's ring (every neighbourhood keeps the threshold) is timed instead and
   labelled so. Unmasked sums are checked against the float sums of the survivors' updates.

4. **fleet**: the end-to-end round over MQTT (the local Mosquitto): ``edgefl fleet`` with and without
   ``--secure-aggregation``, every device selected (10, 50, 100 devices; ``--fraction 1 --over-select 1``, the
   ``pi-5`` profile without its drop-out, no eligibility constraint), uniform weighting in both, the digits MLP
   with 64 hidden units (4,810 parameters) and with 1,500 (112,510), three rounds; the median wall time of
   rounds 2 and 3 (the first loads interpreters), as the round lines give it.

Run from the project root: ``python bench/bench_secagg.py`` writes ``bench/results/secagg.json`` (each cell as it
ends; ``--resume`` keeps those already there) and its section of ``BENCHMARKS.md``; ``--quick`` (10 and 50 devices,
10k and 100k parameters) writes only to the temporary folder and prints the section.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_fleet import ROOT, machine_info  # run as `python bench/<script>.py`; bench_fleet sets the path
from bench_markdown import ok, update_section
from bench_strategies import write_json

from coordinator.secure_round import Abandoned, SecureAggregation, new_params, secure_fields
from edge_runtime.protocol import (
    MaskedHeader,
    TrainTask,
    UpdateHeader,
    decode,
    decode_tensors,
    encode,
    encode_tensors,
    tensor_payload_limit,
)
from edge_runtime.secagg.graph import DEFAULT_DROPOUT, ring_order
from edge_runtime.secagg.params import SecureParams
from edge_runtime.secagg.quantize import MODULUS_BITS, VALUE_BITS
from edge_runtime.secagg.session import DeviceSession

START, END = "<!-- bench_secagg:start -->", "<!-- bench_secagg:end -->"
RESULTS = ROOT / "bench" / "results" / "secagg.json"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "bench_secagg_quick.json"

DEVICES, DEVICES_QUICK = (10, 50, 100), (10, 50)
PARAMETERS, PARAMETERS_QUICK = (10_000, 100_000, 1_000_000), (10_000, 100_000)
UPDATE_STD, CLIP = 0.01, 1.0
DROPOUT, DRAWS, DROP_SEED = 0.3, 20, 0
PLANS = (DEFAULT_DROPOUT, DROPOUT)  # the drop-out the degree is planned for (--secure-dropout)
ROUND, MODEL_VERSION, TENSOR = 3, 5, "update"
STAGES = ("keys", "shares", "routed", "masked", "reveal")
SENT, RECEIVED = ("keys", "shares", "masked", "reveal"), ("roster", "routed", "unmask", "task_extra")
TARGET_BYTES_RATIO, TARGET_DEVICE_S, TARGET_UNMASK_S = 1.5, 1.0, 10.0
LARGEST = (100, 1_000_000)  # the cell the device and unmasking targets are about


@dataclass(frozen=True)
class Plan:
    quick: bool

    @property
    def cells(self) -> list[tuple[float, int, int]]:
        devices, parameters = (DEVICES_QUICK, PARAMETERS_QUICK) if self.quick else (DEVICES, PARAMETERS)
        return [(plan, n, m) for plan in PLANS for n in devices for m in parameters]

    @property
    def results(self) -> Path:
        return QUICK_RESULTS if self.quick else RESULTS

    def identity(self) -> dict[str, Any]:
        """What a saved json must match for ``--resume`` to keep its cells."""
        return {"quick": self.quick, "update_std": UPDATE_STD, "clip": CLIP, "dropout": DROPOUT, "draws": DRAWS,
                "drop_seed": DROP_SEED, "plans": list(PLANS), "value_bits": VALUE_BITS, "modulus_bits": MODULUS_BITS}


# ---------------------------------------------------------------- one round


def secure_task(n: int, plan: float) -> TrainTask:
    """The round's task as the coordinator makes it for a planned drop-out ``plan``, the graph's seed fixed."""
    params = new_params(f"task-{ROUND}", ROUND, (f"dev-{i:03d}" for i in range(n)), plan)
    params = dataclasses.replace(params, seed=hashlib.sha256(f"bench-secagg-{n}".encode()).digest())
    fields: dict[str, Any] = secure_fields(params)
    return TrainTask(f"task-{ROUND}", ROUND, MODEL_VERSION, "artifact", 100.0, 1, 0.1, CLIP, 7, **fields)


def make_update(m: int, index: int) -> np.ndarray:
    update = np.random.default_rng([index, m]).normal(0.0, UPDATE_STD, m).astype(np.float32)
    norm = float(np.linalg.norm(update))
    return update * np.float32(CLIP / norm) if norm > CLIP else update


def timed(call: Callable[..., Any], *args: Any) -> tuple[Any, tuple[float, float]]:
    """The call's result and its (wall, this thread's CPU) seconds: on a loaded machine CPU time is the steadier."""
    wall, cpu = time.perf_counter(), time.thread_time()
    result = call(*args)
    return result, (time.perf_counter() - wall, time.thread_time() - cpu)


def wire(message: Any, tally: dict[str, int], what: str) -> Any:
    """The message as the other side decodes it; its encoded size added to ``tally[what]``."""
    payload = encode(message)
    tally[what] += len(payload)
    return decode(payload, type(message))


def offer_all(coordinator: SecureAggregation, messages: Mapping[str, Any]) -> Any:
    """Every message offered (each must be accepted), then ``advance``: what each device gets next."""
    for device, message in messages.items():
        refused = (coordinator.offer_masked(device, *message) if isinstance(message, tuple)
                   else coordinator.offer(device, message))
        if refused is not None:
            raise RuntimeError(f"the coordinator refused {device}'s message: {refused}")
    return coordinator.advance()


class Cell:
    """One round of ``n`` devices and ``m`` parameters, kept so that the drop-out branch can start from it."""

    def __init__(self, n: int, m: int, plan: float) -> None:
        self.m, self.task = m, secure_task(n, plan)
        self.params = SecureParams.from_task(self.task)
        self.device_s: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
        self.sent: dict[str, dict[str, int]] = {d: dict.fromkeys(SENT, 0) for d in self.task.peers}
        self.received: dict[str, dict[str, int]] = {d: dict.fromkeys(RECEIVED, 0) for d in self.task.peers}
        self.coordinator_s: dict[str, tuple[float, float]] = {}
        self.updates: dict[str, np.ndarray] = {}

    def share(self) -> tuple[dict[str, DeviceSession], SecureAggregation, dict[str, Any]]:
        """Keys, shares and routed shares; returns the sessions, the coordinator at the masked stage and the
        masked inputs (header, tensors) as the coordinator decodes them."""
        task, sessions, keys = self.task, {}, {}
        plain_task = dataclasses.replace(task, secure_seed="", secure_degree=0, secure_threshold=0,
                                         secure_value_bits=0, secure_modulus_bits=0, peers=())
        task_extra = len(encode(task)) - len(encode(plain_task))
        for i, d in enumerate(task.peers):
            self.received[d]["task_extra"] = task_extra
            (sessions[d], keys[d]), self.device_s[d]["keys"] = timed(start_session, d, task)
            keys[d] = wire(keys[d], self.sent[d], "keys")
            self.updates[d] = make_update(self.m, i)
        coordinator = SecureAggregation(self.params, self.m, CLIP)
        rosters, self.coordinator_s["keys"] = timed(offer_all, coordinator, keys)
        shares = {}
        for d, roster in rosters.items():
            shares[d], self.device_s[d]["shares"] = timed(sessions[d].shares, wire(roster, self.received[d], "roster"))
            shares[d] = wire(shares[d], self.sent[d], "shares")
        routed, self.coordinator_s["shares"] = timed(offer_all, coordinator, shares)
        masked, limit = {}, tensor_payload_limit(self.m)
        for i, (d, message) in enumerate(routed.items()):
            _, self.device_s[d]["routed"] = timed(sessions[d].accept_routed, wire(message, self.received[d], "routed"))
            rng = np.random.default_rng(i)
            (header, tensors), self.device_s[d]["masked"] = timed(sessions[d].masked_input, self.updates[d], CLIP,
                                                                  MODEL_VERSION, rng)
            payload = encode_tensors(header, tensors)
            self.sent[d]["masked"] = len(payload)
            masked[d] = decode_tensors(payload, MaskedHeader, limit)
        return sessions, coordinator, masked

    def unmask(self, sessions: Mapping[str, DeviceSession], coordinator: SecureAggregation,
               requests: Mapping[str, Any], count: bool) -> dict[str, Any]:
        """The survivors' reveals, the unmask stage and ``result()``; ``count``: this is the no-drop-out branch,
        whose device times and bytes are the cell's."""
        reveals = {}
        for d, request in requests.items():
            tally = self.received[d] if count else defaultdict(int)
            reveal, seconds = timed(sessions[d].reveal, wire(request, tally, "unmask"))
            reveals[d] = wire(reveal, self.sent[d] if count else defaultdict(int), "reveal")
            if count:
                self.device_s[d]["reveal"] = seconds
        _, unmask_s = timed(offer_all, coordinator, reveals)
        out: dict[str, Any] = {"unmask_ms": 1e3 * unmask_s[0], "unmask_cpu_ms": 1e3 * unmask_s[1]}
        try:
            (total, survivors), result_s = timed(coordinator.result)
        except Abandoned as exc:
            return out | {"abandoned": {"reason": exc.reason, "problem": exc.problem}}
        plain = np.sum([self.updates[d] for d in requests], axis=0, dtype=np.float64)
        error, bound = float(np.max(np.abs(total - plain))), survivors * 2 * CLIP / (2**VALUE_BITS - 1)
        counts = vars(coordinator.counts) | {"rejected": dict(coordinator.counts.rejected)}
        return out | {"result_ms": 1e3 * result_s[0], "result_cpu_ms": 1e3 * result_s[1], "survivors": survivors,
                      "max_error": error, "error_bound": bound, "sum_ok": error <= bound, "counts": counts}


def start_session(device: str, task: TrainTask) -> tuple[DeviceSession, Any]:
    session = DeviceSession(device, task)
    return session, session.keys()


def run_cell(plan: float, n: int, m: int) -> dict[str, Any]:
    started = time.perf_counter()
    cell = Cell(n, m, plan)
    sessions, coordinator, masked = cell.share()
    dropped_branch = copy.deepcopy(coordinator)  # at the masked stage, before any masked input
    requests, cell.coordinator_s["masked"] = timed(offer_all, coordinator, masked)
    dropout = dropout_branch(cell, sessions, dropped_branch, masked)
    no_drop = cell.unmask(sessions, coordinator, requests, count=True)
    cell.coordinator_s["unmask"] = (no_drop.pop("unmask_ms") / 1e3, no_drop.pop("unmask_cpu_ms") / 1e3)
    return {"plan": plan, "devices": n, "parameters": m, "degree": cell.params.degree,
            "threshold": cell.params.threshold,
            "device": device_summary(cell.device_s), "bytes": bytes_summary(cell),
            "coordinator_ms": {k: 1e3 * v[0] for k, v in cell.coordinator_s.items()},
            "coordinator_cpu_ms": {k: 1e3 * v[1] for k, v in cell.coordinator_s.items()}, "no_dropout": no_drop,
            "dropout": dropout, "seconds": round(time.perf_counter() - started, 1),
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def dropout_branch(cell: Cell, sessions: Mapping[str, DeviceSession], base: SecureAggregation,
                   masked: Mapping[str, Any]) -> dict[str, Any]:
    """DRAWS random sets of devices that vanish after sharing, each closed on a copy of ``base``; the first the
    coordinator can unmask (else the ring-spread set) is taken through unmasking."""
    peers, rng = list(cell.task.peers), np.random.default_rng(DROP_SEED)
    count = round(DROPOUT * len(peers))
    draws: list[tuple[int | str, set[str]]] = [
        (i, set(rng.choice(peers, count, replace=False).tolist())) for i in range(DRAWS)]
    ring = ring_order(peers, cell.params.seed)
    draws.append(("spread", {ring[int(j / DROPOUT)] for j in range(count)}))  # every 1/DROPOUT-th along the ring
    outcomes: list[str | None] = []
    out: dict[str, Any] = {"fraction": DROPOUT, "dropped": count, "draws": DRAWS, "timed": None, "first_failure": None}
    for draw, dropped in draws:
        if draw == "spread" and out["timed"] is not None:
            break
        branch = copy.deepcopy(base)
        try:
            requests, seconds = timed(offer_all, branch, {d: v for d, v in masked.items() if d not in dropped})
        except Abandoned as exc:
            outcomes.append(exc.reason)
            out["first_failure"] = out["first_failure"] or {"reason": exc.reason, "problem": exc.problem}
            continue
        outcomes.append(None)
        if out["timed"] is None:
            copies = {d: copy.copy(sessions[d]) for d in requests}  # shallow: reveal moves only the copy's stage
            out["timed"] = {"draw": draw, "masked_ms": 1e3 * seconds[0]} | cell.unmask(copies, branch, requests, False)
    return out | {"outcomes": outcomes[:DRAWS], "unmaskable": sum(o is None for o in outcomes[:DRAWS])}


def device_summary(device_s: Mapping[str, Mapping[str, tuple[float, float]]]) -> dict[str, Any]:
    """Medians over the devices, wall time (and CPU time, ``_cpu``), per stage and of each device's total."""
    out: dict[str, Any] = {}
    for i, suffix in enumerate(("", "_cpu")):
        out[f"stage{suffix}_ms"] = {s: 1e3 * statistics.median(t[s][i] for t in device_s.values()) for s in STAGES}
        totals = sorted(1e3 * sum(v[i] for v in t.values()) for t in device_s.values())
        out |= {f"total{suffix}_ms": statistics.median(totals), f"total_max{suffix}_ms": totals[-1]}
    return out | {"largest_stage": max(STAGES, key=out["stage_cpu_ms"].__getitem__)}


def bytes_summary(cell: Cell) -> dict[str, Any]:
    d0 = cell.task.peers[0]
    plain = len(encode_tensors(UpdateHeader(d0, cell.task.task_id, ROUND, MODEL_VERSION, 100, 0.5, 1.0),
                               {TENSOR: cell.updates[d0]}))
    sent = {k: statistics.median(t[k] for t in cell.sent.values()) for k in SENT}
    received = {k: statistics.median(t[k] for t in cell.received.values()) for k in RECEIVED}
    total_sent = statistics.median(sum(t.values()) for t in cell.sent.values())
    total_received = statistics.median(sum(t.values()) for t in cell.received.values())
    return {"plain_update": plain, "sent": sent, "received": received, "sent_total": total_sent,
            "received_total": total_received, "sent_ratio": total_sent / plain,
            "all_ratio": (total_sent + total_received) / plain}


# ---------------------------------------------------------------- the section


def size(value: float) -> str:
    return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 1024:.1f} KiB" if value >= 1024 \
        else f"{value:.0f} B"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 10 else f"{value:,.0f}" if value >= 100 \
        else f"{value:.1f}"


def targets(cell: dict[str, Any]) -> dict[str, tuple[bool, str] | None]:
    """Each target that applies to the cell: (holds, what was measured)."""
    largest, ratio = (cell["devices"], cell["parameters"]) == LARGEST, cell["bytes"]["sent_ratio"]
    drop = cell["dropout"]["timed"] or {}
    unmask_s = drop["result_ms"] / 1e3 if "result_ms" in drop and drop["draw"] != "spread" else None
    draws = f"{cell['dropout']['unmaskable']} of {cell['dropout']['draws']} random draws unmaskable"
    unmask_text = f"{unmask_s:.2f} s ({draws})" if unmask_s is not None else "cannot unmask" \
        if "result_ms" not in drop else f"no random draw unmaskable (ring-spread: {ms(drop['result_ms'])} ms)"
    return {"bytes": (ratio <= TARGET_BYTES_RATIO, f"{ratio:.3f}x") if cell["parameters"] >= 100_000 else None,
            "device": (cell["device"]["total_ms"] / 1e3 <= TARGET_DEVICE_S,
                       f"{ms(cell['device']['total_ms'])} ms wall, {ms(cell['device']['total_cpu_ms'])} ms CPU")
            if largest else None,
            "unmask": (unmask_s is not None and unmask_s <= TARGET_UNMASK_S, unmask_text) if largest else None}


def head(cell: dict[str, Any]) -> str:
    return f"| {100 * cell['plan']:.0f}% | {cell['devices']} |"


def target_cell(value: tuple[bool, str] | None) -> str:
    return "-" if value is None else ok(value[0])


def dropout_cells(drop: dict[str, Any]) -> str:
    t, failure = drop["timed"], drop["first_failure"]
    if t is None:
        return f"cannot unmask (`{failure['reason']}`: {failure['problem']}) | - | -"
    note = "" if t["draw"] == 0 else " (ring-spread ‡)" if t["draw"] == "spread" else f" (draw {t['draw']} †)"
    if "abandoned" in t:
        return f"{ms(t['masked_ms'])}{note} | {ms(t['unmask_ms'])} | cannot unmask (`{t['abandoned']['reason']}`)"
    return f"{ms(t['masked_ms'])}{note} | {ms(t['unmask_ms'])} | {ms(t['result_ms'])}"


def render(report: dict[str, Any]) -> str:
    m, cells, pc = report["machine"], list(report["cells"].values()), f"{100 * DROPOUT:.0f}%"
    lines = [START, "## Secure aggregation: device and coordinator cost per round", "",
             "In the benchmark process, no broker: one SecAgg+ round per cell through `DeviceSession` and "
             "`SecureAggregation` (`coordinator/secure_round.py`), a flat float32 update (N(0, "
             f"{UPDATE_STD:g}) clipped to L2 norm {CLIP:g}), {VALUE_BITS}-bit values mod 2^{MODULUS_BITS}. Plan: the "
             "drop-out the coordinator plans the degree for (`--secure-dropout`; `new_params`: degree "
             f"`degree_for(n, plan)`, threshold a strict majority), the default {100 * DEFAULT_DROPOUT:.0f}% and "
             f"{pc}. Sizes are exact wire bytes (`encode`, `encode_tensors`). Issue 16's targets: bytes sent per "
             f"device ≤ {TARGET_BYTES_RATIO:g}x the plain update for 100k+ parameters; device overhead ≤ "
             f"{TARGET_DEVICE_S:g} s and unmasking at {pc} drop-out ≤ {TARGET_UNMASK_S:g} s for 100 devices and 1M "
             "parameters; the end-to-end round over MQTT is the last table. Reproduce: `python "
             "bench/bench_secagg.py` (`--resume` continues; raw numbers: `bench/results/secagg.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores), {m['platform']}, Python {m['python']}; "
             f"load average (1 min) {report['loadavg_start']:.2f} at the start, {report['loadavg_end']:.2f} at the "
             "end.", "", "### Device compute per round (ms, median over the round's devices)", "",
             "keys: the session (key pairs, self-mask seed, the graph) and `keys()`; shares: agreement with each "
             "neighbour, Shamir split, sealing; routed: opening the neighbours' shares; masked: quantize, self mask, "
             "a pairwise mask per neighbour; reveal: the unmask request answered (no drop-out). Wall time "
             "(`perf_counter`); total also in the thread's CPU time (`thread_time`), steadier when other processes "
             "share the cores (see the load average), and the slowest device's wall total; the largest stage by CPU "
             "time.", "",
             "| plan | devices | degree / threshold | parameters | " + " | ".join(STAGES)
             + " | total: wall / CPU (slowest) | largest stage | target |",
             "| ---: | ---: | ---: | ---: |" + " ---: |" * len(STAGES) + " ---: | --- | --- |"]
    for c in cells:
        d = c["device"]
        lines.append(f"{head(c)} {c['degree']} / {c['threshold']} | {c['parameters']:,} | "
                     + " | ".join(ms(d["stage_ms"][k]) for k in STAGES) + f" | {ms(d['total_ms'])} / "
                     f"{ms(d['total_cpu_ms'])} ({ms(d['total_max_ms'])}) | {d['largest_stage']} | "
                     f"{target_cell(targets(c)['device'])} |")
    lines += ["", "### Bytes per device per round", "",
              "Sent: keys, shares (JSON), the masked input (safetensors, uint32), reveal (JSON); received: roster, "
              "routed shares, unmask request (JSON) and what the secure fields and peer list add to the task. Plain: "
              "the float32 update sent instead. Medians over the devices, no drop-out.", "",
              "| plan | devices | parameters | plain update | " + " | ".join(SENT)
              + " | sent | received | sent / plain | (sent + received) / plain | target (sent) |",
              "| ---: | ---: | ---: |" + " ---: |" * 9 + " --- |"]
    for c in cells:
        b = c["bytes"]
        lines.append(f"{head(c)} {c['parameters']:,} | {size(b['plain_update'])} | "
                     + " | ".join(size(b["sent"][k]) for k in SENT) + f" | {size(b['sent_total'])} | "
                     f"{size(b['received_total'])} | {b['sent_ratio']:.3f}x | {b['all_ratio']:.3f}x | "
                     f"{target_cell(targets(c)['bytes'])} |")
    lines += ["", "### Coordinator (ms)", "",
              "Each stage: every message offered, then `advance`; unmask: the survivors' reveals and `advance`; "
              f"result: `result()`. Drop-out: {pc} of the devices vanish after sharing, {DRAWS} random draws (seed "
              f"{DROP_SEED}); the coordinator abandons a draw that leaves some device with fewer surviving "
              "neighbours than the threshold (`cannot_unmask`: never a wrong sum). The first draw it can unmask is "
              "timed; † a later draw than the first, ‡ no random draw could be unmasked, so a drop-out spread evenly "
              "along the graph's ring (its best case, not a random one) is timed instead. Sum ok: the unmasked "
              "sum within a quantization step per device of the float sum.", "",
              "| plan | devices | parameters | keys | shares | masked | unmask | result | random draws unmaskable | "
              f"masked, {pc} drop | unmask | result | sum ok | target |",
              "| ---: | ---: | ---: |" + " ---: |" * 9 + " --- | --- |"]
    for c in cells:
        k, d, t = c["coordinator_ms"], c["dropout"], c["dropout"]["timed"] or {}
        sums_ok = c["no_dropout"].get("sum_ok") is not False and t.get("sum_ok") is not False
        lines.append(f"{head(c)} {c['parameters']:,} | " + " | ".join(ms(k[s]) for s in
                     ("keys", "shares", "masked", "unmask")) + f" | {ms(c['no_dropout'].get('result_ms'))} | "
                     f"{d['unmaskable']} of {d['draws']} | {dropout_cells(d)} | {'yes' if sums_ok else '**no**'} | "
                     f"{target_cell(targets(c)['unmask'])} |")
    return "\n".join([*lines, "", *summary_lines(cells), *render_fleet(report), END])


def summary_lines(cells: list[dict[str, Any]]) -> list[str]:
    out = []
    for name, what in (("bytes", f"bytes sent ≤ {TARGET_BYTES_RATIO:g}x the plain update, 100k+ parameters"),
                       ("device", f"device overhead ≤ {TARGET_DEVICE_S:g} s, 100 devices, 1M parameters"),
                       ("unmask", f"unmasking at {100 * DROPOUT:.0f}% drop-out ≤ {TARGET_UNMASK_S:g} s, 100 devices, "
                                  "1M parameters")):
        found = [(c, v) for c in cells if (v := targets(c)[name]) is not None]
        got = "; ".join(f"{c['devices']} x {c['parameters']:,} planned for {100 * c['plan']:.0f}%: {v[1]}"
                        for c, v in found)
        out.append(f"- Target, {what}: " + (f"{got}: {ok(all(v[0] for _, v in found))}." if found else
                                            "not measured in this run."))
    return out


# ---------------------------------------------------------------- end to end, over MQTT

FLEET_DEVICES, FLEET_DEVICES_QUICK = (10, 50, 100), (10,)
FLEET_MODELS = {"mlp-64": (64,), "mlp-1500": (1500,)}
FLEET_ROUNDS = 3


def fleet_phase(report: dict[str, Any], quick: bool, save: Callable[[], None]) -> None:
    """Plain and secure fleets side by side, each saved as it ends."""
    from bench_fleet import RoundLog, fleet_config

    from device_profiles.fleet import run_fleet

    runs = report.setdefault("fleet", {})
    out = Path(tempfile.mkdtemp(prefix="edgefl-bench-secagg-"))
    policy = out / "anytime.toml"
    policy.write_text("")  # no eligibility constraint: every device takes part in every round
    profiles = out / "steady.toml"  # the catalog's pi-5 without its 2% drop-out: no round waits for its deadline
    profiles.write_text('[steady-pi-5]\ndescription = "pi-5 that never drops out"\nslowdown = 1.8\nmemory-mb = 8192\n'
                        'power = "mains"\ndropout = 0.0\nnetwork = { kind = "ethernet", up-kbps = 900000, '
                        'down-kbps = 900000, latency-ms = 5 }\navailability = { charging = 1.0, idle = 1.0, '
                        'unmetered = 1.0, utc-offsets = [0] }\n')
    for model, hidden in FLEET_MODELS.items():
        for n in FLEET_DEVICES_QUICK if quick else FLEET_DEVICES:
            for secure in (False, True):
                key = f"{model} | {n} devices | {'secure' if secure else 'plain'}"
                if key in runs:
                    continue
                config = fleet_config(out, key.replace(" | ", "-").replace(" ", ""), prefix="bench-secagg",
                                      devices=n, rounds=FLEET_ROUNDS, fraction=1.0, over_select=1.0, min_clients=3,
                                      profiles="steady-pi-5", profile_file=profiles, policy=policy,
                                      weighting="uniform", round_timeout=30.0,
                                      model="mlp", hidden=hidden, secure_aggregation=secure)
                log = RoundLog(key, FLEET_ROUNDS)
                run_fleet(config, on_round=log, note=lambda *_: None)
                lines = log.lines
                runs[key] = {"model": model, "devices": n, "secure": secure,
                             "round_s": [line["duration_s"] for line in lines],
                             "status": [line["status"] for line in lines],
                             "reported": [line["reported"] for line in lines],
                             "bytes_in": [line["bytes_in"] for line in lines],
                             "secure_info": [line.get("secure") for line in lines]}
                save()


def render_fleet(report: dict[str, Any]) -> list[str]:
    runs = report.get("fleet")
    if not runs:
        return []
    lines = ["", "### End to end over MQTT (`edgefl fleet`, the local Mosquitto)", "",
             f"Every device selected each round, {FLEET_ROUNDS} rounds, the `pi-5` profile without drop-outs and no "
             "eligibility "
             "constraint, uniform weighting in both runs; round time: the median of rounds 2 and 3 as the round "
             "lines give it (the first also loads interpreters); bytes in: everything the coordinator received per "
             "round (keys, shares and reveals included).", "",
             "| model | devices | plain round | secure round | secure / plain | committed (secure) | bytes in, plain "
             "/ secure |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model in FLEET_MODELS:
        for n in FLEET_DEVICES:
            plain, secure = (runs.get(f"{model} | {n} devices | {k}") for k in ("plain", "secure"))
            if plain is None or secure is None:
                continue
            a, b = statistics.median(plain["round_s"][1:]), statistics.median(secure["round_s"][1:])
            committed = sum(1 for status in secure["status"] if status == "committed")
            lines.append(f"| {model} | {n} | {a:.2f} s | {b:.2f} s | {b / a:.2f}x | {committed} of "
                         f"{len(secure['status'])} | {size(statistics.median(plain['bytes_in']))} / "
                         f"{size(statistics.median(secure['bytes_in']))} |")
    return lines


# ---------------------------------------------------------------- main


def load_report(plan: Plan, resume: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "plan": plan.identity(), "machine": machine_info(), "cells": {},
                              "loadavg_start": round(os.getloadavg()[0], 2)}
    saved = json.loads(plan.results.read_text(encoding="utf-8")) if resume and plan.results.is_file() else None
    if saved is not None:
        if saved.get("plan") != report["plan"]:
            raise SystemExit(f"{plan.results} measured other settings than this run's: start afresh without --resume")
        report |= {k: saved[k] for k in ("date", "cells", "fleet", "loadavg_start", "loadavg_end") if k in saved}
        print(f"kept from {plan.results}: {len(report['cells'])} cells", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 devices, 10k and 100k parameters; writes "
                                                             "only to the temporary folder")
    parser.add_argument("--resume", action="store_true", help="keep the cells already in the json, run the rest")
    parser.add_argument("--skip-fleet", action="store_true", help="no end-to-end fleet runs over MQTT")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    plan = Plan(args.quick)
    report = load_report(plan, args.resume)
    if any(f"planned {c[0]:g} | {c[1]} devices | {c[2]} parameters" not in report["cells"] for c in plan.cells):
        run_cell(DEFAULT_DROPOUT, 10, plan.cells[-1][2])  # warm-up, discarded: the allocator's first large arrays
    for dropout, n, m in plan.cells:
        key = f"planned {dropout:g} | {n} devices | {m} parameters"
        if key in report["cells"]:
            continue
        cell = report["cells"][key] = run_cell(dropout, n, m)
        report["loadavg_end"] = round(os.getloadavg()[0], 2)
        write_json(plan.results, report)
        drop = cell["dropout"]
        print(f"{key}: device {cell['device']['total_ms']:.1f} ms (largest {cell['device']['largest_stage']}), sent "
              f"{cell['bytes']['sent_ratio']:.3f}x plain, result {cell['no_dropout'].get('result_ms', 0):.0f} ms, "
              f"{drop['unmaskable']}/{drop['draws']} drop-out draws unmaskable, {cell['seconds']:.0f} s", flush=True)
    if not args.skip_fleet:
        fleet_phase(report, plan.quick, lambda: write_json(plan.results, report))
    section = render(report)
    print(section)
    if plan.quick:
        print(f"wrote {plan.results} (a quick run: bench/results and BENCHMARKS.md left alone)")
        return 0
    update_section(ROOT / "BENCHMARKS.md", section, START, END)
    print(f"wrote {plan.results} and BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
