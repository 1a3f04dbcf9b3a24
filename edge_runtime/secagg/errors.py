"""The one error secure aggregation raises on purpose, with a stable reason code.

Everything a peer or the coordinator sends is untrusted; when a key, share,
ciphertext, seed or parameter is refused, ``SecAggError`` says what was wrong
and what was expected, and ``reason`` is a short code (one of ``REASONS``) that
callers count refusals by and tests match on.
"""

from __future__ import annotations

from typing import Literal, get_args

from edge_runtime.errors import EdgeRuntimeError

Reason = Literal[
    "bad_public_key",  # not 32 bytes, a low-order point, or the device's own key
    "bad_private_key",  # not 32 bytes
    "bad_key",  # a symmetric key that is not 32 bytes
    "bad_ciphertext",  # too short to hold a nonce and a tag
    "auth_failed",  # the AEAD tag does not verify: tampered, wrong key or wrong context
    "bad_secret",  # a secret to share that is not 32 bytes
    "bad_share",  # a share of the wrong size or range, or shares that do not fit one secret
    "too_few_shares",  # fewer distinct shares than the threshold
    "bad_threshold",  # a threshold outside 1..number of holders
    "bad_x",  # a share coordinate outside 1..MAX_X, or repeated
    "bad_seed",  # a PRG or graph seed that is not 32 bytes
    "bad_length",  # a negative length or arrays of different shapes
    "bad_modulus",  # modulus or value bits out of range, or an array of the wrong dtype
    "bad_value",  # a non-finite value to quantize, or a non-positive clip
    "would_wrap",  # the sum of this many quantized vectors would overflow the modulus
    "bad_devices",  # fewer than two devices, an empty or repeated id
    "bad_degree",  # a graph degree the device count cannot support
    "dropout_too_high",  # the expected drop-out leaves fewer survivors than the threshold
    # the protocol (edge_runtime.secagg.session, coordinator.secure_round)
    "malformed",  # a list entry that is not DEVICE:BASE64..., or names a device twice
    "wrong_round",  # a message for another round or task: replayed, or late
    "out_of_order",  # a message the session's stage does not expect, or a second one of a kind
    "not_neighbour",  # a share or key for, from or about a device that is not a neighbour in the round's graph
    "not_participant",  # a device the stage does not include (not selected, or dropped at an earlier stage)
    "too_few_neighbours",  # fewer neighbours left than the threshold: the device's secrets could not be rebuilt
    "bad_masked",  # a masked input of the wrong length, dtype or modulus
    "bad_parameters",  # a task's secure aggregation settings out of range (a threshold below a majority, ...)
    "wrong_secret",  # a rebuilt secret that does not match what its owner committed to
]

REASONS: tuple[str, ...] = get_args(Reason)


class SecAggError(EdgeRuntimeError, ValueError):
    """A secure-aggregation input was refused.

    ``reason`` is a stable code from ``REASONS``; ``problem`` says what was
    found and what was expected.
    """

    def __init__(self, reason: Reason, problem: str) -> None:
        super().__init__(problem)
        self.reason: str = reason
        self.problem = problem


def describe(value: object) -> str:
    """How a refused value looked, for a message: its length if bytes, else its type."""
    return f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
