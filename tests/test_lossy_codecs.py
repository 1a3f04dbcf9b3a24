"""The compressing codecs: unbiased stochastic rounding, the rotation's error against its theory, what top-k and
sign keep, the norm each promises, error feedback's conservation, and every refusal of a malformed payload."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.codecs import FlatCodec, get_codec
from edge_runtime.codecs.rotation import block_size, hadamard, random_signs, rotate, unrotate
from edge_runtime.codecs.signs import RotatedSigns
from edge_runtime.errors import ProtocolError, WeightsError
from edge_runtime.feedback import encode_with_feedback
from edge_runtime.manifest import WeightSpec
from edge_runtime.updates import clip, l2_norm

SPECS = (WeightSpec("conv/kernel", (3, 3, 1, 8)), WeightSpec("conv/bias", (8,)), WeightSpec("dense/kernel", (40, 10)),
         WeightSpec("dense/bias", (10,)))
N = 72 + 8 + 400 + 10
LOSSY = ["int8", "int4", "sign", "rotated-sign", "topk:0.1", "topk:0.05+int8", "topk:0.2+int4", "topk:0.1+sign",
         "topk:0.1+float16"]


def update(seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: (rng.standard_normal(s.shape) * scale).astype(np.float32) for s in SPECS}


def flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(weights[s.name]).astype(np.float64) for s in SPECS])


def test_names_are_parsed_canonically_and_bad_ones_refused_with_what_is_expected() -> None:
    assert get_codec("topk:0.01+int8").name == "topk:0.01+int8"
    assert get_codec("topk:0.1").feedback and get_codec("sign").feedback
    assert not get_codec("int8").feedback and not get_codec("rotated-sign").feedback
    for name, message in [("topk:0", r"must be a number in \(0, 1\)"), ("topk:1.5", "must be a number"),
                          ("topk:0.10", "write 'topk:0.1'"), ("topk:0.1+rotated-sign", "cannot encode its values"),
                          ("int3", "is not known")]:
        with pytest.raises(ProtocolError, match=message):
            get_codec(name)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased(name: str) -> None:
    """The mean of many seeded decodings converges to the update: within 5 standard errors per value."""
    codec, value, draws = get_codec(name), update(3, 0.01), 4000
    total = np.zeros(N)
    for seed in range(draws):
        total += flat(codec.encode(value, SPECS, seed, math.inf).decoded)
    x = flat(value)
    level = 127 if name == "int8" else 7
    step = np.max(np.abs(x)) / level  # the coarsest block's level spacing bounds every value's rounding
    assert np.all(np.abs(total / draws - x) <= 5 * (step / 2) / math.sqrt(draws))
    # and a single decoding is not the update itself: the test would see a deterministic codec
    assert not np.array_equal(flat(codec.encode(value, SPECS, 0, math.inf).decoded), x)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_each_value_lands_on_one_of_its_two_neighbouring_levels(name: str) -> None:
    codec, value = get_codec(name), update(4)
    encoded = codec.encode(value, SPECS, 1, math.inf)
    scales = np.repeat(encoded.tensors["scales"], 256)[:N].astype(np.float64)
    x, got = flat(value), flat(encoded.decoded)
    assert np.all(np.abs(got - x) <= scales * (1 + 1e-6))


def test_the_rotation_is_orthonormal_and_its_own_inverse() -> None:
    x = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    y = rotate(x, seed=9, size=1024)
    assert y.shape == (3, 1024)
    assert l2_norm({"y": y}) == pytest.approx(l2_norm({"x": x}), rel=1e-5)
    np.testing.assert_allclose(unrotate(y, 9, 3000), x, atol=1e-5)
    assert hadamard(np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert hadamard(np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)).tolist() == [[1.0, -1.0, 1.0, -1.0]]
    assert block_size(1) == 1 and block_size(490) == 512 and block_size(10**6) == 1024


def test_the_sign_stream_is_the_documented_sha256_counter_stream() -> None:
    import hashlib
    first = hashlib.sha256(b"edgefl-rotation" + (5).to_bytes(8, "little") + (0).to_bytes(4, "little")).digest()[0]
    expected = [-1.0 if first >> (7 - i) & 1 else 1.0 for i in range(8)]
    assert random_signs(5, 8).tolist() == expected
    assert len(random_signs(5, 1000)) == 1000 and not np.array_equal(random_signs(5, 64), random_signs(6, 64))


@pytest.mark.parametrize("unbiased", [True, False], ids=["eden", "drive"])
@pytest.mark.parametrize("shape", ["dense", "one-hot"])
def test_rotated_sign_error_matches_its_theory_even_for_a_one_hot_update(shape: str, unbiased: bool) -> None:
    """For a block of B rotated values y: with DRIVE's scale ||y||_1 / B the squared error is exactly
    ||y||^2 - ||y||_1^2 / B, close to (1 - 2/pi) ||y||^2 once the rotation has made the values nearly Gaussian;
    with EDEN's unbiased scale ||y||^2 / ||y||_1 it is exactly ||y||^2 (B ||y||^2 / ||y||_1^2 - 1), close to
    (pi/2 - 1) ||y||^2. A one-hot update rotates to values of equal magnitude, which one bit and either scale send
    exactly; plain sign on a one-hot update loses almost all of it."""
    n = 4096
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32) if shape == "dense" else np.eye(1, n)[0]
    specs = (WeightSpec("w", (n,)),)
    value = {"w": x.astype(np.float32)}
    codec = FlatCodec("rotated-sign", RotatedSigns(unbiased))
    encoded = codec.encode(value, specs, 17, math.inf)
    error = float(np.sum((encoded.decoded["w"].astype(np.float64) - x) ** 2))
    energy = float(np.sum(x.astype(np.float64) ** 2))
    y = rotate(value["w"], 17, 1024).astype(np.float64)
    l1, l2 = np.sum(np.abs(y), axis=1), np.sum(y**2, axis=1)
    l1, l2 = l1[l1 > 0], l2[l1 > 0]  # blocks of zeros decode to zeros
    closed = float(np.sum(l2 * (1024 * l2 / l1**2 - 1))) if unbiased else energy - float(np.sum(l1**2)) / 1024
    theory = math.pi / 2 - 1 if unbiased else 1 - 2 / math.pi
    assert error == pytest.approx(closed, rel=1e-3, abs=1e-9)
    assert error / energy <= theory + 0.04
    if shape == "dense":
        assert error / energy > theory - 0.04
    plain = get_codec("sign").encode(value, specs, 17, math.inf).decoded["w"].astype(np.float64)
    if shape == "one-hot":
        assert float(np.sum((plain - x) ** 2)) / energy > 0.99


def test_rotated_sign_is_unbiased_over_the_rotation() -> None:
    """The mean of decodings under many seeds (rotations) converges to the update: the distance left is the size
    of the averaged noise alone, sqrt((pi/2 - 1) / draws) of the update."""
    n, draws = 2048, 2000
    specs = (WeightSpec("w", (n,)),)
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    total = np.zeros(n)
    for seed in range(draws):
        total += get_codec("rotated-sign").encode({"w": x}, specs, seed, math.inf).decoded["w"]
    gap = float(np.linalg.norm(total / draws - x) / np.linalg.norm(x))
    assert gap < 1.2 * math.sqrt((math.pi / 2 - 1) / draws)
    biased = FlatCodec("rotated-sign", RotatedSigns(unbiased=False))
    shrunk = sum(biased.encode({"w": x}, specs, seed, math.inf).decoded["w"] for seed in range(50)) / 50
    assert float(np.linalg.norm(shrunk - x) / np.linalg.norm(x)) > 0.3  # DRIVE's scale shrinks every decoding


def test_sign_sends_the_sign_and_the_mean_magnitude_per_block() -> None:
    specs = (WeightSpec("w", (4,)),)
    encoded = get_codec("sign").encode({"w": np.array([0.5, -0.25, 0.0, -1.25], np.float32)}, specs, 0, math.inf)
    assert encoded.tensors["bits"].tolist() == [0b1010_0000]
    assert encoded.tensors["scales"].tolist() == [0.5]
    assert encoded.decoded["w"].tolist() == [0.5, -0.5, 0.5, -0.5]


def test_topk_keeps_the_largest_magnitudes_at_sorted_indices() -> None:
    specs = (WeightSpec("w", (2, 5)),)
    value = {"w": np.array([[0.1, -3.0, 0.2, 0.0, 2.0], [0.5, -0.5, 4.0, 0.0, -0.25]], np.float32)}
    encoded = get_codec("topk:0.3").encode(value, specs, 0, math.inf)
    assert encoded.tensors["indices"].tolist() == [1, 4, 7]
    assert encoded.tensors["values"].tolist() == [-3.0, 2.0, 4.0]
    assert encoded.decoded["w"].tolist() == [[0, -3.0, 0, 0, 2.0], [0, 0, 4.0, 0, 0]]


@pytest.mark.parametrize("name", LOSSY)
@pytest.mark.parametrize("seed", range(8))
def test_a_clipped_update_decodes_within_the_declared_norm(name: str, seed: int) -> None:
    codec, bound = get_codec(name), 0.5
    clipped, _ = clip(update(seed, 10.0 ** (seed % 4 - 3)), bound)
    encoded = codec.encode(clipped, SPECS, seed, bound)
    decoded = codec.decode(encoded.tensors, SPECS, seed)
    assert all(np.array_equal(decoded[s.name], encoded.decoded[s.name]) for s in SPECS)
    assert l2_norm(decoded) <= codec.max_norm(bound, N) == pytest.approx(bound * (1 + 1e-5))


@pytest.mark.parametrize("name", LOSSY)
def test_payload_sizes_are_the_declared_layout(name: str) -> None:
    codec = get_codec(name)
    encoded = codec.encode(update(), SPECS, 0, math.inf)
    assert sum(t.nbytes for t in encoded.tensors.values()) + 64 * 1024 == codec.payload_limit(N)


@pytest.mark.parametrize("name", ["sign", "topk:0.05", "topk:0.1+int8", "topk:0.1+sign"])
def test_error_feedback_conserves_the_sum_of_the_updates(name: str) -> None:
    """Everything sent plus the residual equals the sum of the true updates, in float64."""
    codec, bound = get_codec(name), 1.0
    residual, sent, true = None, np.zeros(N), np.zeros(N)
    for step in range(12):
        value, _ = clip(update(step, 0.05 * (step + 1)), bound)  # later updates reach the bound: the re-clip bites
        fed = encode_with_feedback(codec, value, residual, SPECS, step, bound)
        assert l2_norm(fed.encoded.decoded) <= codec.max_norm(bound, N)
        residual = fed.residual
        sent += flat(fed.encoded.decoded)
        true += flat(value)
    assert residual is not None
    np.testing.assert_allclose(sent + flat(residual), true, rtol=0, atol=1e-12 * np.max(np.abs(true)))


def test_an_unbiased_codec_leaves_the_residual_alone() -> None:
    fed = encode_with_feedback(get_codec("int8"), update(), {s.name: np.ones(s.shape) for s in SPECS}, SPECS, 0, 9.0)
    assert fed.residual is None


def valid(name: str) -> dict[str, np.ndarray]:
    return dict(get_codec(name).encode(update(), SPECS, 3, math.inf).tensors)


def changed(name: str, tensor: str, value: np.ndarray) -> dict[str, np.ndarray]:
    return {**valid(name), tensor: value}


def _with(array: np.ndarray, index: int, value: float) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


BAD = [
    ("int8", lambda: changed("int8", "scales", _with(valid("int8")["scales"], 0, float("nan"))), "NaN or Inf"),
    ("int8", lambda: changed("int8", "scales", _with(valid("int8")["scales"], 1, float("inf"))), "NaN or Inf"),
    ("int8", lambda: changed("int8", "scales", _with(valid("int8")["scales"], 0, -1.0)), "negative scale"),
    ("int8", lambda: changed("int8", "q", _with(valid("int8")["q"], 5, -128)), "beyond"),
    ("int8", lambda: changed("int8", "q", valid("int8")["q"][:-1]), r"expected int8\[490\]"),
    ("int8", lambda: changed("int8", "q", valid("int8")["q"].astype(np.int16)), r"expected int8"),
    ("int8", lambda: {"q": valid("int8")["q"]}, "sends tensors"),
    ("int4", lambda: changed("int4", "q", _with(valid("int4")["q"], 0, 0x80)), "nibble 0"),
    ("sign", lambda: changed("sign", "bits", valid("sign")["bits"][:-1]), r"expected uint8\[62\]"),
    ("sign", lambda: changed("sign", "bits", _with(valid("sign")["bits"], -1, 0xFF)), "padding bits"),
    ("rotated-sign", lambda: changed("rotated-sign", "scales", np.zeros(2, np.float32)), r"expected float32\[1\]"),
    ("rotated-sign", lambda: changed("rotated-sign", "scales", np.array([3e38], np.float32)), "beyond float32"),
    ("int4", lambda: changed("int4", "scales", np.full(2, 3e38, np.float32)), "beyond float32"),
    ("topk:0.1", lambda: changed("topk:0.1", "indices", valid("topk:0.1")["indices"][::-1].copy()), "increasing"),
    ("topk:0.1", lambda: changed("topk:0.1", "indices", _with(valid("topk:0.1")["indices"], 1,
                                                               valid("topk:0.1")["indices"][0])), "increasing"),
    ("topk:0.1", lambda: changed("topk:0.1", "indices", _with(valid("topk:0.1")["indices"], -1, N)),
     f"index {N}; expected indices below {N}"),
    ("topk:0.1", lambda: changed("topk:0.1", "indices", valid("topk:0.1")["indices"][:-1]), r"uint16\[49\]"),
    ("topk:0.1", lambda: changed("topk:0.1", "indices", valid("topk:0.1")["indices"].astype(np.uint32)),
     r"expected uint16\[49\]"),
    ("topk:0.1", lambda: changed("topk:0.1", "values", _with(valid("topk:0.1")["values"], 0, float("nan"))),
     "NaN or Inf"),
    ("topk:0.1+int8", lambda: changed("topk:0.1+int8", "scales", np.array([-0.5], np.float32)), "negative scale"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_a_malformed_payload_is_refused_saying_what_was_wrong(name: str, make: object, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        get_codec(name).decode(make(), SPECS, 3)  # type: ignore[operator]
