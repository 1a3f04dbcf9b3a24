"""The SecAgg+ communication graph: which devices share their secrets with which.

In SecAgg (Bonawitz et al. 2017) every device masks with and secret-shares
to every other: O(n) work per device, O(n**2) for the coordinator. SecAgg+
(Bell et al. 2020) replaces the complete graph by a random k-regular graph
with k = O(log n): a device masks with and shares to its k neighbours only.
Privacy then rests on the graph being random and unknown in advance to
whoever corrupts devices, so the coordinator cannot place colluding devices
around a target: derive ``seed`` from randomness fixed after the round's
devices are (for instance from their committed public keys), never from a
value the coordinator may pick freely.

The graph is a Harary graph H(k, n) over a seeded random ring: devices are
ordered by SHA-256(seed || UTF-8 id) (ties, which need a hash collision,
broken by id) and each is joined to the k/2 nearest on either side. It is
symmetric, exactly k-regular, and depends only on the set of ids and the
seed.

Shares: a device splits each secret among its k neighbours only (it keeps
no share of its own). The holder's x coordinate is its 1-based position in
the round's sorted id list (``share_coordinates``), so it is never 0 and the
same in every neighbourhood.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from edge_runtime.secagg.errors import SecAggError, describe
from edge_runtime.secagg.shamir import MAX_X

SEED_BYTES = 32


# The drop-out after sharing a round is planned for by default (--secure-dropout), and the chance, per device, that
# more of its neighbours drop out than its threshold allows, which the degree is chosen to stay under.
DEFAULT_DROPOUT = 0.1
NEIGHBOURHOOD_FAILURE = 1e-4


def degree_for(n: int, dropout: float = DEFAULT_DROPOUT) -> int:
    """Neighbours per device for ``n`` devices when a fraction ``dropout`` of them vanishes after sharing.

    The smallest even k >= 2·ceil(log2 n) (SecAgg+'s logarithmic degree, Bell et al. 2020) such that a device
    whose neighbours each drop out with probability ``dropout`` keeps its strict-majority threshold of them with
    probability at least 1 - NEIGHBOURHOOD_FAILURE (binomial tail); ``n - 1``, the complete graph, when that is
    smaller. At 10% drop-out: 16 at 100 devices, 20 at 1,000; at 30%: 84 (a drop-out that high needs large
    neighbourhoods, since the threshold is a majority).
    """
    _check_count(n)
    _check_fraction("the expected drop-out", dropout)
    if dropout >= 0.5:
        raise SecAggError("dropout_too_high", f"an expected drop-out of {dropout:.0%} leaves no strict majority of a "
                                              "neighbourhood; expected below 50%")
    k = 2 * math.ceil(math.log2(n))
    while k < n - 1 and _below_threshold(k, dropout) > NEIGHBOURHOOD_FAILURE:
        k += 2
    return min(k, n - 1)


def _below_threshold(degree: int, dropout: float) -> float:
    """P(fewer than degree // 2 + 1 of ``degree`` neighbours survive), each surviving with 1 - ``dropout``."""
    keep = 1.0 - dropout
    return sum(math.comb(degree, j) * keep**j * dropout ** (degree - j) for j in range(degree // 2 + 1))


def threshold_for(degree: int, dropout: float, corrupt: float = 0.0) -> int:
    """The Shamir threshold t in a neighbourhood of ``degree`` holders; ``degree // 2 + 1`` by default.

    A strict majority is the least that protects an honest device: a minority
    of its neighbours cannot rebuild its secrets, and an honest neighbour
    reveals, for one device, either its self-mask seed share or its masking
    key share, never both. Two majorities overlap, so a coordinator that
    follows the protocol never obtains both secrets of one device. A
    coordinator that lies about who dropped out, helped by c colluding
    neighbours who give both shares, needs only ``2t - c`` neighbours: with
    ``corrupt`` the assumed fraction of colluders, t is raised to
    ``(degree + c) // 2 + 1`` (c = ceil(corrupt * degree)). Beyond that a
    higher threshold only costs drop-out tolerance, so the smallest is taken.
    Refused when losing a fraction ``dropout`` of a neighbourhood would leave
    fewer than t holders.
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise SecAggError("bad_degree", f"a degree must be a positive int, got {degree!r}")
    _check_fraction("the expected drop-out", dropout)
    _check_fraction("the assumed corrupt fraction", corrupt)
    colluders = math.ceil(corrupt * degree - 1e-9)
    threshold = (degree + colluders) // 2 + 1
    survivors = (1.0 - dropout) * degree
    if survivors + 1e-9 < threshold:
        raise SecAggError("dropout_too_high", f"losing {dropout:.0%} of {degree} neighbours leaves {survivors:.1f}, "
                                              f"below the threshold {threshold}; expected at most "
                                              f"{degree - threshold} of {degree} to drop out, or a larger degree")
    return threshold


def neighbours(devices: Sequence[str], degree: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Each device's ``degree`` neighbours (sorted ids) in the Harary graph over the seeded ring."""
    ring = ring_order(devices, seed)
    n = len(ring)
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= n - 1 \
            or (degree % 2 and degree != n - 1):
        raise SecAggError("bad_degree", f"for {n} devices the degree must be even in 2..{n - 1}, or {n - 1} "
                                        f"(complete graph), got {degree!r}")
    if degree == n - 1:
        return {device: tuple(sorted(set(ring) - {device})) for device in sorted(ring)}
    half = degree // 2
    graph: dict[str, tuple[str, ...]] = {}
    for position, device in enumerate(ring):
        near = {ring[(position + step) % n] for step in range(-half, half + 1) if step}
        graph[device] = tuple(sorted(near))
    return dict(sorted(graph.items()))


def ring_order(devices: Sequence[str], seed: bytes) -> list[str]:
    """The devices in the seeded random order: by SHA-256(seed || UTF-8 id), then by id."""
    _check_devices(devices)
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise SecAggError("bad_seed", f"a graph seed is {SEED_BYTES} bytes, got {describe(seed)}")
    return sorted(devices, key=lambda device: (hashlib.sha256(seed + device.encode("utf-8")).digest(), device))


def share_coordinates(devices: Sequence[str]) -> dict[str, int]:
    """Each device's Shamir x coordinate: its 1-based position among the round's ids in sorted order."""
    _check_devices(devices)
    if len(devices) > MAX_X:
        raise SecAggError("bad_devices", f"{len(devices)} devices; shares support at most {MAX_X} per round")
    return {device: position for position, device in enumerate(sorted(devices), start=1)}


def _check_devices(devices: Sequence[str]) -> None:
    if isinstance(devices, str) or len(devices) < 2:
        found = repr(devices) if isinstance(devices, str) else f"{len(devices)} ids"
        raise SecAggError("bad_devices", f"secure aggregation needs a sequence of at least 2 device ids, got {found}")
    if not all(isinstance(device, str) and device and _encodes(device) for device in devices):
        raise SecAggError("bad_devices", "every device id must be a non-empty string that encodes as UTF-8")
    if len(set(devices)) != len(devices):
        repeated = sorted({device for device in devices if devices.count(device) > 1})
        raise SecAggError("bad_devices", f"device ids must be distinct; repeated: {repeated}")


def _encodes(device: str) -> bool:
    try:
        device.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise SecAggError("bad_value", f"{name} must be a fraction in [0, 1), got {value!r}")


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SecAggError("bad_devices", f"secure aggregation needs at least 2 devices, got {n!r}")
