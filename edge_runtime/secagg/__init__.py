"""Building blocks of secure aggregation (SecAgg+: Bell et al. 2020, after Bonawitz et al. 2017).

Pure functions, no I/O, no protocol state:

- ``crypto``: X25519 key agreement with HKDF-SHA256, ChaCha20-Poly1305 sealing;
- ``shamir``: Shamir secret sharing of 32-byte secrets;
- ``masks``: the AES-CTR mask generator and arithmetic mod 2**bits;
- ``graph``: the random k-regular neighbourhoods and their threshold;
- ``quantize``: floats to integers whose modular sum decodes to the float sum.

Every refusal is a ``SecAggError`` with a stable ``reason``.
"""

from __future__ import annotations

from edge_runtime.secagg.errors import REASONS, SecAggError

__all__ = ["REASONS", "SecAggError"]
