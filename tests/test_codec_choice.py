"""A codec per device link, and byte accounting: what devices advertise, the table ``--codec auto`` reads and its
TOML overrides, selection of devices that encode their codec, one round decoding two codecs, the round line's and
the fleet summary's bytes, the emulated link charging compressed sizes, and federations on the real broker whose
byte counts match what the codecs sent.

Updates are multiples of 1/64 that int8 and float16 carry exactly, so committed weights are compared with ``==``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from coordinator.codec_choice import AUTO, Choice, CodecTable, choose_codec, round_codecs
from coordinator.config import CoordinatorConfig, build_config
from coordinator.errors import ConfigError
from coordinator.machine import Effect, Line, Now, Publish, RoundMachine
from coordinator.pipeline_args import codec_or_auto
from coordinator.report import human_line, traffic
from coordinator.rounds import WRONG_CODEC, OpenRound, RoundPlan, Tally
from coordinator.server_state import ServerState
from coordinator.strategies.fedavg import FedAvg
from device_profiles.availability import ProfileSignals
from device_profiles.clock import Speedup
from device_profiles.fleet_config import build_fleet_config
from device_profiles.prepare import write_config_toml
from device_profiles.profile_pace import ProfilePace
from device_profiles.profiles import Link, load_profiles
from device_profiles.summary import traffic as fleet_traffic
from edge_runtime.artifact import Artifact
from edge_runtime.codecs import HEADER_BYTES, get_codec
from edge_runtime.errors import SignalError
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import (
    DEVICE_CODECS,
    DeviceStatus,
    GlobalHeader,
    Topics,
    TrainTask,
    UpdateHeader,
    decode,
    decode_tensors,
    encode,
    encode_tensors,
    encodes,
)
from edge_runtime.signals import Signals, link_class, parse_signals
from edge_runtime.weights import Weights
from tests.conftest import FederationFiles
from tests.federation_tools import (
    SYSTEM_BROKER,
    Watcher,
    coordinator_command,
    device_statuses,
    round_lines,
    start_device,
)
from tests.federation_tools import start as run

# --- what a device advertises -------------------------------------------------------------------


def test_a_device_of_this_release_advertises_every_codec_family() -> None:
    assert DEVICE_CODECS == ("float32", "float16", "int8", "int4", "sign", "rotated-sign", "topk")
    for name in ("float32", "float16", "int8", "int4", "sign", "rotated-sign", "topk:0.01", "topk:0.1+int4"):
        assert encodes(name, DEVICE_CODECS), name


@pytest.mark.parametrize(("codec", "advertised", "expected"), [
    ("float32", (), True),  # a device that predates the field: float32 alone
    ("float16", (), False),
    ("int8", ("float32", "int8"), True),
    ("int4", ("float32", "int8"), False),
    ("topk:0.1", ("topk",), False),  # topk's values default to float32, which this device does not list
    ("topk:0.1", ("float32", "topk"), True),
    ("topk:0.1+int8", ("float32", "topk"), False),
    ("topk:0.1+int8", ("int8", "topk"), True),
    ("topk:0.1+int8", ("float32", "int8"), False),
])
def test_topk_forms_need_the_family_and_their_values_codec(codec: str, advertised: tuple[str, ...],
                                                           expected: bool) -> None:
    assert encodes(codec, advertised) is expected


@pytest.mark.parametrize(("signals", "link"), [
    (Signals(), ""),
    (Signals(network="offline"), ""),
    (Signals(network="unmetered", interface="eth0"), "wired"),
    (Signals(network="unmetered", interface="enp3s0"), "wired"),
    (Signals(network="unmetered", interface="wlan0"), "wifi"),
    (Signals(network="unmetered", interface="wlp2s0"), "wifi"),
    (Signals(network="unmetered", interface="wwan0"), "cellular"),  # a flat-rate modem made unmetered by policy
    (Signals(network="metered", interface="wlan0"), "cellular"),  # a phone's hotspot
    (Signals(network="metered"), "cellular"),  # Termux on mobile data
    (Signals(network="unmetered", interface="tun0"), ""),
    (Signals(network="unmetered", interface="eth0", link="constrained"), "constrained"),  # said by a provider
])
def test_the_link_class_follows_the_network_signals_unless_a_provider_says_it(signals: Signals, link: str) -> None:
    assert link_class(signals) == link


def test_a_signals_file_may_state_the_link_and_is_refused_an_unknown_one() -> None:
    assert parse_signals({"link": "constrained"}, "s.json").link == "constrained"
    with pytest.raises(SignalError, match="link: expected one of wired, wifi, cellular, constrained"):
        parse_signals({"link": "satellite"}, "s.json")


def test_an_emulated_device_advertises_its_profiles_link() -> None:
    profiles = load_profiles()
    classes = {name: p.network.link_class for name, p in profiles.items()}
    assert classes == {"pi-zero-2w": "wifi", "pi-4": "wired", "pi-5": "wired", "gateway": "constrained",
                       "phone-low": "cellular", "phone-mid": "wifi", "phone-high": "wifi"}
    assert Link("wifi", 999, 5000, 10).link_class == "constrained"  # below 1 Mbit/s up, whatever the kind
    assert Link("5g", 1000, 5000, 10).link_class == "cellular"
    signals = ProfileSignals(profiles["gateway"], 0, 0, lambda: 0.0, 0.0).read()
    assert signals.link == "constrained" and link_class(signals) == "constrained"


# --- the table and the choice -------------------------------------------------------------------

NEW = DEVICE_CODECS


def status(link: str = "", codecs: tuple[str, ...] = NEW, device: str = "d") -> DeviceStatus:
    return DeviceStatus(device, True, True, artifact_id=AID, model_version=0, codecs=codecs, link=link)


def test_the_default_table_from_the_fastest_link_to_the_slowest() -> None:
    table = CodecTable()
    chosen = {link: choose_codec(AUTO, table, status(link)).codec
              for link in ("wired", "wifi", "cellular", "constrained", "", "satellite")}
    assert chosen == {"wired": "float16", "wifi": "float16", "cellular": "int8", "constrained": "rotated-sign",
                      "": "int8", "satellite": "int8"}


def test_auto_falls_back_to_float32_for_a_device_that_lacks_the_tables_codec() -> None:
    table = CodecTable()
    assert choose_codec(AUTO, table, status("cellular", codecs=())) == Choice("float32")  # predates advertising
    assert choose_codec(AUTO, table, status("wired", codecs=("float32", "int8"))) == Choice("float32")
    assert choose_codec(AUTO, table, status("wired", codecs=("int8",))) == Choice(
        None, "cannot encode float16 or float32")


def test_a_forced_codec_is_every_devices_or_none() -> None:
    assert choose_codec("int4", CodecTable(), status("wired")) == Choice("int4")
    assert choose_codec("int4", CodecTable(), status("wired", codecs=())) == Choice(None, "cannot encode int4")
    assert choose_codec("float32", CodecTable(), status("wired", codecs=())) == Choice("float32")


def test_the_payload_limit_allows_every_codec_a_round_may_use() -> None:
    assert round_codecs("int8", CodecTable()) == ("int8",)
    assert round_codecs(AUTO, CodecTable()) == ("float16", "int8", "rotated-sign", "float32")


def test_codec_auto_is_accepted_on_the_command_line_and_a_bad_name_is_explained() -> None:
    assert codec_or_auto("auto") == "auto" and codec_or_auto("topk:0.01+int8") == "topk:0.01+int8"
    with pytest.raises(argparse.ArgumentTypeError, match=r"codec 'int3' is not known; expected one of .* or auto"):
        codec_or_auto("int3")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_toml_codec_table_overrides_entries_of_the_default(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'codec = "auto"\n[codec-table]\ncellular = "int4"\nwifi = "topk:0.1+int8"\n')
    config = build_config(file, {"artifact": Path("a"), "state_dir": Path("s")})
    assert config.codec == "auto"
    assert config.link_codecs == CodecTable(wifi="topk:0.1+int8", cellular="int4")
    assert config.round_codecs == ("float16", "topk:0.1+int8", "int4", "rotated-sign", "int8", "float32")
    inline = write(tmp_path / "i.toml", 'codec = "auto"\ncodec-table = { constrained = "sign" }\n')
    assert build_config(inline, {"artifact": Path("a"), "state_dir": Path("s")}).link_codecs.constrained == "sign"


@pytest.mark.parametrize(("table", "key", "expected"), [
    ('[codec-table]\nsatellite = "int8"\n', "codec-table.satellite",
     "expected a link class: one of wired, wifi, cellular, constrained, unknown, found 'an unknown key'"),
    ('[codec-table]\nwifi = "int3"\n', "codec-table.wifi",
     "expected a codec name (codec 'int3' is not known; expected one of float32,"),
    ('[codec-table]\nwifi = "auto"\n', "codec-table.wifi", "expected a codec name (codec 'auto' is not known"),
    ('[codec-table]\nwifi = "topk:0.10"\n', "codec-table.wifi", "not in canonical form; write 'topk:0.1'"),
    ('[codec-table]\nwifi = 8\n', "codec-table", "expected a table of strings ([codec-table] with lines like"),
    ('codec-table = "int8"\n', "codec-table", "expected a table of strings"),
])
def test_a_bad_codec_table_is_refused_naming_the_file_and_the_key(tmp_path: Path, table: str, key: str,
                                                                   expected: str) -> None:
    file = write(tmp_path / "c.toml", f'codec = "auto"\n{table}')
    for build in (lambda: build_config(file, {"artifact": Path("a"), "state_dir": Path("s")}),
                  lambda: build_fleet_config(file, {})):
        with pytest.raises(ConfigError) as info:
            build()
        assert (info.value.source, info.value.key) == (str(file), key)
        assert expected in str(info.value)


def test_a_fleet_passes_its_codec_table_to_the_coordinator_and_writes_it_back(tmp_path: Path) -> None:
    file = write(tmp_path / "fleet.toml", 'codec = "auto"\n[codec-table]\nconstrained = "int4"\n')
    config = build_fleet_config(file, {"devices": 4})
    coordinator = config.coordinator_config(Path("a"), Path("s"), None, "mqtt://127.0.0.1", "auto", 1.0)
    assert (coordinator.codec, coordinator.link_codecs.constrained) == ("auto", "int4")
    write_config_toml(tmp_path / "again.toml", config)
    assert build_fleet_config(tmp_path / "again.toml", {}) == config


# --- one round, two codecs ----------------------------------------------------------------------

KERNEL, BIAS = "dense/kernel", "dense/bias"
SPECS = (WeightSpec(KERNEL, (1, 2)), WeightSpec(BIAS, (1,)))
GLOBAL = {KERNEL: np.array([[1.0, -1.0]], np.float32), BIAS: np.array([0.5], np.float32)}
# Device a sends (127/64, -1, 1/2) in int8: its block's scale is 127/64 / 127 = 1/64, levels 127, -64, 32, exact.
INT8_A: Weights = {"q": np.array([127, -64, 32], np.int8), "scales": np.array([1 / 64], np.float32)}
FLOAT32_B: Weights = {KERNEL: np.array([[-0.25, 0.5]], np.float32), BIAS: np.array([0.5], np.float32)}  # 3 examples


def header(device: str, codec: str, examples: int) -> UpdateHeader:
    return UpdateHeader(device, "t", 1, 0, examples, 1.0, 1.0, codec)


def test_a_round_decodes_each_device_with_its_own_codec_and_counts_their_bytes() -> None:
    plan = RoundPlan(1, "t", 0, frozenset({"a", "b"}), 2, 2, 2, 4.0, math.inf,
                     codecs=MappingProxyType({"a": "int8", "b": "float32"}))
    state = ServerState("ab" * 32, "fedavg", GLOBAL)
    round_ = OpenRound(plan, state, SPECS, FedAvg(), Tally())
    assert round_.offer_update("a", True, header("a", "float32", 1), FLOAT32_B, 90) == WRONG_CODEC
    assert round_.offer_update("b", True, header("b", "int8", 3), INT8_A, 40) == WRONG_CODEC
    assert round_.offer_update("a", True, header("a", "int8", 1), INT8_A, 100) is None
    assert round_.offer_update("b", True, header("b", "float32", 3), FLOAT32_B, 200) is None
    tally = round_.tally
    assert tally.rejected == Counter({WRONG_CODEC: 2})  # refused updates weigh nothing in the bytes
    assert tally.codec_mix == Counter({"int8": 1, "float32": 1})
    assert tally.bytes_up == 300
    # float32 would have sent 3 x 4 = 12 tensor bytes: a's 7 (3 levels, a scale) become 12, b's stay 12
    assert tally.bytes_up_float32 == (100 - 7 + 12) + (200 - 12 + 12)
    outcome = round_.close("goal")
    assert outcome.state is not None
    # GLOBAL + (1 x (127/64, -1, 1/2) + 3 x (-1/4, 1/2, 1/2)) / 4 = GLOBAL + (0.30859375, 0.125, 0.5)
    np.testing.assert_array_equal(outcome.state.weights[KERNEL], [[1.30859375, -0.875]])
    np.testing.assert_array_equal(outcome.state.weights[BIAS], [1.0])


def test_the_round_lines_traffic_fields_by_hand() -> None:
    tally = Tally(bytes_up=300, bytes_up_float32=305, codec_mix=Counter({"int8": 1, "float32": 1}), bytes_down=1000)
    assert traffic(tally, selected=4) == {
        "bytes_up": 300, "bytes_up_per_device": 150.0, "bytes_up_float32": 305, "bytes_down": 1000,
        "bytes_down_per_device": 250.0, "codec_mix": {"float32": 1, "int8": 1}, "compression": 1.017}
    assert traffic(Tally(), selected=0) == {
        "bytes_up": 0, "bytes_up_per_device": None, "bytes_up_float32": 0, "bytes_down": 0,
        "bytes_down_per_device": None, "codec_mix": {}, "compression": None}
    line = {"round": 2, "status": "committed", "closed_by": "goal", "reported": 2, "selected": 4, "rejected": {},
            "bytes_in": 1500, "bytes_out": 2000, "duration_s": 1.0, "test": None, "federated_eval": None,
            **traffic(tally, 4)}
    assert human_line(line) == ("round 2  committed  2/4 reported  acc -  in 1.5 kB  out 2.0 kB  "
                                "up 300 B (float32 1, int8 1, 1.0x)  1.0 s")
    line.update(codec_mix={"int8": 2}, compression=3.9)
    assert "up 300 B (int8, 3.9x)" in human_line(line)


def test_the_fleet_summary_sums_the_round_lines_traffic() -> None:
    lines: list[dict[str, Any]] = [{"selected": 4, "bytes_up": 300, "bytes_up_float32": 900, "bytes_down": 1000,
              "codec_mix": {"int8": 2, "float16": 1}},
             {"selected": 2, "bytes_up": 100, "bytes_up_float32": 300, "bytes_down": 500, "codec_mix": {"int8": 1}},
             {"selected": 0}]  # a line written before bytes were counted by codec
    moved = fleet_traffic(lines)
    assert (moved.bytes_up, moved.bytes_down, moved.codec_mix) == (400, 1500, {"float16": 1, "int8": 3})
    assert (moved.bytes_up_per_device, moved.bytes_down_per_device, moved.compression) == (100.0, 250.0, 3.0)


# --- selection by codec, on the machine ----------------------------------------------------------

AID = "cd" * 32
TOPICS = Topics("test")
M_SPECS = (WeightSpec("w", (2,)), WeightSpec("b", (1,)))
M_GLOBAL = {"w": np.array([1.0, -1.0], np.float32), "b": np.array([0.5], np.float32)}


def machine(**changes: Any) -> RoundMachine:
    options: dict[str, Any] = {"artifact": Path("a"), "state_dir": Path("s"), "federation": "test", "rounds": 1,
                               "fraction": 1.0, "min_clients": 2, "min_reports": 2, "over_select": 1.0,
                               "round_timeout": 30.0, "eval_every": 0, **changes}
    config = CoordinatorConfig(**options)
    strategy = config.build_strategy()
    ids = iter(f"task-{i}" for i in range(100))
    return RoundMachine(config, ServerState(AID, strategy.name, M_GLOBAL, strategy.init(M_GLOBAL)), strategy,
                        M_SPECS, b"bundle", payload_limit=10**6, task_lr=0.05, new_id=lambda: next(ids))


def at(t: float) -> Now:
    return Now(clock=1000.0 + t, real=t, wall=1.7e9 + t)


def start(m: RoundMachine, statuses: list[DeviceStatus]) -> list[Effect]:
    first = m.start(at(0))
    for s in statuses:
        m.receive(TOPICS.status(s.device_id), encode(s), at(0.1))
    return first + m.tick(at(1.5))


def sent_tasks(effects: list[Effect]) -> dict[str, tuple[TrainTask, bytes]]:
    return {e.topic.split("/")[-2]: (decode(e.payload, TrainTask), e.payload) for e in effects
            if isinstance(e, Publish) and e.topic.endswith("/task") and e.payload}


def global_payload(effects: list[Effect]) -> bytes:
    return [e.payload for e in effects if isinstance(e, Publish) and e.topic == TOPICS.global_model][-1]


def test_a_device_that_cannot_encode_the_forced_codec_is_not_selected_and_the_wait_says_so() -> None:
    m = machine(codec="int8")
    start(m, [status("wired", device="d1"), status("", codecs=(), device="d2")])
    assert m.waiting_reason() is not None and m.eligible() == ["d1", "d2"] and m.trainable() == {"d1": "int8"}
    assert m.waiting_reason() == "round 1 waits for 2 eligible devices (1 now; 2 online, 1 eligible but cannot " \
                                 "encode int8)"
    effects = m.receive(TOPICS.status("d3"), encode(status("cellular", device="d3")), at(2))
    tasks = sent_tasks(effects)
    assert m.waiting_reason() is None and set(tasks) == {"d1", "d3"}
    assert {task.codec for task, _ in tasks.values()} == {"int8"}


def update(task: TrainTask, device: str, codec: str, delta: tuple[float, float, float],
           examples: int) -> bytes:
    weights: Weights = {"w": np.array(delta[:2], np.float32), "b": np.array(delta[2:], np.float32)}
    encoded = get_codec(codec).encode(weights, M_SPECS, task.seed, task.clip_norm)
    for name, value in encoded.decoded.items():  # the values were chosen so that every codec here carries them exactly
        np.testing.assert_array_equal(value, weights[name])
    head = UpdateHeader(device, task.task_id, task.round, task.model_version, examples, 1.0, 1.0, codec)
    return encode_tensors(head, encoded.tensors)


def test_auto_gives_each_device_its_links_codec_and_the_line_counts_what_moved() -> None:
    m = machine(codec="auto", min_clients=3, min_reports=3)
    effects = start(m, [status("wired", device="d1"), status("cellular", device="d2"),
                        status("cellular", codecs=(), device="d3")])
    tasks, model = sent_tasks(effects), len(global_payload(effects))
    assert {d: task.codec for d, (task, _) in tasks.items()} == {"d1": "float16", "d2": "int8", "d3": "float32"}
    deltas = {"d1": ("float16", (0.5, -0.25, 0.25), 1), "d2": ("int8", (127 / 64, -1.0, 0.5), 1),
              "d3": ("float32", (-0.25, 0.5, 0.5), 2)}
    payloads = {d: update(tasks[d][0], d, codec, delta, n) for d, (codec, delta, n) in deltas.items()}
    effects = [e for d, p in payloads.items() for e in m.receive(TOPICS.update(d), p, at(2))]
    line = next(e.line for e in effects if isinstance(e, Line))
    assert (line["status"], line["reported"], line["codec_mix"]) == (
        "committed", 3, {"float16": 1, "float32": 1, "int8": 1})
    # (1 x d1 + 1 x d2 + 2 x d3) / 4 = (0.49609375, -0.0625, 0.4375), added to (1, -1, 0.5)
    state = m.state
    np.testing.assert_array_equal(state.weights["w"], [1.49609375, -1.0625])
    np.testing.assert_array_equal(state.weights["b"], [0.9375])
    up = sum(len(p) for p in payloads.values())
    tensor_bytes = {"d1": 3 * 2, "d2": 3 + 4, "d3": 3 * 4}  # float16 values; int8 levels and one scale; float32
    float32 = sum(len(payloads[d]) - tensor_bytes[d] + 3 * 4 for d in payloads)
    assert (line["bytes_up"], line["bytes_up_float32"], line["compression"]) == (up, float32, round(float32 / up, 3))
    assert line["bytes_up_per_device"] == round(up / 3, 1)
    down = sum(len(payload) for _, payload in tasks.values()) + 3 * model  # each device: its task and the model
    assert (line["bytes_down"], line["bytes_down_per_device"]) == (down, round(down / 3, 1))


# --- the emulated link charges the compressed size ------------------------------------------------


def test_an_emulated_upload_takes_less_time_when_the_codec_sends_fewer_bytes() -> None:
    gateway = load_profiles()["gateway"]  # LTE-M: 100 kbit/s up, 300 ms
    pace = ProfilePace(gateway, Speedup(60.0), seed=0, device=0)
    specs = (WeightSpec("w", (100, 24)), WeightSpec("b", (10,)))  # 2,410 parameters, the digits MLP's size
    rng = np.random.default_rng(0)
    weights = {spec.name: rng.normal(0, 0.01, spec.shape).astype(np.float32) for spec in specs}
    sizes = {}
    for codec in ("float32", "int8", "rotated-sign"):
        tensors = get_codec(codec).encode(weights, specs, 7, 10.0).tensors
        sizes[codec] = len(encode_tensors(UpdateHeader("g", "t", 1, 0, 5, 1.0, 1.0, codec), tensors))
    waits = {codec: pace.upload_wait_s(size) for codec, size in sizes.items()}
    assert waits["float32"] > waits["int8"] > waits["rotated-sign"]
    for codec, size in sizes.items():  # latency plus the bytes at the link's rate, on a clock 60 times faster
        assert waits[codec] == pytest.approx((0.3 + size * 8 / 100_000) / 60)
    assert waits["float32"] - waits["int8"] == pytest.approx((sizes["float32"] - sizes["int8"]) * 8 / 100_000 / 60)


# --- on the real broker -------------------------------------------------------------------------


def updates_by_round(watcher: Watcher, federation: str) -> dict[int, list[tuple[UpdateHeader, Weights, int]]]:
    """Every update the watcher saw: header, tensors and payload size, by round."""
    found: dict[int, list[tuple[UpdateHeader, Weights, int]]] = {}
    for topic, payload, _ in list(watcher.seen):
        if topic.startswith(f"edgefl/{federation}/updates/"):
            head, tensors = decode_tensors(payload, UpdateHeader, 10**8)
            found.setdefault(head.round, []).append((head, tensors, len(payload)))
    return found


def check_bytes_up(lines: list[dict[str, Any]], updates: dict[int, list[tuple[UpdateHeader, Weights, int]]],
                   parameters: int) -> None:
    """Each line's bytes up are the sizes of the updates its round received (all accepted), and each update's
    tensors are what its codec's layout says, under a header of at most a few hundred bytes."""
    for line in lines:
        sent = updates[line["round"]]
        assert line["rejected"] == {} and line["late"] == 0 and line["reported"] == len(sent), line
        assert line["bytes_up"] == sum(size for _, _, size in sent)
        assert line["codec_mix"] == dict(sorted(Counter(head.codec for head, _, _ in sent).items()))
        float32 = 0
        for head, tensors, size in sent:
            tensor_bytes = sum(t.nbytes for t in tensors.values())
            assert tensor_bytes == get_codec(head.codec).payload_limit(parameters) - HEADER_BYTES, head.codec
            assert size - tensor_bytes < 1024
            float32 += size - tensor_bytes + 4 * parameters
        assert line["bytes_up_float32"] == float32 and line["compression"] == round(float32 / line["bytes_up"], 3)


@pytest.mark.broker
@pytest.mark.usefixtures("stop_processes")
def test_an_int8_federation_counts_the_bytes_its_devices_sent(federation_files: FederationFiles, tmp_path: Path,
                                                               federation: str) -> None:
    parameters = Artifact.load(federation_files.artifact).manifest.parameter_count
    for i in range(3):
        start_device(SYSTEM_BROKER, federation, f"d{i}", federation_files.devices[i], tmp_path)
    watcher = Watcher(SYSTEM_BROKER, [f"edgefl/{federation}/updates/+", f"edgefl/{federation}/devices/+/task",
                                      f"edgefl/{federation}/model/global"])
    try:
        coord = run(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--codec", "int8",
                                        "--rounds", "2", "--fraction", "1", "--min-clients", "3", "--over-select",
                                        "1", "--min-reports", "3", "--round-timeout", "30", "--eval-every", "0"),
                    tmp_path / "coordinator.log")
        lines = round_lines(coord, 2, 90)
        check_bytes_up(lines, updates_by_round(watcher, federation), parameters)
        assert all(line["codec_mix"] == {"int8": 3} and 3.5 < line["compression"] < 4 for line in lines), lines
        first = lines[0]
        tasks = [p for t, p, _ in watcher.seen if t.endswith("/task") and p and decode(p, TrainTask).round == 1]
        models = [p for t, p, _ in watcher.seen if t.endswith("/model/global")
                  and decode_tensors(p, GlobalHeader, 10**8)[0].version == 0]
        assert len(tasks) == 3 and {decode(p, TrainTask).codec for p in tasks} == {"int8"}
        assert first["bytes_down"] == sum(len(p) for p in tasks) + 3 * len(models[0])
    finally:
        watcher.close()


@pytest.mark.broker
@pytest.mark.usefixtures("stop_processes")
def test_codec_auto_follows_each_devices_advertised_link_and_the_toml_table(
        federation_files: FederationFiles, tmp_path: Path, federation: str) -> None:
    parameters = Artifact.load(federation_files.artifact).manifest.parameter_count
    policy = write(tmp_path / "policy.toml", "hold-seconds = 0\n")
    links = {"d0": "wired", "d1": "constrained"}  # d2 runs without a policy: its link is unknown
    for i in range(3):
        device = f"d{i}"
        extra: list[str] = []
        if device in links:
            signals = write(tmp_path / f"{device}.json", json.dumps({"link": links[device]}))
            extra = ["--policy", str(policy), "--signals", str(signals)]
        start_device(SYSTEM_BROKER, federation, device, federation_files.devices[i], tmp_path, *extra)
    config = write(tmp_path / "coordinator.toml", 'codec = "auto"\n[codec-table]\nconstrained = "int4"\n')
    watcher = Watcher(SYSTEM_BROKER, [f"edgefl/{federation}/updates/+", f"edgefl/{federation}/devices/+/status"])
    try:
        coord = run(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--config",
                                        str(config), "--rounds", "1", "--fraction", "1", "--min-clients", "3",
                                        "--over-select", "1", "--min-reports", "3", "--round-timeout", "30",
                                        "--eval-every", "0"), tmp_path / "coordinator.log")
        lines = round_lines(coord, 1, 90)
        statuses = device_statuses(watcher)
    finally:
        watcher.close()
    assert {d: (s["link"], tuple(s["codecs"])) for d, s in statuses.items()} == {
        "d0": ("wired", DEVICE_CODECS), "d1": ("constrained", DEVICE_CODECS), "d2": ("", DEVICE_CODECS)}
    assert lines[0]["codec_mix"] == {"float16": 1, "int4": 1, "int8": 1}  # wired, constrained (TOML), unknown
    check_bytes_up(lines, updates_by_round(watcher, federation), parameters)
    sent = {head.device_id: head.codec for head, _, _ in updates_by_round(watcher, federation)[1]}
    assert sent == {"d0": "float16", "d1": "int4", "d2": "int8"}
