"""Secure aggregation's protocol, device sessions against the coordinator's round, with no broker: the sum is the
exact sum of the quantized updates whoever drops out in whichever stage, and every bad message is refused by
its reason without changing the round."""

from __future__ import annotations

import base64
import dataclasses
import secrets

import numpy as np
import pytest

from coordinator.secure_round import Abandoned, SecureAggregation
from edge_runtime.protocol import (
    MASKED_TENSOR,
    SecAggKeys,
    SecAggReveal,
    SecAggRoster,
    SecAggRouted,
    SecAggShares,
    SecAggUnmask,
    TrainTask,
    decode,
    encode,
    pack_entry,
    unpack_entries,
)
from edge_runtime.secagg import SecAggError
from edge_runtime.secagg.graph import degree_for
from edge_runtime.secagg.masks import dtype_for
from edge_runtime.secagg.params import SecureParams
from edge_runtime.secagg.quantize import quantize
from edge_runtime.secagg.session import DeviceSession

CLIP, LENGTH = 1.0, 257


def task_for(n: int, threshold: int | None = None, degree: int | None = None, round_number: int = 3,
             value_bits: int = 16, modulus_bits: int = 32) -> TrainTask:
    peers = tuple(sorted(f"dev-{i:03d}" for i in range(n)))
    degree = degree_for(n) if degree is None else degree
    return TrainTask(f"task-{round_number}", round_number, 5, "artifact", 100.0, 1, 0.1, CLIP, 7,
                     secure_seed=secrets.token_hex(32), secure_degree=degree,
                     secure_threshold=degree // 2 + 1 if threshold is None else threshold,
                     secure_value_bits=value_bits, secure_modulus_bits=modulus_bits, peers=peers)


def wire(message):  # every message crosses the wire as JSON, as it would over MQTT
    return decode(encode(message), type(message))


class Round:
    """n device sessions and the coordinator's round, driven stage by stage."""

    def __init__(self, n: int, **task_options) -> None:
        self.task = task_for(n, **task_options)
        self.params = SecureParams.from_task(self.task)
        self.devices = {d: DeviceSession(d, self.task) for d in self.task.peers}
        self.coordinator = SecureAggregation(self.params, LENGTH, CLIP)
        rng = np.random.default_rng(n)
        self.updates = {d: rng.uniform(-0.3, 0.3, LENGTH).astype(np.float32) for d in self.task.peers}

    def keys(self, drop: set[str] = frozenset()) -> dict:
        for d, session in self.devices.items():
            if d not in drop:
                assert self.coordinator.offer(d, wire(session.keys())) is None
        return self.coordinator.advance()

    def shares(self, rosters: dict, drop: set[str] = frozenset()) -> dict:
        for d, roster in rosters.items():
            if d not in drop:
                assert self.coordinator.offer(d, wire(self.devices[d].shares(wire(roster)))) is None
        return self.coordinator.advance()

    def masked(self, routed: dict, drop: set[str] = frozenset()) -> tuple[dict, set[str]]:
        sent = set()
        for d, message in routed.items():
            self.devices[d].accept_routed(wire(message))
            if d not in drop:
                header, tensors = self.devices[d].masked_input(self.updates[d], CLIP, 5, self.rng(d))
                assert self.coordinator.offer_masked(d, header, tensors) is None
                sent.add(d)
        return self.coordinator.advance(), sent

    def reveal(self, requests: dict, drop: set[str] = frozenset()) -> None:
        for d, request in requests.items():
            if d not in drop:
                assert self.coordinator.offer(d, wire(self.devices[d].reveal(wire(request)))) is None
        assert self.coordinator.advance() == {}

    def rng(self, device: str) -> np.random.Generator:
        return np.random.default_rng(int(device.split("-")[1]))

    def expected_levels(self, devices: set[str]) -> np.ndarray:
        """The exact integer sum of the quantized updates (same draws as the devices made)."""
        bits = self.params.modulus_bits
        q = [quantize(self.updates[d], CLIP, self.params.value_bits, bits, self.rng(d)).astype(np.int64)
             for d in sorted(devices)]
        return np.sum(q, axis=0)

    def run(self, drop_keys=frozenset(), drop_shares=frozenset(), drop_masked=frozenset(), drop_reveal=frozenset()):
        rosters = self.keys(drop_keys)
        routed = self.shares(rosters, drop_shares)
        requests, sent = self.masked(routed, drop_masked)
        self.reveal(requests, drop_reveal)
        return sent


def levels_of(total: np.ndarray, count: int, params: SecureParams) -> np.ndarray:
    """Back from the decoded float sum to the integer sum of levels (exact: the map is affine)."""
    levels = 2**params.value_bits - 1
    return np.rint((total + count * CLIP) * levels / (2 * CLIP)).astype(np.int64)


@pytest.mark.parametrize("n", [3, 12, 40])
def test_no_dropout_sum_is_exact(n):
    r = Round(n)
    sent = r.run()
    total, count = r.coordinator.result()
    assert count == n and sent == set(r.task.peers)
    assert np.array_equal(levels_of(total, count, r.params), r.expected_levels(sent))
    # within the quantization step of the float sum
    plain = np.sum([r.updates[d] for d in sent], axis=0, dtype=np.float64)
    assert np.max(np.abs(total - plain)) <= count * 2 * CLIP / (2**16 - 1)
    assert r.coordinator.counts.self_masks_removed == n and r.coordinator.counts.pairwise_masks_recovered == 0


@pytest.mark.parametrize("stage", ["keys", "shares", "masked", "reveal"])
def test_dropouts_in_each_stage(stage):
    r = Round(40)
    peers = list(r.task.peers)
    drop = {peers[1], peers[17], peers[30]}
    sent = r.run(**{f"drop_{stage}": drop})
    total, count = r.coordinator.result()
    expected = set(peers) - drop if stage != "reveal" else set(peers)
    assert sent == (expected if stage != "reveal" else set(peers))
    assert count == len(sent)
    assert np.array_equal(levels_of(total, count, r.params), r.expected_levels(sent))
    recovered = r.coordinator.counts.pairwise_masks_recovered
    assert (recovered > 0) == (stage == "masked")  # only devices that shared and then vanished leave masks behind


def test_a_third_drop_after_masked_input_at_a_higher_threshold_budget():
    # degree 12 of 36 devices, threshold 7: a third of the devices vanishing after sharing leaves most
    # neighbourhoods above the threshold; the seed is chosen so that all of them are (a random graph may not be)
    for _ in range(50):
        r = Round(36, degree=16, threshold=9)
        peers = list(r.task.peers)
        drop = set(peers[::3])
        graph = r.params.graph
        if all(len(set(graph[d]) - drop) >= 9 for d in peers):
            break
    sent = r.run(drop_masked=drop)
    total, count = r.coordinator.result()
    assert count == 24 and np.array_equal(levels_of(total, count, r.params), r.expected_levels(sent))
    assert r.coordinator.counts.dropped_after_sharing == 12
    assert r.coordinator.counts.pairwise_masks_recovered > 0


def test_too_many_dropouts_abandon_the_round_rather_than_commit_a_wrong_sum():
    r = Round(12)  # degree 11 (complete), threshold 6
    rosters = r.keys()
    routed = r.shares(rosters)
    peers = list(r.task.peers)
    for d, message in routed.items():
        r.devices[d].accept_routed(wire(message))
    for d in peers[:5]:  # 7 of 12 vanish after sharing: fewer than 6 neighbours survive for everyone
        header, tensors = r.devices[d].masked_input(r.updates[d], CLIP, 5, r.rng(d))
        assert r.coordinator.offer_masked(d, header, tensors) is None
    with pytest.raises(Abandoned) as caught:
        r.coordinator.advance()
    assert caught.value.reason == "cannot_unmask"


def test_too_few_reveals_abandon():
    r = Round(12)
    rosters = r.keys()
    requests, _ = r.masked(r.shares(rosters))
    for d in list(requests)[:5]:  # 5 reveals < threshold 6
        assert r.coordinator.offer(d, wire(r.devices[d].reveal(wire(requests[d])))) is None
    r.coordinator.advance()
    with pytest.raises(Abandoned) as caught:
        r.coordinator.result()
    assert caught.value.reason == "cannot_unmask"


def test_masked_inputs_look_uniform_while_plain_updates_do_not():
    """What the coordinator (or anyone on the broker) sees of one device is indistinguishable from uniform noise
    modulo 2^32: a chi-square test over 64 bins accepts the masked vector and rejects the quantized update."""
    n, length = 12, 20_000
    task = task_for(n)
    params = SecureParams.from_task(task)
    devices = {d: DeviceSession(d, task) for d in task.peers}
    coordinator = SecureAggregation(params, length, CLIP)
    for d, s in devices.items():
        coordinator.offer(d, s.keys())
    rosters = coordinator.advance()
    for d, roster in rosters.items():
        coordinator.offer(d, devices[d].shares(roster))
    routed = coordinator.advance()
    device = task.peers[0]
    devices[device].accept_routed(routed[device])
    update = np.random.default_rng(0).normal(0, 0.05, length).astype(np.float32)
    _, tensors = devices[device].masked_input(update, CLIP, 5, np.random.default_rng(1))
    plain = quantize(update, CLIP, 16, 32, np.random.default_rng(1))

    def chi2(values: np.ndarray) -> float:
        counts = np.bincount((values.astype(np.uint64) >> np.uint64(26)).astype(np.int64), minlength=64)
        expected = values.size / 64
        return float(np.sum((counts - expected) ** 2 / expected))

    assert chi2(tensors[MASKED_TENSOR]) < 120  # 63 degrees of freedom: p ~ 1e-5 at 120
    assert chi2(plain) > 10_000


# -- refusals ---------------------------------------------------------------------------------------------


def started_round(n: int = 12) -> Round:
    return Round(n)


def test_coordinator_refuses_bad_keys_by_reason():
    r = started_round()
    peers = list(r.task.peers)
    good = r.devices[peers[0]].keys()
    c = r.coordinator
    assert c.offer(peers[1], good) == "not_participant"  # names another device
    zero = base64.b64encode(bytes(32)).decode()
    assert c.offer(peers[0], dataclasses.replace(good, mask_key=zero)) == "bad_public_key"  # low-order point
    short = base64.b64encode(bytes(31)).decode()
    assert c.offer(peers[0], dataclasses.replace(good, cipher_key=short)) == "bad_public_key"
    assert c.offer(peers[0], dataclasses.replace(good, round=2)) == "wrong_round"  # replayed from an earlier round
    assert c.offer(peers[0], dataclasses.replace(good, task_id="other")) == "wrong_round"
    stranger = SecAggKeys("intruder", r.task.task_id, r.task.round, good.cipher_key, good.mask_key, good.seed_sha256)
    assert c.offer("intruder", stranger) == "not_participant"
    assert c.offer(peers[0], good) is None
    assert c.offer(peers[0], good) == "out_of_order"  # twice
    assert c.counts.rejected == {"not_participant": 2, "bad_public_key": 2, "wrong_round": 2, "out_of_order": 1}


def test_coordinator_refuses_bad_shares_and_masked_inputs():
    r = started_round()
    rosters = r.keys()
    peers = list(r.task.peers)
    a, b = peers[0], peers[1]
    shares = r.devices[a].shares(rosters[a])
    entries = unpack_entries(shares.shares, 1, "shares")
    c = r.coordinator
    missing = dataclasses.replace(shares, shares=shares.shares[1:])
    assert c.offer(a, missing) == "not_neighbour"
    cut = tuple(pack_entry(d, blob[:-1]) for d, (blob,) in entries.items())
    assert c.offer(a, dataclasses.replace(shares, shares=cut)) == "bad_ciphertext"
    assert c.offer(a, dataclasses.replace(shares, shares=("no-colon",))) == "malformed"
    assert c.offer(a, shares) is None
    routed = r.shares({d: m for d, m in rosters.items() if d != a})
    # masked inputs: wrong length, wrong dtype, value beyond the modulus
    r.devices[b].accept_routed(routed[b])
    header, tensors = r.devices[b].masked_input(r.updates[b], CLIP, 5, r.rng(b))
    value = tensors[MASKED_TENSOR]
    assert c.offer_masked(b, header, {MASKED_TENSOR: value[:-1]}) == "bad_masked"
    assert c.offer_masked(b, header, {MASKED_TENSOR: value.astype(np.uint64)}) == "bad_masked"
    assert c.offer_masked(b, dataclasses.replace(header, modulus_bits=31), tensors) == "bad_masked"
    assert c.offer_masked(b, dataclasses.replace(header, round=2), tensors) == "wrong_round"
    assert c.offer_masked(b, header, tensors) is None
    assert c.offer_masked(b, header, tensors) == "out_of_order"  # delivered twice: added once


def test_coordinator_refuses_a_reveal_about_a_non_neighbour():
    r = Round(40)  # degree 12 of 40: most devices are not each other's neighbours
    requests, _ = r.masked(r.shares(r.keys()))
    device = next(iter(requests))
    stranger = next(d for d in r.task.peers if d != device and d not in r.params.graph[device])
    reveal = r.devices[device].reveal(requests[device])
    forged = dataclasses.replace(reveal, shares=(*reveal.shares, pack_entry(stranger, bytes(66))))
    assert r.coordinator.offer(device, forged) == "not_neighbour"
    assert r.coordinator.offer(device, reveal) is None


def test_device_refuses_bad_rosters_routes_and_requests():
    r = Round(40)
    rosters = r.keys()
    device = next(iter(rosters))
    session = r.devices[device]
    stranger = next(d for d in r.task.peers if d != device and d not in r.params.graph[device])
    roster = rosters[device]
    extra = pack_entry(stranger, bytes(32), bytes(32))
    forged = SecAggRoster(roster.task_id, roster.round, (*roster.neighbours, extra), roster.own)
    with pytest.raises(SecAggError) as caught:
        session.shares(forged)
    assert caught.value.reason == "not_neighbour"
    with pytest.raises(SecAggError) as caught:
        session.shares(dataclasses.replace(roster, round=roster.round - 1))
    assert caught.value.reason == "wrong_round"
    with pytest.raises(SecAggError) as caught:
        session.shares(dataclasses.replace(roster, neighbours=roster.neighbours[: r.params.threshold - 1]))
    assert caught.value.reason == "too_few_neighbours"
    shares = session.shares(roster)
    assert session.stage == "routed"
    with pytest.raises(SecAggError) as caught:
        session.shares(roster)
    assert caught.value.reason == "out_of_order"
    # route the device its neighbours' shares, then tamper with one: authentication fails
    for d, other in rosters.items():
        if d != device:
            r.coordinator.offer(d, r.devices[d].shares(other))
    r.coordinator.offer(device, shares)
    routed = r.coordinator.advance()[device]
    entries = unpack_entries(routed.shares, 1, "routed")
    first = sorted(entries)[0]
    blob = bytearray(entries[first][0])
    blob[-1] ^= 1
    tampered = SecAggRouted(routed.task_id, routed.round, tuple(
        pack_entry(d, bytes(blob) if d == first else entries[d][0]) for d in sorted(entries)))
    with pytest.raises(SecAggError) as caught:
        session.accept_routed(tampered)
    assert caught.value.reason == "auth_failed"
    session.accept_routed(routed)
    session.masked_input(r.updates[device], CLIP, 5, r.rng(device))
    neighbour = sorted(entries)[0]
    with pytest.raises(SecAggError) as caught:
        session.reveal(SecAggUnmask(routed.task_id, routed.round, (neighbour,), (neighbour,)))
    assert caught.value.reason == "out_of_order"  # both secrets of one device: never
    with pytest.raises(SecAggError) as caught:
        session.reveal(SecAggUnmask(routed.task_id, routed.round, (stranger,), ()))
    assert caught.value.reason == "not_neighbour"
    reveal = session.reveal(SecAggUnmask(routed.task_id, routed.round, (neighbour,), ()))
    assert isinstance(reveal, SecAggReveal) and len(reveal.shares) == 1
    with pytest.raises(SecAggError) as caught:  # a second request, e.g. the other secret of the same neighbour
        session.reveal(SecAggUnmask(routed.task_id, routed.round, (), (neighbour,)))
    assert caught.value.reason == "out_of_order"


def test_a_share_sealed_for_someone_else_does_not_open():
    r = Round(6)  # degree 5, the complete graph: everyone neighbours everyone
    rosters = r.keys()
    peers = list(r.task.peers)
    for d, roster in rosters.items():
        r.coordinator.offer(d, r.devices[d].shares(roster))
    routed = r.coordinator.advance()
    a, b = peers[0], peers[1]
    to_b = unpack_entries(routed[b].shares, 1, "routed")
    to_a = unpack_entries(routed[a].shares, 1, "routed")
    sender = peers[2]
    swapped = SecAggRouted(routed[a].task_id, routed[a].round, tuple(
        pack_entry(d, to_b[d][0] if d == sender else to_a[d][0]) for d in sorted(to_a)))
    assert sender in to_a and sender in to_b
    with pytest.raises(SecAggError) as caught:
        r.devices[a].accept_routed(swapped)
    assert caught.value.reason == "auth_failed"


@pytest.mark.parametrize("field,value,reason", [
    ("secure_threshold", 3, "bad_parameters"),  # below a strict majority of 11 neighbours
    ("secure_threshold", 12, "bad_parameters"),  # more than the neighbours
    ("secure_seed", "zz" * 32, "bad_parameters"),
    ("secure_seed", "ab" * 31, "bad_parameters"),
    ("secure_degree", 5, "bad_degree"),  # odd and not complete
    ("secure_value_bits", 33, "bad_parameters"),
    ("peers", ("b", "a"), "bad_parameters"),
])
def test_device_refuses_bad_secure_settings(field, value, reason):
    task = dataclasses.replace(task_for(12), **{field: value})
    device = "dev-000" if field != "peers" else "a"
    with pytest.raises(SecAggError) as caught:
        DeviceSession(device, task)
    assert caught.value.reason == reason


def test_a_device_not_among_the_peers_refuses_the_task():
    with pytest.raises(SecAggError) as caught:
        DeviceSession("dev-999", task_for(12))
    assert caught.value.reason == "not_participant"


def test_too_many_devices_for_the_modulus_are_refused():
    with pytest.raises(SecAggError) as caught:
        SecureParams.from_task(task_for(12, value_bits=30, modulus_bits=32))
    assert caught.value.reason == "would_wrap"


def test_plain_tasks_keep_their_bytes():
    plain = TrainTask("t", 1, 0, "a", 1.0, 1, 0.1, 1.0, 3)
    assert b"secure" not in encode(plain) and b"peers" not in encode(plain)
    secure = task_for(5)
    assert decode(encode(secure), TrainTask) == secure and secure.secure and not plain.secure


def test_messages_round_trip_and_entries_are_checked():
    for message in (SecAggShares("d", "t", 1, (pack_entry("x", b"\x00" * 160),)), SecAggUnmask("t", 1, ("a",), ())):
        assert wire(message) == message
    with pytest.raises(Exception) as caught:
        unpack_entries(["x:AAAA", "x:AAAA"], 1, "shares")
    assert "twice" in str(caught.value)
    with pytest.raises(Exception) as caught:
        unpack_entries(["x:not base64!"], 1, "shares")
    assert "base64" in str(caught.value)
    assert dtype_for(32) == np.uint32


@pytest.mark.parametrize("options,says", [
    ({"codec": "topk:0.1"}, "would reveal which coordinates"),
    ({"codec": "int8"}, "does not sum"),
    ({"strategy": "median"}, "a streaming strategy"),
    ({"dp_noise_multiplier": 1.0, "dp_clip": "adaptive"}, "a fixed --dp-clip"),
    ({"min_clients": 2, "min_reports": 2}, "--min-clients >= 3"),
])
def test_the_coordinator_refuses_what_secure_aggregation_cannot_go_with(tmp_path, options, says):
    from coordinator.config import CoordinatorConfig
    from coordinator.errors import ConfigError

    settings = {"min_clients": 3, **options}
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig(tmp_path / "artifact", tmp_path / "state", secure_aggregation=True, **settings)
    assert caught.value.key == "secure-aggregation" and says in str(caught.value)
    CoordinatorConfig(tmp_path / "artifact", tmp_path / "state", min_clients=3, secure_aggregation=True,
                      dp_noise_multiplier=1.0, dp_clip=2.0)  # fixed clipping composes


def test_unrecoverable_says_when_closing_now_would_abandon_and_stops_saying_it_as_inputs_arrive():
    r = Round(12)  # degree 11 (complete), threshold 6
    routed = r.shares(r.keys())
    peers = list(r.task.peers)
    assert r.coordinator.unrecoverable() == "no device sent a masked input"
    for i, d in enumerate(peers):
        r.devices[d].accept_routed(routed[d])
        header, tensors = r.devices[d].masked_input(r.updates[d], CLIP, 5, r.rng(d))
        assert r.coordinator.offer_masked(d, header, tensors) is None
        # each device needs 6 surviving neighbours: 7 masked inputs (6 others for each of them) are enough
        assert (r.coordinator.unrecoverable() is None) == (i + 1 >= 7), i
    requests = r.coordinator.advance()
    r.reveal(requests)
    _, count = r.coordinator.result()
    assert count == 12


def test_a_device_restarted_after_advertising_refuses_its_roster():
    """Its new session's keys are not those its neighbours were given: sealing shares under them would make every
    neighbour's routed shares fail to open. It refuses, so only it drops out."""
    r = Round(12)
    rosters = r.keys()
    device = next(iter(rosters))
    restarted = DeviceSession(device, r.task)
    restarted.keys()  # what the agent does on the task delivered again after its restart
    with pytest.raises(SecAggError) as caught:
        restarted.shares(rosters[device])
    assert caught.value.reason == "not_participant"
    other = next(d for d in rosters if d != device)
    with pytest.raises(SecAggError):  # nor may one device's roster be used by another
        r.devices[other].shares(rosters[device])
    assert r.devices[device].shares(rosters[device]) is not None


def test_a_key_another_device_advertised_is_refused():
    r = Round(6)
    peers = list(r.task.peers)
    first = r.devices[peers[0]].keys()
    assert r.coordinator.offer(peers[0], first) is None
    copied = dataclasses.replace(r.devices[peers[1]].keys(), mask_key=first.mask_key)
    assert r.coordinator.offer(peers[1], copied) == "bad_public_key"


def wrong_share(share: bytes) -> bytes:
    """A well-formed share (66 bytes, below the prime) of another polynomial: it passes every format check."""
    return ((int.from_bytes(share, "big") + 12345) % (2**521 - 1)).to_bytes(66, "big")


def test_a_wrong_share_among_more_than_t_does_not_abandon_the_round():
    r = Round(12)  # degree 11, threshold 6: 11 holders reveal each survivor's seed share
    requests, sent = r.masked(r.shares(r.keys()))
    liar = sorted(requests)[0]
    for d, request in requests.items():
        reveal = r.devices[d].reveal(wire(request))
        if d == liar:  # it lies about every neighbour's share
            entries = unpack_entries(reveal.shares, 1, "reveal")
            reveal = dataclasses.replace(reveal, shares=tuple(pack_entry(o, wrong_share(v)) for o, (v,) in
                                                                  sorted(entries.items())))
        assert r.coordinator.offer(d, wire(reveal)) is None
    r.coordinator.advance()
    total, count = r.coordinator.result()
    assert count == 12 and np.array_equal(levels_of(total, count, r.params), r.expected_levels(sent))
    assert r.coordinator.counts.rejected["wrong_share"] > 0  # rebuilt from other sets of t, and counted


def test_with_exactly_t_shares_a_wrong_one_abandons_rather_than_commit():
    r = Round(12)
    requests, _ = r.masked(r.shares(r.keys()))
    revealers = sorted(requests)[:7]  # a revealer's own secrets then have exactly the threshold of shares, 6
    for d in revealers:
        reveal = r.devices[d].reveal(wire(requests[d]))
        if d == revealers[0]:
            entries = unpack_entries(reveal.shares, 1, "reveal")
            reveal = dataclasses.replace(reveal, shares=tuple(pack_entry(o, wrong_share(v)) for o, (v,) in
                                                                  sorted(entries.items())))
        assert r.coordinator.offer(d, wire(reveal)) is None
    r.coordinator.advance()
    with pytest.raises(Abandoned) as caught:
        r.coordinator.result()
    assert caught.value.reason == "wrong_secret"
