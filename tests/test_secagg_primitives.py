"""Secure aggregation's building blocks: Shamir sharing, key agreement and sealing, masks, the graph, quantization.

Properties are checked, not just calls: shares rebuild the secret from exactly the threshold and refuse fewer,
pairwise masks cancel exactly in the integers, the mask stream matches its written specification byte for byte,
the graph is symmetric and k-regular, and quantization is unbiased and sums back. Every refusal is checked for
``SecAggError`` and its stable ``reason``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.secagg import REASONS, SecAggError
from edge_runtime.secagg.crypto import KeyPair, agree, context, load_public_key, open_sealed, seal
from edge_runtime.secagg.graph import degree_for, neighbours, ring_order, share_coordinates, threshold_for
from edge_runtime.secagg.masks import add_mod, dtype_for, expand, new_seed, sub_mod
from edge_runtime.secagg.quantize import check_no_wrap, dequantize_sum, headroom_bits, quantize
from edge_runtime.secagg.shamir import PRIME, SHARE_BYTES, combine, split

SECRET = bytes(range(1, 33))
SEED = hashlib.sha256(b"test seed").digest()


@contextmanager
def refused(reason: str) -> Iterator[None]:
    assert reason in REASONS
    with pytest.raises(SecAggError) as caught:
        yield
    assert caught.value.reason == reason, caught.value
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, EdgeRuntimeError)


# --- Shamir ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
def test_every_threshold_subset_rebuilds_the_secret(threshold: int) -> None:
    shares = split(SECRET, threshold, [1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares, threshold):
        assert combine({x: shares[x] for x in subset}, threshold) == SECRET


def test_random_subsets_of_a_large_sharing_rebuild_the_secret() -> None:
    rng = np.random.default_rng(1)
    xs = [int(x) for x in rng.choice(np.arange(1, 2**16 + 1), 60, replace=False)]
    shares = split(SECRET, 31, xs)
    for _ in range(10):
        subset = rng.choice(xs, int(rng.integers(31, 61)), replace=False)
        assert combine({int(x): shares[int(x)] for x in subset}, 31) == SECRET


def test_shares_lie_on_a_polynomial_of_the_threshold_degree() -> None:
    constant = split(SECRET, 1, [1, 2, 3])
    assert set(constant.values()) == {SECRET.rjust(SHARE_BYTES, b"\0")}  # degree 0: every share is the secret
    line = {x: int.from_bytes(share, "big") for x, share in split(SECRET, 2, [1, 2, 3]).items()}
    assert (line[2] - line[1]) % PRIME == (line[3] - line[2]) % PRIME  # degree 1: equal steps
    assert (2 * line[1] - line[2]) % PRIME == int.from_bytes(SECRET, "big")  # and f(0) is the secret


def test_below_the_threshold_is_refused() -> None:
    shares = split(SECRET, 4, [1, 2, 3, 4, 5, 6])
    with refused("too_few_shares"):
        combine({x: shares[x] for x in (1, 2, 3)}, 4)


def test_a_forged_share_does_not_yield_the_secret() -> None:
    shares = split(SECRET, 3, [1, 2, 3, 4])
    y3 = int.from_bytes(shares[3], "big")
    shifted = {1: shares[1], 2: shares[2], 3: (y3 ^ 1).to_bytes(SHARE_BYTES, "big")}
    # At x = 1, 2, 3 the Lagrange weight of x = 3 at 0 is 1·2 / ((1-3)(2-3)) = 1: the secret moves by the change.
    change = (y3 ^ 1) - y3
    assert combine(shifted, 3) == (int.from_bytes(SECRET, "big") + change).to_bytes(32, "big") != SECRET
    random_share = int.from_bytes(hashlib.sha512(b"forged").digest(), "big") % PRIME
    with refused("bad_share"):  # a random forgery interpolates to a value far beyond 32 bytes
        combine({1: shares[1], 2: shares[2], 4: random_share.to_bytes(SHARE_BYTES, "big")}, 3)
    other = split(bytes(32), 3, [1, 2, 3, 4])
    with refused("bad_share"):
        combine({1: shares[1], 2: shares[2], 4: other[4]}, 3)


def test_two_splits_of_one_secret_differ() -> None:
    first, second = split(SECRET, 3, [1, 2, 3]), split(SECRET, 3, [1, 2, 3])
    assert all(first[x] != second[x] for x in (1, 2, 3))
    assert combine(first, 3) == combine(second, 3) == SECRET


def test_malformed_shares_and_parameters_are_refused() -> None:
    shares = split(SECRET, 2, [1, 2, 3])
    with refused("bad_share"):
        combine({1: shares[1], 2: shares[2][1:]}, 2)
    with refused("bad_share"):
        combine({1: shares[1], 2: PRIME.to_bytes(SHARE_BYTES, "big")}, 2)
    with refused("bad_x"):
        combine({0: shares[1], 2: shares[2]}, 2)
    with refused("bad_x"):
        combine({1: shares[1], 2**16 + 1: shares[2]}, 2)
    with refused("bad_threshold"):
        combine(shares, 0)
    with refused("bad_secret"):
        split(SECRET[:31], 2, [1, 2, 3])
    with refused("bad_threshold"):
        split(SECRET, 4, [1, 2, 3])
    with refused("bad_x"):
        split(SECRET, 2, [1, 2, 2])
    with refused("bad_x"):
        split(SECRET, 1, [0])


# --- Key agreement and sealing --------------------------------------------------------------------------------


def test_both_sides_agree_and_a_wrong_peer_or_context_does_not() -> None:
    alice, bob, carol = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    info = context("mask", "federation-a", 7)
    key = agree(alice, bob.public_bytes(), info)
    assert len(key) == 32
    assert key == agree(bob, alice.public_bytes(), info) == agree(alice.private_bytes(), bob.public_bytes(), info)
    assert key != agree(alice, carol.public_bytes(), info)
    assert key != agree(alice, bob.public_bytes(), context("mask", "federation-a", 8))


def test_a_private_key_rebuilt_from_shares_derives_the_same_keys() -> None:
    alice, bob = KeyPair.generate(), KeyPair.generate()
    shares = split(alice.private_bytes(), 2, [4, 9, 11])
    rebuilt = KeyPair.from_private_bytes(combine({4: shares[4], 11: shares[11]}, 2))
    assert rebuilt.public_bytes() == alice.public_bytes()
    assert agree(rebuilt, bob.public_bytes(), b"x") == agree(bob, alice.public_bytes(), b"x")


def test_context_fields_are_unambiguous() -> None:
    assert context("ab", "c") == b"\x00\x02ab\x00\x01c"
    assert context("a", "bc") != context("ab", "c")


def test_bad_public_keys_are_refused() -> None:
    alice = KeyPair.generate()
    with refused("bad_public_key"):
        load_public_key(alice.public_bytes()[:31])
    with refused("bad_public_key"):
        agree(alice, alice.public_bytes()[:31], b"")
    for low_order in (0, 1):  # points of order 2 and 4: the shared secret would be all zeros
        with refused("bad_public_key"):
            agree(alice, low_order.to_bytes(32, "little"), b"")
    with refused("bad_public_key"):
        agree(alice, alice.public_bytes(), b"")
    with refused("bad_private_key"):
        KeyPair.from_private_bytes(bytes(33))


def test_seal_round_trip_and_fresh_nonces() -> None:
    key, aad = bytes(range(32)), context("share", "dev-1", "dev-2", 3)
    blob = seal(key, b"a share", aad)
    assert len(blob) == 12 + len(b"a share") + 16
    assert open_sealed(key, blob, aad) == b"a share"
    assert seal(key, b"a share", aad) != blob


def test_tampering_a_wrong_key_or_a_wrong_context_fail_authentication() -> None:
    key, aad = bytes(range(32)), b"round 3"
    blob = seal(key, b"a share", aad)
    for position in (0, 12, len(blob) - 1):  # nonce, ciphertext, tag
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with refused("auth_failed"):
            open_sealed(key, bytes(tampered), aad)
    with refused("auth_failed"):
        open_sealed(bytes(32), blob, aad)
    with refused("auth_failed"):
        open_sealed(key, blob, b"round 4")
    with refused("bad_ciphertext"):
        open_sealed(key, blob[:27], aad)
    with refused("bad_key"):
        seal(key[:16], b"a share", aad)


# --- Masks ----------------------------------------------------------------------------------------------------


def _aes_ctr_reference(seed: bytes, blocks: int) -> bytes:
    """The documented stream, built block by block: AES-256(seed) of counter blocks 0, 1, ... (big-endian)."""
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    return b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(blocks))


@pytest.mark.parametrize("bits", [1, 12, 32, 33, 62])
def test_expand_matches_its_written_specification(bits: int) -> None:
    width = 4 if bits <= 32 else 8
    stream = _aes_ctr_reference(SEED, 9 * width // 16 + 1)
    expected = [int.from_bytes(stream[width * i:width * (i + 1)], "little") % 2**bits for i in range(9)]
    values = expand(SEED, 9, bits)
    assert values.dtype == (np.uint32 if bits <= 32 else np.uint64)
    assert values.tolist() == expected


def test_expand_is_deterministic_and_seed_dependent() -> None:
    assert np.array_equal(expand(SEED, 1000, 32), expand(SEED, 1000, 32))
    assert np.array_equal(expand(SEED, 10, 32), expand(SEED, 1000, 32)[:10])
    other = expand(hashlib.sha256(b"other").digest(), 1000, 32)
    assert np.count_nonzero(other == expand(SEED, 1000, 32)) < 5
    assert expand(SEED, 0, 20).size == 0


def test_expand_is_uniform_mod_2_to_the_bits() -> None:
    values = expand(SEED, 2**18, 8)
    counts = np.bincount(values, minlength=256)
    expected = values.size / 256
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert 255 - 6 * np.sqrt(2 * 255) < chi2 < 255 + 6 * np.sqrt(2 * 255)  # 255 degrees of freedom, 6 sigma
    wide = expand(SEED, 2**16, 62)
    ones = np.array([np.count_nonzero((wide >> np.uint64(bit)) & np.uint64(1)) for bit in range(64)])
    assert np.all(ones[62:] == 0)
    assert np.all(np.abs(ones[:62] - wide.size / 2) < 5 * np.sqrt(wide.size / 4))


def test_modular_add_and_subtract_wrap() -> None:
    a, b = np.array([15, 8, 3], np.uint32), np.array([1, 9, 5], np.uint32)
    assert add_mod(a, b, 4).tolist() == [0, 1, 8]
    assert sub_mod(a, b, 4).tolist() == [14, 15, 14]
    big = np.array([2**62 - 1], np.uint64)
    assert add_mod(big, np.array([2], np.uint64), 62).tolist() == [1]
    assert sub_mod(np.array([0], np.uint64), np.array([1], np.uint64), 62).tolist() == [2**62 - 1]


def test_mask_inputs_are_refused() -> None:
    with refused("bad_seed"):
        expand(SEED[:31], 10, 32)
    with refused("bad_modulus"):
        expand(SEED, 10, 63)
    with refused("bad_modulus"):
        expand(SEED, 10, 0)
    with refused("bad_length"):
        expand(SEED, -1, 32)
    with refused("bad_modulus"):
        add_mod(np.zeros(3, np.uint64), np.zeros(3, np.uint64), 32)
    with refused("bad_length"):
        sub_mod(np.zeros(3, np.uint32), np.zeros(4, np.uint32), 32)


@pytest.mark.parametrize("bits", [20, 32, 62])
def test_pairwise_masks_cancel_exactly(bits: int) -> None:
    rng = np.random.default_rng(bits)
    n, length, info = 6, 1000, context("mask", "federation-a", 3)
    keys = [KeyPair.generate() for _ in range(n)]
    self_seeds = [new_seed() for _ in range(n)]
    q = [rng.integers(0, 2**bits, length, dtype=np.uint64).astype(dtype_for(bits)) for _ in range(n)]
    total = np.zeros(length, dtype_for(bits))
    for i in range(n):
        masked = add_mod(q[i], expand(self_seeds[i], length, bits), bits)
        for j in range(n):
            if j != i:
                seed = agree(keys[i], keys[j].public_bytes(), info)
                assert seed == agree(keys[j], keys[i].public_bytes(), info)
                step = add_mod if j > i else sub_mod
                masked = step(masked, expand(seed, length, bits), bits)
        total = add_mod(total, masked, bits)
    expected = _exact_sum(q, bits)
    assert not np.array_equal(total, expected)  # the self masks are still on
    for seed in self_seeds:
        total = sub_mod(total, expand(seed, length, bits), bits)
    assert np.array_equal(total, expected)


def _exact_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    """The sum mod 2**bits in Python integers, independent of the code under test."""
    sums = [sum(int(v[c]) for v in vectors) % 2**bits for c in range(vectors[0].size)]
    return np.array(sums, dtype_for(bits))


def test_secagg_plus_unmasks_the_survivors_sum_after_a_drop_out() -> None:
    bits, length, info = 24, 300, context("mask", "federation-a", 5)
    devices = [f"dev-{i:02d}" for i in range(12)]
    graph = neighbours(devices, degree_for(len(devices)), SEED)
    xs = share_coordinates(devices)
    threshold = threshold_for(degree_for(len(devices)), dropout=0.25)
    rng = np.random.default_rng(5)
    keys = {d: KeyPair.generate() for d in devices}
    self_seeds = {d: new_seed() for d in devices}
    key_shares = {d: split(keys[d].private_bytes(), threshold, [xs[h] for h in graph[d]]) for d in devices}
    seed_shares = {d: split(self_seeds[d], threshold, [xs[h] for h in graph[d]]) for d in devices}
    q = {d: rng.integers(0, 2**bits, length, dtype=np.uint32) for d in devices}

    def pair_mask(own: KeyPair, peer: str) -> np.ndarray:
        return expand(agree(own, keys[peer].public_bytes(), info), length, bits)

    def masked(d: str) -> np.ndarray:
        y = add_mod(q[d], expand(self_seeds[d], length, bits), bits)
        for peer in graph[d]:
            y = (add_mod if d < peer else sub_mod)(y, pair_mask(keys[d], peer), bits)
        return y

    dropped = devices[3]
    survivors = [d for d in devices if d != dropped]
    total = np.zeros(length, np.uint32)
    for d in survivors:
        total = add_mod(total, masked(d), bits)
    for d in survivors:  # each self seed from the shares of its surviving neighbours
        holders = [xs[h] for h in graph[d] if h != dropped]
        seed = combine({x: seed_shares[d][x] for x in holders}, threshold)
        total = sub_mod(total, expand(seed, length, bits), bits)
    rebuilt = KeyPair.from_private_bytes(combine({xs[h]: key_shares[dropped][xs[h]] for h in graph[dropped]},
                                                 threshold))
    for peer in graph[dropped]:  # undo what each surviving neighbour added or took for the dropped device
        total = (sub_mod if peer < dropped else add_mod)(total, pair_mask(rebuilt, peer), bits)
    assert np.array_equal(total, _exact_sum([q[d] for d in survivors], bits))


# --- Graph ----------------------------------------------------------------------------------------------------


def test_degree_grows_with_log_n_and_is_complete_for_small_n() -> None:
    expected = {2: 1, 3: 2, 4: 3, 5: 4, 7: 6, 8: 7, 9: 8, 16: 15, 17: 16, 100: 16, 1000: 20, 100_000: 34}
    assert {n: degree_for(n) for n in expected} == expected
    with refused("bad_devices"):
        degree_for(1)


def test_degree_keeps_a_majority_of_neighbours_at_the_planned_dropout() -> None:
    # the binomial tail the degree is chosen by, checked against a simulation of 20,000 neighbourhoods
    rng = np.random.default_rng(0)
    for dropout in (0.1, 0.2, 0.3):
        k = degree_for(1000, dropout)
        survivors = rng.binomial(k, 1 - dropout, 20_000)
        assert np.mean(survivors < k // 2 + 1) <= 5e-4
        if dropout > 0.1:  # above the logarithmic floor (20 at 1,000), a smaller even degree would not do
            smaller = k - 2
            assert np.mean(rng.binomial(smaller, 1 - dropout, 400_000) < smaller // 2 + 1) > 5e-5
    assert degree_for(1000, 0.3) == 84 and degree_for(1000, 0.05) == 20
    with refused("dropout_too_high"):
        degree_for(100, 0.5)


@pytest.mark.parametrize("n", [2, 3, 4, 7, 8, 10, 100, 257])
def test_graph_is_symmetric_regular_and_connected(n: int) -> None:
    devices = [f"device-{i}" for i in range(n)]
    k = degree_for(n)
    graph = neighbours(devices, k, SEED)
    assert sorted(graph) == sorted(devices)
    for device, near in graph.items():
        assert len(near) == len(set(near)) == k and device not in near
        assert all(device in graph[peer] for peer in near)
    reached, frontier = {devices[0]}, {devices[0]}
    while frontier:
        frontier = {peer for d in frontier for peer in graph[d]} - reached
        reached |= frontier
    assert reached == set(devices)


def test_graph_is_a_harary_ring_in_the_seeded_hash_order() -> None:
    devices = [f"device-{i}" for i in range(30)]
    ring = sorted(devices, key=lambda d: hashlib.sha256(SEED + d.encode()).digest())
    assert ring_order(devices, SEED) == ring
    graph = neighbours(devices, 6, SEED)
    for position, device in enumerate(ring):
        assert set(graph[device]) == {ring[(position + step) % 30] for step in (-3, -2, -1, 1, 2, 3)}


def test_graph_is_deterministic_order_independent_and_seed_dependent() -> None:
    devices = [f"device-{i}" for i in range(100)]
    graph = neighbours(devices, degree_for(100), SEED)
    shuffled = list(np.random.default_rng(0).permutation(devices))
    assert neighbours([str(d) for d in shuffled], degree_for(100), SEED) == graph
    other = neighbours(devices, degree_for(100), hashlib.sha256(b"another round").digest())
    assert other != graph
    assert sum(set(graph[d]) != set(other[d]) for d in devices) > 90


def test_small_rounds_form_the_complete_graph() -> None:
    devices = ["c", "a", "d", "b"]
    assert neighbours(devices, degree_for(4), SEED) == {
        "a": ("b", "c", "d"), "b": ("a", "c", "d"), "c": ("a", "b", "d"), "d": ("a", "b", "c"),
    }


def test_share_coordinates_are_positions_in_sorted_order() -> None:
    assert share_coordinates(["b", "c", "a"]) == {"a": 1, "b": 2, "c": 3}


def test_bad_device_lists_and_degrees_are_refused() -> None:
    with refused("bad_devices"):
        neighbours(["a", "b", "a"], 2, SEED)
    with refused("bad_devices"):
        neighbours(["a"], 1, SEED)
    with refused("bad_devices"):
        neighbours(["a", ""], 1, SEED)
    with refused("bad_devices"):
        neighbours(["a", "\ud800"], 1, SEED)  # a lone surrogate has no UTF-8 form
    with refused("bad_devices"):
        share_coordinates("ab")
    with refused("bad_degree"):
        neighbours([f"d{i}" for i in range(10)], 3, SEED)  # odd and not n - 1
    with refused("bad_degree"):
        neighbours([f"d{i}" for i in range(10)], 10, SEED)
    with refused("bad_seed"):
        neighbours(["a", "b"], 1, SEED[:16])


def test_threshold_is_a_majority_that_the_expected_drop_out_leaves() -> None:
    assert threshold_for(14, 0.3) == 8
    assert threshold_for(14, 6 / 14) == 8  # exactly 8 of 14 survive
    assert threshold_for(20, 0.3) == 11
    assert threshold_for(1, 0.0) == 1
    assert threshold_for(14, 0.1, corrupt=0.1) == 9  # 2 colluders: (14 + 2) // 2 + 1
    with refused("dropout_too_high"):
        threshold_for(14, 0.43)  # 7.98 of 14 survive, below 8
    with refused("dropout_too_high"):
        threshold_for(2, 0.1)
    with refused("bad_value"):
        threshold_for(14, 1.0)
    with refused("bad_value"):
        threshold_for(14, -0.1)
    with refused("bad_degree"):
        threshold_for(0, 0.1)


# --- Quantization ---------------------------------------------------------------------------------------------


def test_headroom_and_the_no_wrap_boundary() -> None:
    assert [headroom_bits(c) for c in (1, 2, 3, 4, 5, 100, 1024, 1025)] == [0, 1, 2, 2, 3, 7, 10, 11]
    check_no_wrap(65537, 16, 32)  # 65537 * 65535 = 2**32 - 1
    with refused("would_wrap"):
        check_no_wrap(65538, 16, 32)
    check_no_wrap(2**32 - 1, 1, 32)
    with refused("would_wrap"):
        check_no_wrap(2**32, 1, 32)  # a sum that reaches 2**32 exactly wraps to 0
    with refused("would_wrap"):
        check_no_wrap(3, 31, 32)
    with refused("bad_value"):
        headroom_bits(0)


def test_quantize_grid_points_exactly_and_clamps() -> None:
    x = np.array([-1.5, -0.5, 0.5, 1.5, 7.0, -9.0], np.float32)  # clip 1.5, 2 bits: levels 0..3, step 1
    q = quantize(x, 1.5, 2, 32, np.random.default_rng(0))
    assert q.dtype == np.uint32 and q.tolist() == [0, 1, 2, 3, 3, 0]
    assert quantize(x, 1.5, 2, 40, np.random.default_rng(0)).dtype == np.uint64
    assert dequantize_sum(q, 1, 1.5, 2, 32).tolist() == [-1.5, -0.5, 0.5, 1.5, 1.5, -1.5]


def test_the_sum_of_quantized_vectors_dequantizes_to_the_float_sum() -> None:
    rng = np.random.default_rng(7)
    count, clip, bits = 20, 0.5, 16
    vectors = [rng.uniform(-0.6, 0.6, 5000).astype(np.float32) for _ in range(count)]
    total = np.zeros(5000, np.uint32)
    for x in vectors:
        total = add_mod(total, quantize(x, clip, bits, 32, rng), 32)
    step = 2 * clip / (2**bits - 1)
    exact = np.sum([np.clip(x.astype(np.float64), -clip, clip) for x in vectors], axis=0)
    error = np.abs(dequantize_sum(total, count, clip, bits, 32) - exact)
    assert np.max(error) < count * step
    assert np.max(error) > step / 10  # stochastic rounding does not land on the exact sum


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(11)
    clip, bits, value = 1.0, 4, 0.123  # a coarse grid: step 2/15, so rounding bias would show
    decoded = dequantize_sum(quantize(np.full(200_000, value, np.float32), clip, bits, 32, rng), 1, clip, bits, 32)
    standard_error = decoded.std() / np.sqrt(decoded.size)
    assert standard_error > 0
    assert abs(decoded.mean() - float(np.float32(value))) < 5 * standard_error


def test_quantization_inputs_are_refused() -> None:
    rng = np.random.default_rng(0)
    with refused("bad_value"):
        quantize(np.array([0.0, np.nan], np.float32), 1.0, 16, 32, rng)
    with refused("bad_value"):
        quantize(np.zeros(3, np.float32), 0.0, 16, 32, rng)
    with refused("bad_value"):
        quantize(np.zeros(3, np.int32), 1.0, 16, 32, rng)
    with refused("bad_modulus"):
        quantize(np.zeros(3, np.float32), 1.0, 33, 32, rng)
    with refused("bad_modulus"):
        dequantize_sum(np.zeros(3, np.uint64), 2, 1.0, 16, 32)
    with refused("bad_value"):
        dequantize_sum(np.array([3 * 65535], np.uint32), 2, 1.0, 16, 32)  # above count x levels
    with refused("would_wrap"):
        dequantize_sum(np.zeros(3, np.uint32), 70_000, 1.0, 16, 32)
