"""Fuzzing secure aggregation's messages through their receivers: every mutated copy of a device's keys, shares,
masked input and reveal (at the coordinator) and of a roster, routed shares and unmask request (at the device) is
decoded and offered; it is refused by reason (``ProtocolError``, ``SecAggError``, a returned reason) or taken, and
no other exception escapes. The round then ends with the exact sum, or is abandoned: never a wrong sum."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from coordinator.secure_round import Abandoned
from edge_runtime.errors import ProtocolError
from edge_runtime.protocol import MaskedHeader, decode, decode_tensors, encode, encode_tensors
from edge_runtime.secagg import SecAggError
from tests.test_codec_fuzz import mutate as mutate_tensors
from tests.test_secure_round import Round, levels_of

MUTATIONS = 60
LIMIT = 1 << 20
JSON_CHARS = 'AZaz09+/=:,"[]{}'


def mutate_json(data: bytes, rng: np.random.Generator) -> bytes:
    """A JSON message with bytes flipped, a character replaced (base64 and digits alike), or cut."""
    out = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:
        for _ in range(int(rng.integers(1, 4))):
            out[int(rng.integers(len(out)))] ^= int(rng.integers(1, 256))
    elif kind == 1:
        out[int(rng.integers(len(out)))] = ord(JSON_CHARS[int(rng.integers(len(JSON_CHARS)))])
    else:
        return bytes(out[: int(rng.integers(len(out)))])
    return bytes(out)


def offer_mutations(offer: Any, message: Any, rng: np.random.Generator) -> int:
    """Offer MUTATIONS mutated copies of ``message`` through ``offer``; how many were taken."""
    taken, payload = 0, encode(message)
    for _ in range(MUTATIONS):
        try:
            result = offer(decode(mutate_json(payload, rng), type(message)))
        except (ProtocolError, SecAggError):
            continue
        taken += result is None
    return taken


def taking(step: Any) -> Any:
    """A device session's step as an offer: None when it took the message (its reply is not needed here)."""
    def offer(message: Any) -> None:
        step(message)
    return offer


def finish(r: Round, sent: set[str]) -> None:
    """The round's end: the exact sum of the survivors' quantized updates, or abandoned by a known reason."""
    try:
        total, count = r.coordinator.result()
    except Abandoned as exc:
        assert exc.reason in ("cannot_unmask", "wrong_secret"), exc.reason
        return
    assert np.array_equal(levels_of(total, count, r.params), r.expected_levels(r.coordinator.survivors))
    assert r.coordinator.survivors <= sent


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutated_device_messages_at_the_coordinator(seed: int) -> None:
    rng = np.random.default_rng(seed)
    r = Round(8)
    c, target = r.coordinator, sorted(r.task.peers)[seed]
    for d, session in sorted(r.devices.items()):
        keys = session.keys()
        if d == target:
            offer_mutations(lambda m, d=d: c.offer(d, m), keys, rng)
        c.offer(d, keys)
    rosters = c.advance()
    for d, roster in rosters.items():
        try:
            shares = r.devices[d].shares(roster)
        except SecAggError:  # a mutated copy of its keys was taken: its roster is not its session's, it drops out
            assert d == target
            continue
        if d == target:
            offer_mutations(lambda m, d=d: c.offer(d, m), shares, rng)
        c.offer(d, shares)
    routed, sent = c.advance(), set()
    for d, message in routed.items():
        try:
            r.devices[d].accept_routed(message)
        except SecAggError:  # shares sealed under a mutated key that was taken: this device cannot go on
            continue
        header, tensors = r.devices[d].masked_input(r.updates[d], 1.0, 5, r.rng(d))
        if d == target:
            payload = encode_tensors(header, tensors)
            for _ in range(MUTATIONS):
                try:
                    h, t = decode_tensors(mutate_tensors(payload, rng), MaskedHeader, LIMIT)
                except ProtocolError:
                    continue
                c.offer_masked(d, h, t)
        if c.offer_masked(d, header, tensors) is None:
            sent.add(d)
    try:
        requests = c.advance()
    except Abandoned:
        return
    for d, request in requests.items():
        reveal = r.devices[d].reveal(request)
        if d == target:
            offer_mutations(lambda m, d=d: c.offer(d, m), reveal, rng)
        c.offer(d, reveal)
    c.advance()
    finish(r, sent)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutated_coordinator_messages_at_a_device(seed: int) -> None:
    rng = np.random.default_rng(seed)
    r = Round(8)
    c, target = r.coordinator, sorted(r.task.peers)[seed]
    session = r.devices[target]
    for d, s in r.devices.items():
        c.offer(d, s.keys())
    rosters = c.advance()
    taken = offer_mutations(taking(session.shares), rosters[target], rng)
    for d, roster in rosters.items():
        try:
            c.offer(d, r.devices[d].shares(roster))
        except SecAggError:  # the target already answered a mutated roster that passed its checks
            assert d == target and taken
    routed, sent = c.advance(), set()
    if target in routed:
        offer_mutations(taking(session.accept_routed), routed[target], rng)
    for d, message in routed.items():
        try:
            r.devices[d].accept_routed(message)
        except SecAggError:
            assert d == target
            continue
        header, tensors = r.devices[d].masked_input(r.updates[d], 1.0, 5, r.rng(d))
        if c.offer_masked(d, header, tensors) is None:
            sent.add(d)
    try:
        requests = c.advance()
    except Abandoned:
        return
    if target in requests:
        offer_mutations(taking(session.reveal), requests[target], rng)
    for d, request in requests.items():
        try:
            c.offer(d, r.devices[d].reveal(request))
        except SecAggError:  # the target revealed for a mutated request already: it answers once
            assert d == target
    c.advance()
    finish(r, sent)
