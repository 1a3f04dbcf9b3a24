"""Key agreement and authenticated encryption between two devices, through the coordinator.

``agree`` is X25519 followed by HKDF-SHA256: two devices that each publish a
public key derive the same 32-byte key, which the coordinator relaying the
keys cannot compute (computational Diffie-Hellman). ``seal`` and
``open_sealed`` are ChaCha20-Poly1305: a sealed share can be neither read nor
altered by the coordinator, and ``aad`` binds it to its context (round,
sender, receiver) so it cannot be replayed elsewhere.

Key derivation, for a client in another language: the X25519 shared secret
is the HKDF input key material; the salt is ``SALT``; the info is the
caller's ``info`` followed by the two raw public keys, the smaller (as bytes)
first, so both sides compute the same key; the output is 32 bytes. A sealed
blob is a random 12-byte nonce followed by the ChaCha20-Poly1305 ciphertext
and its 16-byte tag (RFC 8439).

What is refused: public keys that are not 32 bytes, low-order points (the
shared secret would be all zeros, a value an attacker can predict) and a
peer key equal to the device's own; ciphertexts too short to hold a nonce and
a tag; any blob whose tag does not verify.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_runtime.secagg.errors import SecAggError, describe

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SALT = b"edgefl-secagg-v1"
_RAW = serialization.Encoding.Raw


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; the private half can be exported so that it can be secret-shared."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """The key pair of a raw 32-byte private key (for instance one rebuilt from Shamir shares)."""
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise SecAggError("bad_private_key", f"an X25519 private key is {KEY_BYTES} raw bytes, got {describe(raw)}")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_public_key(raw: bytes) -> X25519PublicKey:
    """A peer's X25519 public key from its 32 raw bytes."""
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise SecAggError("bad_public_key", f"an X25519 public key is {KEY_BYTES} raw bytes, got {describe(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def agree(private: KeyPair | bytes, peer_public: bytes, info: bytes) -> bytes:
    """The 32-byte key this device and the owner of ``peer_public`` both derive, bound to ``info``."""
    own = private if isinstance(private, KeyPair) else KeyPair.from_private_bytes(private)
    peer = load_public_key(peer_public)
    own_public = own.public_bytes()
    if peer_public == own_public:
        raise SecAggError("bad_public_key", "the peer's public key is this device's own; expected another device's")
    try:
        shared = own.private.exchange(peer)
    except ValueError as error:
        raise SecAggError("bad_public_key", "the peer's public key is a low-order point (all-zero shared "
                                            "secret); expected a key made by X25519 key generation") from error
    low, high = sorted((own_public, peer_public))
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=SALT, info=bytes(info) + low + high)
    return hkdf.derive(shared)


def context(purpose: str, *fields: str | int) -> bytes:
    """An unambiguous ``info``/``aad`` string: each part as UTF-8 (ints in decimal) after a 2-byte big-endian length."""
    out = bytearray()
    for field in (purpose, *fields):
        raw = str(field).encode("utf-8")
        if len(raw) >= 2**16:
            raise SecAggError("bad_length", f"a context field is {len(raw)} bytes; expected fewer than 65536")
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``plaintext`` encrypted and authenticated under ``key``, bound to ``aad``: nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The plaintext of a ``seal``ed blob, if it was sealed under ``key`` with the same ``aad`` and not altered."""
    aead = _aead(key)
    if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError("bad_ciphertext", f"a sealed blob holds at least {NONCE_BYTES + TAG_BYTES} bytes "
                                            f"(nonce and tag), got {describe(blob)}")
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as error:
        raise SecAggError("auth_failed", "the sealed blob does not verify: altered, or sealed under another "
                                         "key or context") from error


def _aead(key: bytes) -> ChaCha20Poly1305:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise SecAggError("bad_key", f"a ChaCha20-Poly1305 key is {KEY_BYTES} bytes, got {describe(key)}")
    return ChaCha20Poly1305(key)
