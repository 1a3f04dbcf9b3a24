"""The coordinator's side of one secure round (SecAgg+), without I/O: it learns the sum of the masked inputs and
nothing about any one of them.

Stages, each closed by ``advance`` (when every device the stage waits for has
answered, or at the stage's deadline, as the round machine decides):

1. ``keys``: the selected devices' public keys (checked: valid points). Devices
   with fewer advertised neighbours than the threshold are left out, until
   every device left has enough; each one left gets the roster of its
   neighbours' keys.
2. ``shares``: each device's sealed shares, one per neighbour of its roster
   (the coordinator cannot open them; it checks sizes and addressing). Pruned
   the same way; each device left gets the shares sealed for it.
3. ``masked``: the masked inputs of those devices, summed modulo 2^bits as
   they arrive (checked: the round's length, dtype, modulus). Closing it fixes
   the survivors; the others dropped after sharing, and their pairwise masks
   must be removed. If some survivor or dropped device has fewer than the
   threshold of surviving neighbours, nothing can be unmasked: abandoned.
4. ``unmask``: surviving devices reveal, for each surviving neighbour, its
   share of the self-mask seed and, for each dropped one, its share of the
   mask key. ``result`` rebuilds each secret from the threshold of shares,
   checks it against what its owner committed to (the seed's SHA-256, the
   mask public key), removes the masks and returns the exact integer sum,
   decoded to floats. A round that cannot is abandoned, never committed with a
   wrong sum.

Every message is untrusted; a refusal changes nothing and is counted by its
reason (``rejected``).
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np

from edge_runtime.errors import ProtocolError
from edge_runtime.protocol import (
    MASKED_TENSOR,
    MaskedHeader,
    SecAggFromDevice,
    SecAggKeys,
    SecAggReveal,
    SecAggRoster,
    SecAggRouted,
    SecAggShares,
    SecAggToDevice,
    SecAggUnmask,
    pack_entry,
    unpack_entries,
)
from edge_runtime.secagg import masks, shamir
from edge_runtime.secagg.crypto import NONCE_BYTES, TAG_BYTES, KeyPair, agree
from edge_runtime.secagg.errors import SecAggError
from edge_runtime.secagg.graph import DEFAULT_DROPOUT, SEED_BYTES, degree_for
from edge_runtime.secagg.params import MASK_PURPOSE, SecureParams, pairwise_sign, seed_digest
from edge_runtime.secagg.quantize import MODULUS_BITS, VALUE_BITS, dequantize_sum
from edge_runtime.secagg.session import SHARES_PLAINTEXT, check_keys

Stage = Literal["keys", "shares", "masked", "unmask", "done"]
SEALED_BYTES = NONCE_BYTES + SHARES_PLAINTEXT + TAG_BYTES
# Sets of t shares tried to rebuild a secret before the round is abandoned: with one wrong share among t + 1, a
# random set avoids it with probability 1/(t + 1), so 64 tries miss with probability (t/(t+1))^63, 0.06% at t = 9.
REBUILD_TRIES = 64


class Abandoned(Exception):
    """The secure round cannot end with a correct sum; ``reason`` is for the round line."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason, self.problem = reason, problem


@dataclass
class PhaseCounts:
    """Devices at each stage, and what unmasking had to rebuild (the round line's ``secure`` object)."""

    selected: int = 0
    advertised: int = 0
    shared: int = 0
    masked: int = 0
    revealed: int = 0
    self_masks_removed: int = 0
    dropped_after_sharing: int = 0
    pairwise_masks_recovered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


    def to_json(self, abandoned: str | None) -> dict[str, object]:
        """The round line's ``secure`` object."""
        return {"selected": self.selected, "advertised": self.advertised, "shared": self.shared,
                "masked": self.masked, "revealed": self.revealed, "dropped_after_sharing": self.dropped_after_sharing,
                "self_masks_removed": self.self_masks_removed,
                "pairwise_masks_recovered": self.pairwise_masks_recovered,
                "rejected": dict(sorted(self.rejected.items())), "abandoned": abandoned}


def new_params(task_id: str, round_number: int, peers: Iterable[str], dropout: float = DEFAULT_DROPOUT) -> SecureParams:
    """A round's settings: a fresh graph seed from the OS's CSPRNG (fixed before any key is seen), the degree
    ``degree_for(n, dropout)``, a strict majority of it as the threshold, 16-bit levels modulo 2^32."""
    ordered = tuple(sorted(peers))
    degree = degree_for(len(ordered), dropout)
    return SecureParams(task_id, round_number, secrets.token_bytes(SEED_BYTES), degree, degree // 2 + 1, VALUE_BITS,
                        MODULUS_BITS, ordered)


def secure_fields(params: SecureParams) -> dict[str, object]:
    """The task fields that carry ``params`` (``TrainTask.secure_*`` and ``peers``)."""
    return {"secure_seed": params.seed.hex(), "secure_degree": params.degree, "secure_threshold": params.threshold,
            "secure_value_bits": params.value_bits, "secure_modulus_bits": params.modulus_bits, "peers": params.peers}


class SecureAggregation:
    """The coordinator's secure round (module docstring)."""

    def __init__(self, params: SecureParams, length: int, clip: float) -> None:
        self.params, self.length, self.clip = params, length, clip
        self.stage: Stage = "keys"
        self.counts = PhaseCounts(selected=len(params.peers))
        self._keys: dict[str, tuple[bytes, bytes, str]] = {}  # device -> (cipher key, mask key, seed sha256)
        self._members: frozenset[str] = frozenset(params.peers)  # who the current stage waits for
        self._sealed: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> sealed shares
        self._sum = np.zeros(length, masks.dtype_for(params.modulus_bits))
        self._masked: set[str] = set()
        self._dropped: frozenset[str] = frozenset()
        self._revealed: dict[str, dict[str, bytes]] = {}  # revealer -> owner -> share

    @property
    def counts_masked(self) -> int:
        """Masked inputs received so far."""
        return len(self._masked)

    @property
    def waiting_for(self) -> frozenset[str]:
        """The devices the current stage still waits for."""
        answered = {"keys": set(self._keys), "shares": set(self._sealed), "masked": self._masked,
                    "unmask": set(self._revealed), "done": set(self._members)}[self.stage]
        return self._members - answered

    # -- messages in ------------------------------------------------------------------------------

    def offer(self, sender: str, message: SecAggFromDevice) -> str | None:
        """Take a device's control message, or return the reason it is refused (and count it)."""
        try:
            self._check(sender, message.device_id, message.task_id, message.round)
            if isinstance(message, SecAggKeys):
                self._take_keys(sender, message)
            elif isinstance(message, SecAggShares):
                self._take_shares(sender, message)
            else:
                self._take_reveal(sender, message)
        except SecAggError as exc:
            self.counts.rejected[exc.reason] += 1
            return exc.reason
        return None

    def offer_masked(self, sender: str, header: MaskedHeader, tensors: Mapping[str, np.ndarray]) -> str | None:
        """Add a masked input to the running sum, or return the reason it is refused (and count it)."""
        try:
            self._check(sender, header.device_id, header.task_id, header.round, "masked")
            bits = self.params.modulus_bits
            value = tensors.get(MASKED_TENSOR)
            dtype = masks.dtype_for(bits)
            if header.modulus_bits != bits or set(tensors) != {MASKED_TENSOR} or value is None \
                    or value.dtype != dtype or value.shape != (self.length,):
                found = "none" if value is None else f"{value.dtype}{list(value.shape)}"
                raise SecAggError("bad_masked", f"a masked input of {sorted(tensors)} ({found}) modulo 2^"
                                                f"{header.modulus_bits}; expected one {MASKED_TENSOR!r} tensor of "
                                                f"{dtype}[{self.length}] modulo 2^{bits}")
            if sender in self._masked:
                raise SecAggError("out_of_order", f"a second masked input from {sender!r}")
            if bits < 8 * dtype.itemsize and int(value.max(initial=0)) >> bits:
                raise SecAggError("bad_masked", f"a masked value is not below 2^{bits}")
            self._sum = masks.add_mod(self._sum, value, bits)
            self._masked.add(sender)
        except SecAggError as exc:
            self.counts.rejected[exc.reason] += 1
            return exc.reason
        return None

    def _check(self, sender: str, claimed: str, task_id: str, round_number: int, stage: Stage | None = None) -> None:
        if claimed != sender:
            raise SecAggError("not_participant", f"a message from {sender!r} names device {claimed!r}")
        self.params.check_round(task_id, round_number)
        if sender not in self._members:
            raise SecAggError("not_participant", f"{sender!r} is not in this stage of the round")
        if stage is not None and self.stage != stage:
            raise SecAggError("out_of_order", f"a {stage} message while the round is at {self.stage}")

    def _take_keys(self, sender: str, message: SecAggKeys) -> None:
        if self.stage != "keys" or sender in self._keys:
            raise SecAggError("out_of_order", f"keys from {sender!r} at stage {self.stage}")
        cipher, mask = check_keys(message)
        if any(cipher in known[:2] or mask in known[:2] for known in self._keys.values()):
            raise SecAggError("bad_public_key", f"{sender!r} advertised a key another device of the round holds")
        self._keys[sender] = (cipher, mask, message.seed_sha256)

    def _take_shares(self, sender: str, message: SecAggShares) -> None:
        if self.stage != "shares" or sender in self._sealed:
            raise SecAggError("out_of_order", f"shares from {sender!r} at stage {self.stage}")
        sealed = _unpack(message.shares, "shares")
        expected = self._neighbours(sender, self._members)
        if set(sealed) != expected:
            raise SecAggError("not_neighbour", f"{sender!r} sealed shares for {sorted(sealed)[:5]}...; expected one "
                                               f"for each of its {len(expected)} roster neighbours")
        if any(len(blob) != SEALED_BYTES for blob in sealed.values()):
            raise SecAggError("bad_ciphertext", f"sealed shares must be {SEALED_BYTES} bytes each")
        self._sealed[sender] = sealed

    def _take_reveal(self, sender: str, message: SecAggReveal) -> None:
        if self.stage != "unmask" or sender in self._revealed:
            raise SecAggError("out_of_order", f"a reveal from {sender!r} at stage {self.stage}")
        shares = _unpack(message.shares, "reveal")
        allowed = self._neighbours(sender, self._members | self._dropped)
        if not set(shares) <= allowed:
            raise SecAggError("not_neighbour", f"{sender!r} revealed shares of {sorted(set(shares) - allowed)[:5]}, "
                                               "which are not its neighbours in this round")
        if any(len(share) != shamir.SHARE_BYTES for share in shares.values()):
            raise SecAggError("bad_share", f"revealed shares must be {shamir.SHARE_BYTES} bytes each")
        self._revealed[sender] = shares

    # -- stages -----------------------------------------------------------------------------------

    def advance(self) -> dict[str, SecAggToDevice]:
        """Close the current stage and return what each device still in the round is sent next (nothing after
        ``unmask``: call ``result``). Raises ``Abandoned`` when the round cannot go on."""
        p = self.params
        if self.stage == "keys":
            members = self._prune(frozenset(self._keys), "advertised keys")
            self.counts.advertised, self._members, self.stage = len(self._keys), members, "shares"
            return {d: SecAggRoster(p.task_id, p.round, tuple(
                pack_entry(v, self._keys[v][0], self._keys[v][1]) for v in sorted(self._neighbours(d, members))),
                pack_entry(d, self._keys[d][0], self._keys[d][1])) for d in sorted(members)}
        if self.stage == "shares":
            members = self._prune(frozenset(self._sealed), "sent their shares")
            self.counts.shared, self._members, self.stage = len(self._sealed), members, "masked"
            return {d: SecAggRouted(p.task_id, p.round, tuple(
                pack_entry(u, self._sealed[u][d]) for u in sorted(self._neighbours(d, members))))
                for d in sorted(members)}
        if self.stage == "masked":
            return self._close_masked()
        if self.stage == "unmask":
            self.counts.revealed, self.stage = len(self._revealed), "done"
            return {}
        raise SecAggError("out_of_order", "the secure round is over")

    def unrecoverable(self) -> str | None:
        """Why the masked inputs so far could not be unmasked if the stage closed now (None: they could): a
        device with fewer surviving neighbours than the threshold, whose secrets nobody could rebuild."""
        survivors, threshold = frozenset(self._masked), self.params.threshold
        if not survivors:
            return "no device sent a masked input"
        for device in sorted(self._members):
            left = len(self._neighbours(device, survivors))
            if left < threshold:
                return (f"{device!r} has {left} surviving neighbours, fewer than the threshold {threshold}: its "
                        "secrets cannot be rebuilt")
        return None

    def _close_masked(self) -> dict[str, SecAggToDevice]:
        p, survivors = self.params, frozenset(self._masked)
        dropped = self._members - survivors
        self.counts.masked, self.counts.dropped_after_sharing = len(survivors), len(dropped)
        problem = self.unrecoverable()
        if problem is not None:
            raise Abandoned("no_masked_inputs" if not survivors else "cannot_unmask", problem)
        self._dropped, self._members, self.stage = dropped, survivors, "unmask"
        return {d: SecAggUnmask(p.task_id, p.round, tuple(sorted(self._neighbours(d, survivors))),
                                tuple(sorted(self._neighbours(d, dropped)))) for d in sorted(survivors)}

    def _prune(self, present: frozenset[str], what: str) -> frozenset[str]:
        """The devices of ``present`` left once those with fewer than the threshold of neighbours among them
        are dropped, again until none is (a device's secrets must be rebuildable from its neighbours)."""
        members, threshold = set(present), self.params.threshold
        while True:
            short = {d for d in members if len(self._neighbours(d, members)) < threshold}
            if not short:
                break
            members -= short
        if len(members) < 2:
            raise Abandoned("too_few_devices", f"{len(present)} devices {what}; fewer than 2 have the threshold "
                                               f"{threshold} of neighbours among them")
        return frozenset(members)

    def _neighbours(self, device: str, among: frozenset[str] | set[str]) -> set[str]:
        return {v for v in self.params.graph[device] if v in among}

    # -- the sum ----------------------------------------------------------------------------------

    @property
    def survivors(self) -> frozenset[str]:
        """The devices whose masked inputs the sum holds (once the masked stage has closed)."""
        return frozenset(self._masked) if self.stage in ("unmask", "done") else frozenset()

    def result(self) -> tuple[np.ndarray, int]:
        """The float64 sum of the survivors' clipped updates and their count. Raises ``Abandoned``."""
        try:
            return self._unmasked()
        except SecAggError as exc:  # e.g. a rebuilt key that agrees with nothing: never a sum, never a crash
            raise Abandoned("cannot_unmask", exc.problem) from exc

    def _unmasked(self) -> tuple[np.ndarray, int]:
        if self.stage != "done":
            raise SecAggError("out_of_order", f"the sum is not known at stage {self.stage}")
        p, bits, total = self.params, self.params.modulus_bits, self._sum
        for device in sorted(self._members):
            seed = self._rebuild(device, "self-mask seed", partial(_is_seed_of, self._keys[device][2]))
            total = masks.sub_mod(total, masks.expand(seed, self.length, bits), bits)
            self.counts.self_masks_removed += 1
        for device in sorted(self._dropped):
            secret = self._rebuild(device, "mask key", partial(_is_key_of, self._keys[device][1]))
            key = KeyPair.from_private_bytes(secret)
            for peer in sorted(self._neighbours(device, self._members)):  # they masked with it, it never sent
                mask = masks.expand(agree(key, self._keys[peer][1], p.key_info(MASK_PURPOSE)), self.length, bits)
                remove = masks.sub_mod if pairwise_sign(peer, device) > 0 else masks.add_mod
                total = remove(total, mask, bits)
                self.counts.pairwise_masks_recovered += 1
        try:
            return dequantize_sum(total, len(self._members), self.clip, p.value_bits, bits), len(self._members)
        except SecAggError as exc:
            raise Abandoned("cannot_unmask", exc.problem) from exc

    def _rebuild(self, owner: str, what: str, fits: Callable[[bytes], bool]) -> bytes:
        """A secret of ``owner`` from the shares its neighbours revealed (the seed's for a survivor, the mask
        key's for a dropped device: a device reveals one or the other for a neighbour, as it was asked) that
        ``fits`` what the owner committed to. The shares with the smallest x first; if they do not fit (a holder
        revealed a wrong share), other sets of t drawn from those revealed, up to REBUILD_TRIES, so that one bad
        share among more than t does not abandon the round. Malformed shares are left out and counted."""
        p = self.params
        shares: dict[int, bytes] = {}
        for holder, found in sorted(self._revealed.items()):
            if owner in found:
                try:
                    shamir.decode_share(p.coordinates[holder], found[owner])
                except SecAggError:
                    self.counts.rejected["bad_share"] += 1
                    continue
                shares[p.coordinates[holder]] = found[owner]
        if len(shares) < p.threshold:
            raise Abandoned("cannot_unmask", f"{owner!r}'s {what}: {len(shares)} shares, fewer than the threshold "
                                             f"{p.threshold}")
        xs, draw, tried = sorted(shares), random.Random(0), set()
        for attempt in range(REBUILD_TRIES):
            subset = tuple(xs[:p.threshold]) if attempt == 0 else tuple(sorted(draw.sample(xs, p.threshold)))
            if subset in tried:
                continue
            tried.add(subset)
            try:
                secret = shamir.combine({x: shares[x] for x in subset}, p.threshold)
            except SecAggError:  # an interpolated value beyond 32 bytes: a wrong share among these
                continue
            if fits(secret):
                if attempt:
                    self.counts.rejected["wrong_share"] += 1
                return secret
        raise Abandoned("wrong_secret", f"no {p.threshold} of the {len(shares)} shares of {owner!r}'s {what} "
                                        f"rebuild what it committed to ({len(tried)} sets tried)")


def _is_seed_of(commitment: str, secret: bytes) -> bool:
    """Whether ``secret`` is the self-mask seed a device committed to."""
    return seed_digest(secret) == commitment


def _is_key_of(public: bytes, secret: bytes) -> bool:
    """Whether ``secret`` is the X25519 private key of ``public``."""
    return KeyPair.from_private_bytes(secret).public_bytes() == public


def _unpack(entries: tuple[str, ...], what: str) -> dict[str, bytes]:
    try:
        return {device: values[0] for device, values in unpack_entries(entries, 1, what).items()}
    except ProtocolError as exc:
        raise SecAggError("malformed", exc.problem) from exc
