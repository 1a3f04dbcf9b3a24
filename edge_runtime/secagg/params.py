"""A secure round's settings, as its task states them, checked the same way by the device and the coordinator.

The coordinator fixes all of them in the task, before any device has sent a
key: the graph's seed, its degree, the Shamir threshold, the quantizer's bits
and the list of the round's devices (``peers``). A device checks them before
it takes part; in particular it refuses a threshold below a strict majority
of its neighbourhood, which would let a coordinator rebuild its secrets from
fewer devices than the threat model allows (docs/SECURITY.md).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property

from edge_runtime.protocol import TrainTask, check_name
from edge_runtime.secagg.errors import SecAggError
from edge_runtime.secagg.graph import SEED_BYTES, neighbours, share_coordinates
from edge_runtime.secagg.quantize import MAX_VALUE_BITS, check_no_wrap

# The contexts keys are derived and shares sealed under (edge_runtime.secagg.crypto.context's purpose).
CIPHER_PURPOSE = "edgefl-secagg-cipher"
MASK_PURPOSE = "edgefl-secagg-mask"
SHARE_PURPOSE = "edgefl-secagg-share"


@dataclass(frozen=True)
class SecureParams:
    task_id: str
    round: int
    seed: bytes
    degree: int
    threshold: int
    value_bits: int
    modulus_bits: int
    peers: tuple[str, ...] = field(repr=False)

    def __post_init__(self) -> None:
        peers = self.peers
        if len(peers) < 2 or list(peers) != sorted(set(peers)):
            raise SecAggError("bad_parameters", f"a secure round's peers are {len(peers)} ids; expected at least 2, "
                                                "sorted, each once")
        for peer in peers:
            check_name(peer, "peer id")
        if len(self.seed) != SEED_BYTES:
            raise SecAggError("bad_parameters", f"the graph seed is {len(self.seed)} bytes; expected {SEED_BYTES}")
        self.graph  # noqa: B018 -- checks the degree against the peers
        majority = self.degree // 2 + 1
        if not majority <= self.threshold <= self.degree:
            raise SecAggError("bad_parameters", f"threshold {self.threshold} for {self.degree} neighbours; expected "
                                                f"{majority}..{self.degree} (at least a strict majority)")
        if not 1 <= self.value_bits <= min(self.modulus_bits, MAX_VALUE_BITS) or not 2 <= self.modulus_bits <= 62:
            raise SecAggError("bad_parameters", f"{self.value_bits} value bits modulo 2^{self.modulus_bits}; expected "
                                                f"1..{MAX_VALUE_BITS} value bits within 2..62 modulus bits")
        check_no_wrap(len(peers), self.value_bits, self.modulus_bits)

    @classmethod
    def from_task(cls, task: TrainTask) -> SecureParams:
        if not re.fullmatch(f"[0-9a-f]{{{2 * SEED_BYTES}}}", task.secure_seed):
            raise SecAggError("bad_parameters", f"secure_seed {task.secure_seed[:80]!r}; expected "
                                                f"{2 * SEED_BYTES} lowercase hex digits")
        seed = bytes.fromhex(task.secure_seed)
        return cls(task.task_id, task.round, seed, task.secure_degree, task.secure_threshold, task.secure_value_bits,
                   task.secure_modulus_bits, task.peers)

    @cached_property
    def graph(self) -> dict[str, tuple[str, ...]]:
        """Each peer's neighbours (sorted)."""
        return neighbours(self.peers, self.degree, self.seed)

    @cached_property
    def coordinates(self) -> dict[str, int]:
        """Each peer's Shamir x coordinate."""
        return share_coordinates(self.peers)

    def share_aad(self, sender: str, recipient: str) -> bytes:
        from edge_runtime.secagg.crypto import context

        return context(SHARE_PURPOSE, self.task_id, self.round, sender, recipient)

    def key_info(self, purpose: str) -> bytes:
        from edge_runtime.secagg.crypto import context

        return context(purpose, self.task_id, self.round)

    def check_round(self, task_id: str, round_number: int) -> None:
        """A message must be for this round's task: anything else is replayed or late."""
        if task_id != self.task_id or round_number != self.round:
            raise SecAggError("wrong_round", f"a message for task {task_id[:80]!r} of round {round_number}; expected "
                                             f"task {self.task_id!r} of round {self.round}")


def pairwise_sign(own: str, peer: str) -> int:
    """+1 if ``own`` adds the mask it shares with ``peer``, -1 if it subtracts it: the smaller id adds."""
    return 1 if own < peer else -1


def seed_digest(seed: bytes) -> str:
    """What a device commits to for its self-mask seed (``SecAggKeys.seed_sha256``)."""
    return hashlib.sha256(seed).hexdigest()
