"""A device's side of one secure round (SecAgg+), without I/O: messages in, messages out.

Stages, each entered once and in order (anything else is refused
``out_of_order``):

1. ``keys``: two fresh X25519 key pairs (one to seal shares, one to derive
   pairwise masks) and a fresh self-mask seed b, committed to by its SHA-256.
2. ``shares`` (on the roster): for each neighbour that advertised, a key to
   seal with and a pairwise mask seed, both by X25519 + HKDF bound to the
   round; b and the mask private key are Shamir-shared among those
   neighbours, and each neighbour's two shares are sealed for it
   (ChaCha20-Poly1305, bound to sender, recipient and round).
3. ``routed``: the shares neighbours sealed for this device, opened and kept;
   the neighbours they came from are the ones it masks with.
4. ``masked``: the clipped update, quantized (``quantize``), plus PRG(b), plus
   PRG(s_uv) for each such neighbour v with the smaller id adding and the
   larger subtracting, all modulo 2^bits.
5. ``reveal`` (once): for each neighbour the coordinator says survived, its
   share of that neighbour's b; for each it says dropped, its share of that
   neighbour's mask key; never both for one neighbour, and nothing about a
   device that is not its neighbour.

docs/PROTOCOL.md 5.13 gives the bytes; docs/SECURITY.md what this protects.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np

from edge_runtime.errors import ProtocolError
from edge_runtime.protocol import (
    MASKED_TENSOR,
    MaskedHeader,
    SecAggKeys,
    SecAggReveal,
    SecAggRoster,
    SecAggRouted,
    SecAggShares,
    SecAggUnmask,
    TrainTask,
    pack_entry,
    unpack_entries,
)
from edge_runtime.secagg import masks, shamir
from edge_runtime.secagg.crypto import KEY_BYTES, KeyPair, agree, open_sealed, seal
from edge_runtime.secagg.errors import SecAggError
from edge_runtime.secagg.params import CIPHER_PURPOSE, MASK_PURPOSE, SecureParams, pairwise_sign, seed_digest
from edge_runtime.secagg.quantize import quantize

Stage = Literal["keys", "shares", "routed", "masked", "reveal", "done"]
SHARES_PLAINTEXT = 2 * shamir.SHARE_BYTES  # a neighbour's share of b, then its share of the mask key


class DeviceSession:
    """One device's secure round (module docstring). Raises ``SecAggError`` with a reason on any bad input."""

    def __init__(self, device_id: str, task: TrainTask) -> None:
        self.params = SecureParams.from_task(task)
        if device_id not in self.params.coordinates:
            raise SecAggError("not_participant", f"device {device_id!r} is not among the task's peers")
        self.device_id = device_id
        self.neighbours = frozenset(self.params.graph[device_id])
        self._cipher, self._mask = KeyPair.generate(), KeyPair.generate()
        self._seed = masks.new_seed()
        self._stage: Stage = "keys"
        self._cipher_keys: dict[str, bytes] = {}  # neighbour -> the key shares to and from it are sealed with
        self._mask_seeds: dict[str, bytes] = {}  # neighbour -> the seed of the mask this device shares with it
        self._held: dict[str, tuple[bytes, bytes]] = {}  # neighbour -> (its share of b, its share of the mask key)

    @property
    def stage(self) -> Stage:
        return self._stage

    def keys(self) -> SecAggKeys:
        self._expect("keys")
        p, self._stage = self.params, "shares"
        return SecAggKeys(self.device_id, p.task_id, p.round, _b64(self._cipher.public_bytes()),
                          _b64(self._mask.public_bytes()), seed_digest(self._seed))

    def shares(self, roster: SecAggRoster) -> SecAggShares:
        """Agree keys with the neighbours the roster lists and seal each its shares."""
        p = self.params
        self._expect("shares")
        p.check_round(roster.task_id, roster.round)
        own = _entries((roster.own,), 2, "roster's own keys")
        if own != {self.device_id: (self._cipher.public_bytes(), self._mask.public_bytes())}:
            raise SecAggError("not_participant", "the roster's keys for this device are not its session's: it "
                                                 "restarted after advertising them, or the roster is for another "
                                                 "device")
        listed = _entries(roster.neighbours, 2, "roster")
        strangers = sorted(set(listed) - self.neighbours)
        if strangers:
            raise SecAggError("not_neighbour", f"the roster lists {strangers[:5]}, not neighbours of "
                                               f"{self.device_id!r} in the round's graph")
        if len(listed) < p.threshold:
            raise SecAggError("too_few_neighbours", f"{len(listed)} neighbours advertised keys; the threshold is "
                                                    f"{p.threshold}, so this device's secrets could not be rebuilt")
        cipher_keys = {peer: agree(self._cipher, keys[0], p.key_info(CIPHER_PURPOSE)) for peer, keys in listed.items()}
        mask_seeds = {peer: agree(self._mask, keys[1], p.key_info(MASK_PURPOSE)) for peer, keys in listed.items()}
        holders = sorted(listed)
        xs = [p.coordinates[peer] for peer in holders]
        seed_shares = shamir.split(self._seed, p.threshold, xs)
        key_shares = shamir.split(self._mask.private_bytes(), p.threshold, xs)
        sealed = [pack_entry(peer, seal(cipher_keys[peer], seed_shares[x] + key_shares[x],
                                        p.share_aad(self.device_id, peer)))
                  for peer, x in zip(holders, xs, strict=True)]
        self._cipher_keys, self._mask_seeds, self._stage = cipher_keys, mask_seeds, "routed"
        return SecAggShares(self.device_id, p.task_id, p.round, tuple(sealed))

    def accept_routed(self, routed: SecAggRouted) -> None:
        """Open the shares neighbours sealed for this device; their senders are the neighbours it masks with."""
        p = self.params
        self._expect("routed")
        p.check_round(routed.task_id, routed.round)
        sealed = _entries(routed.shares, 1, "routed shares")
        unknown = sorted(set(sealed) - set(self._cipher_keys))
        if unknown:
            raise SecAggError("not_neighbour", f"routed shares from {unknown[:5]}, which are not neighbours this "
                                               "device agreed keys with")
        if len(sealed) < p.threshold:
            raise SecAggError("too_few_neighbours", f"shares from {len(sealed)} neighbours; the threshold is "
                                                    f"{p.threshold}")
        held = {}
        for peer, (blob,) in sealed.items():
            plain = open_sealed(self._cipher_keys[peer], blob, p.share_aad(peer, self.device_id))
            if len(plain) != SHARES_PLAINTEXT:
                raise SecAggError("bad_share", f"{peer!r} sealed {len(plain)} bytes; expected {SHARES_PLAINTEXT}")
            held[peer] = (plain[:shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES:])
        self._held, self._stage = held, "masked"

    def masked_input(self, update: np.ndarray, clip: float, model_version: int,
                     rng: np.random.Generator) -> tuple[MaskedHeader, dict[str, np.ndarray]]:
        """The flat clipped ``update`` (float32, manifest order), quantized and masked."""
        self._expect("masked")
        p, bits = self.params, self.params.modulus_bits
        total = quantize(np.asarray(update), clip, p.value_bits, bits, rng)
        total = masks.add_mod(total, masks.expand(self._seed, total.size, bits), bits)
        for peer in sorted(self._held):
            mask = masks.expand(self._mask_seeds[peer], total.size, bits)
            combine = masks.add_mod if pairwise_sign(self.device_id, peer) > 0 else masks.sub_mod
            total = combine(total, mask, bits)
        header = MaskedHeader(self.device_id, p.task_id, p.round, model_version, bits)
        self._stage = "reveal"
        return header, {MASKED_TENSOR: total}

    def reveal(self, request: SecAggUnmask) -> SecAggReveal:
        """The shares the unmask request asks for: b's for survivors, the mask key's for the dropped."""
        p = self.params
        self._expect("reveal")
        p.check_round(request.task_id, request.round)
        survivors, dropped = set(request.survivors), set(request.dropped)
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped) or survivors & dropped:
            raise SecAggError("out_of_order", "the unmask request names a device twice, or as both survivor and "
                                              "dropped; expected each neighbour at most once")
        strangers = sorted((survivors | dropped) - set(self._held))
        if strangers:
            raise SecAggError("not_neighbour", f"the unmask request asks about {strangers[:5]}, whose shares this "
                                               "device does not hold")
        self._stage = "done"
        shares = [pack_entry(peer, self._held[peer][0]) for peer in sorted(survivors)]
        shares += [pack_entry(peer, self._held[peer][1]) for peer in sorted(dropped)]
        return SecAggReveal(self.device_id, p.task_id, p.round, tuple(shares))

    def _expect(self, stage: Stage) -> None:
        """Refuse a step the session is not at; the step moves the stage on only once it has succeeded, so a
        refused message changes nothing."""
        if self._stage != stage:
            raise SecAggError("out_of_order", f"a {stage} step while the session expects {self._stage}")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _entries(entries: tuple[str, ...], parts: int, what: str) -> dict[str, tuple[bytes, ...]]:
    """``unpack_entries`` with its ProtocolError turned into a SecAggError, and keys of the right length."""
    try:
        unpacked = unpack_entries(entries, parts, what)
    except ProtocolError as exc:
        raise SecAggError("malformed", exc.problem) from exc
    if parts == 2:
        for peer, keys in unpacked.items():
            if any(len(key) != KEY_BYTES for key in keys):
                raise SecAggError("bad_public_key", f"{what}: {peer!r}'s keys are {[len(k) for k in keys]} bytes; "
                                                    f"expected {KEY_BYTES} each")
    return unpacked


def check_keys(message: SecAggKeys) -> tuple[bytes, bytes]:
    """A device's advertised (cipher, mask) public keys, decoded and checked: 32 bytes each, distinct, not a
    low-order point (an exchange with a throwaway key would give the all-zero secret), and a well-formed seed
    commitment. What the coordinator checks before it forwards keys to anyone."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge_runtime.secagg.crypto import load_public_key

    keys = []
    for name in ("cipher_key", "mask_key"):
        try:
            raw = base64.b64decode(getattr(message, name), validate=True)
        except ValueError as exc:
            raise SecAggError("bad_public_key", f"{name} is not base64: {exc}") from exc
        try:
            X25519PrivateKey.generate().exchange(load_public_key(raw))
        except ValueError as exc:
            if isinstance(exc, SecAggError):
                raise
            raise SecAggError("bad_public_key", f"{name} is a low-order point; expected an X25519 public key") from exc
        keys.append(raw)
    if keys[0] == keys[1]:
        raise SecAggError("bad_public_key", "the cipher and mask keys are the same; expected two key pairs")
    if len(message.seed_sha256) != 64 or any(c not in "0123456789abcdef" for c in message.seed_sha256):
        raise SecAggError("bad_public_key", "seed_sha256 is not 64 lowercase hex digits")
    return keys[0], keys[1]
