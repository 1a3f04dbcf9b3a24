"""Shamir secret sharing of 32-byte secrets over the prime field p = 2**521 - 1.

A secret s becomes the constant term of a random polynomial f of degree
``threshold - 1`` over GF(p); the holder at coordinate x gets f(x). Any
``threshold`` shares rebuild s by Lagrange interpolation at 0; fewer reveal
nothing about s, since every value of s fits them equally well (information-
theoretic secrecy, provided the coefficients are uniform and secret: they come
from ``secrets``). p is a Mersenne prime larger than 2**256, so a 32-byte
secret (an X25519 private key or a PRG seed) is one field element.

Wire format: a share is f(x) as ``SHARE_BYTES`` (66) bytes, big-endian; the
secret is read and written as 32 bytes, big-endian. x is a small positive
integer (1..``MAX_X``) that the caller sends alongside; 0 is refused, since
f(0) is the secret itself.

Shares are not authenticated here. A random forgery interpolates to a
value too large for 32 bytes (refused as ``bad_share``, except with
probability 2**-265), but a forger who knows the scheme can shift the
secret by an amount of their choice. Send shares inside an AEAD
(``crypto.seal``) so that only their holder can read or alter them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from edge_runtime.secagg.errors import SecAggError, describe

PRIME = 2**521 - 1
SHARE_BYTES = 66
SECRET_BYTES = 32
MAX_X = 2**16


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of ``secret`` (32 bytes) for the holders at ``xs``: any ``threshold`` of them rebuild it."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise SecAggError("bad_secret", f"a secret to share must be {SECRET_BYTES} bytes, got {describe(secret)}")
    _check_xs(xs)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= len(xs):
        raise SecAggError("bad_threshold", f"threshold must be an int in 1..{len(xs)} (the holders), got {threshold!r}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in xs}


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The 32-byte secret rebuilt from ``threshold`` of ``shares`` (those with the smallest x).

    Every share given is checked, used or not. Raises ``too_few_shares`` below
    the threshold and ``bad_share`` when the shares do not interpolate to a
    32-byte value (a wrong or forged share, or shares of different secrets).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise SecAggError("bad_threshold", f"threshold must be a positive int, got {threshold!r}")
    points = {x: decode_share(x, share) for x, share in shares.items()}
    if len(points) < threshold:
        raise SecAggError("too_few_shares", f"got {len(points)} distinct shares, need the threshold {threshold}")
    chosen = sorted(points)[:threshold]
    value = _interpolate_at_zero([(x, points[x]) for x in chosen])
    if value >= 2 ** (8 * SECRET_BYTES):
        raise SecAggError("bad_share", f"the shares at x={chosen} do not rebuild a {SECRET_BYTES}-byte secret: "
                                       "one is wrong, forged, or from another secret")
    return value.to_bytes(SECRET_BYTES, "big")


def decode_share(x: int, share: bytes) -> int:
    """The field element a share holds, after checking its coordinate, size and range."""
    _check_x(x)
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise SecAggError("bad_share", f"share at x={x}: expected {SHARE_BYTES} bytes, got {describe(share)}")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise SecAggError("bad_share", f"share at x={x}: its value is not below the prime 2**521 - 1")
    return value


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """f(x) mod p by Horner's rule, ``coefficients[0]`` being the constant term."""
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value


def _interpolate_at_zero(points: Sequence[tuple[int, int]]) -> int:
    """f(0) for the polynomial of degree ``len(points) - 1`` through ``points`` (distinct x)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def _check_xs(xs: Sequence[int]) -> None:
    for x in xs:
        _check_x(x)
    if len(set(xs)) != len(xs):
        raise SecAggError("bad_x", f"share coordinates must be distinct, got {sorted(xs)}")


def _check_x(x: int) -> None:
    if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_X:
        raise SecAggError("bad_x", f"a share coordinate must be an int in 1..{MAX_X} (never 0), got {x!r}")
