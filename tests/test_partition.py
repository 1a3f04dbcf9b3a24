"""Partitioning a dataset across emulated devices, and loading the datasets to partition."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from device_profiles.datasets import load_dataset, load_device_folder, train_test_split
from device_profiles.partition import (
    PartitionSpec,
    apportion,
    load_partition,
    parse_partition,
    partition,
    save_partition,
    summary,
)
from edge_runtime.data import Dataset
from edge_runtime.errors import DataError

SPECS = ["iid", "dirichlet:0.5", "shards:2", "quantity:1.0"]
LABELS = np.repeat(np.arange(10), 100)  # label-sorted: 10 classes x 100 examples


def _exact(parts: list[np.ndarray], n: int) -> bool:
    return np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def _mean_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    entropies = []
    for p in parts:
        shares = np.bincount(labels[p]) / p.size
        shares = shares[shares > 0]
        entropies.append(float(-(shares * np.log(shares)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize("text", SPECS)
def test_every_partitioner_is_exact_reproducible_and_seeded(text: str) -> None:
    spec = parse_partition(text)
    first = partition(LABELS, 20, spec, seed=3)
    assert len(first) == 20 and _exact(first, LABELS.size)
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in first)
    again = partition(LABELS, 20, spec, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = partition(LABELS, 20, spec, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [p.size for p in partition(LABELS, 7, parse_partition("iid"), seed=0)]
    assert sum(sizes) == 1000 and max(sizes) - min(sizes) <= 1  # 1000 = 6 * 143 + 142


def test_two_shards_give_each_device_at_most_two_labels() -> None:
    parts = partition(LABELS, 50, parse_partition("shards:2"), seed=0)  # 100 shards of 10, one label each
    assert all(p.size == 20 for p in parts)
    assert all(np.unique(LABELS[p]).size <= 2 for p in parts)
    assert _mean_entropy(parts, LABELS) < _mean_entropy(partition(LABELS, 50, parse_partition("iid"), 0), LABELS)


def test_small_dirichlet_alpha_is_far_more_skewed_than_large() -> None:
    skewed = partition(LABELS, 10, parse_partition("dirichlet:0.1"), seed=0)
    even = partition(LABELS, 10, parse_partition("dirichlet:100"), seed=0)
    assert _mean_entropy(even, LABELS) > 0.95 * np.log(10)  # nearly uniform over the 10 labels
    assert _mean_entropy(skewed, LABELS) < 0.5 * _mean_entropy(even, LABELS)


def test_quantity_skew_gives_unequal_sizes_with_iid_labels() -> None:
    parts = partition(LABELS, 10, parse_partition("quantity:1.5"), seed=0)
    sizes = [p.size for p in parts]
    assert max(sizes) > 3 * min(sizes)
    biggest = parts[int(np.argmax(sizes))]
    assert np.unique(LABELS[biggest]).size == 10  # labels are still mixed


@pytest.mark.parametrize("text", ["dirichlet:0.05", "quantity:3", "shards:1"])
def test_min_size_is_respected(text: str) -> None:
    parts = partition(LABELS, 40, parse_partition(text), seed=1, min_size=20)
    assert min(p.size for p in parts) >= 20 and _exact(parts, LABELS.size)


def test_min_size_tops_up_devices_a_raw_dirichlet_draw_leaves_empty() -> None:
    labels = np.zeros(30, dtype=np.int64)  # one class: Dir(0.01) puts nearly all of it on one device
    parts = partition(labels, 5, parse_partition("dirichlet:0.01"), seed=0, min_size=4)
    assert sorted(p.size for p in parts)[:4] == [4, 4, 4, 4] and _exact(parts, 30)


def test_more_devices_than_examples_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot give 11 devices at least 1 example"):
        partition(np.arange(10), 11, parse_partition("iid"), seed=0)
    with pytest.raises(ValueError, match="at least 6 example"):
        partition(np.arange(10), 2, parse_partition("iid"), seed=0, min_size=6)
    with pytest.raises(ValueError, match="shards:2 for 6 devices needs at least 12 examples, got 10"):
        partition(np.arange(10), 6, parse_partition("shards:2"), seed=0)
    assert len(partition(np.arange(10), 11, parse_partition("iid"), seed=0, min_size=0)) == 11


@pytest.mark.parametrize(("text", "problem"), [
    ("dirichlet", "needs a value after ':'"), ("dirichlet:-1", "finite number > 0"), ("shards:0", "whole number >= 1"),
    ("shards:1.5", "whole number >= 1"), ("foo", "unknown kind 'foo'"), ("dirichlet:abc", "could not convert"),
    ("iid:2", "iid takes no value"), ("quantity:nan", "finite number > 0"),
])
def test_bad_specs_say_what_was_wrong_and_list_the_accepted_forms(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="accepted forms: iid, dirichlet:ALPHA") as caught:
        parse_partition(text)
    assert problem in str(caught.value) and repr(text) in str(caught.value)


def test_specs_print_as_they_parse() -> None:
    for text in ["iid", "dirichlet:0.5", "shards:2", "quantity:1.0"]:
        spec = parse_partition(text)
        assert str(spec) == text and parse_partition(str(spec)) == spec
    assert parse_partition("shards:2") == PartitionSpec("shards", 2)


def test_apportion_is_exact_with_largest_remainders() -> None:
    assert apportion(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert apportion(7, np.array([0.5, 0.25, 0.25])).tolist() == [3, 2, 2]  # quotas 3.5, 1.75, 1.75


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    spec = parse_partition("dirichlet:0.3")
    parts = partition(LABELS, 12, spec, seed=9)
    path = tmp_path / "split.npz"
    save_partition(path, parts, spec, seed=9)
    loaded, loaded_spec, seed = load_partition(path)
    assert loaded_spec == spec and seed == 9
    assert all(np.array_equal(a, b) for a, b in zip(parts, loaded, strict=True))
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files)[:2] == ["device-00000", "device-00001"] and "metadata" in archive.files


def test_a_tampered_partition_file_is_refused(tmp_path: Path) -> None:
    spec = parse_partition("iid")
    parts = partition(np.arange(10), 2, spec, seed=0)
    save_partition(tmp_path / "split.npz", [parts[0], np.append(parts[1][1:], parts[0][0])], spec, seed=0)
    with pytest.raises(DataError, match="exactly once"):
        load_partition(tmp_path / "split.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match=r"expected a \.npz written by save_partition"):
        load_partition(tmp_path / "other.npz")


def test_summary_counts_sizes_and_labels() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    report = summary([np.array([0, 1, 3]), np.array([2, 4, 5])], labels)
    assert report == {"devices": 2, "examples": 6, "sizes": [3, 3], "labels": [0, 1, 2],
                      "label_counts": [[2, 0, 1], [0, 1, 2]]}


@pytest.mark.parametrize(("name", "shape"), [("digits", (1797, 8, 8, 1)), ("breast_cancer", (569, 30)),
                                             ("wine", (178, 13))])
def test_bundled_datasets_load_with_their_shapes(name: str, shape: tuple[int, ...]) -> None:
    data = load_dataset(name)
    assert data.x.shape == shape and data.x.dtype == np.float32
    assert data.y.shape == (shape[0],) and data.y.dtype == np.int32


def test_digits_match_the_demo_pixels() -> None:
    from model_export.demo import digits_split

    data = load_dataset("digits")
    train, _ = digits_split()
    assert data.x.max() == 16.0 and train.x.max() == 16.0
    assert {tuple(row) for row in train.x[:20].reshape(20, -1)} <= {tuple(row) for row in data.x.reshape(1797, -1)}


def test_npz_and_csv_files_round_trip(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 1, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with open(tmp_path / "d.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "target", "b", "c"])
        writer.writerows([[r[0], label, r[1], r[2]] for r, label in zip(x.tolist(), y.tolist(), strict=True)])
    for data in (load_dataset(str(tmp_path / "d.npz")), load_dataset(str(tmp_path / "d.csv"), label_column="target")):
        assert np.array_equal(data.x, x) and data.x.dtype == np.float32
        assert np.array_equal(data.y, y) and data.y.dtype == np.int32


def test_a_device_folder_gives_one_dataset_per_file_in_name_order(tmp_path: Path) -> None:
    for i, size in [(2, 5), (0, 3), (1, 4)]:
        np.savez(tmp_path / f"device-{i}.npz", x=np.full((size, 2), i), y=np.zeros(size, dtype=np.int64))
    (tmp_path / "notes.txt").write_text("not data")
    devices = load_device_folder(tmp_path)
    assert [len(d) for d in devices] == [3, 4, 5] and [d.x[0, 0] for d in devices] == [0, 1, 2]
    np.savez(tmp_path / "device-3.npz", x=np.zeros((2, 3)), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match=r"device-3.npz.*expected \(2,\) like device-0.npz"):
        load_device_folder(tmp_path)


def test_unknown_names_missing_files_and_bad_content_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mnist: unknown dataset; expected one of breast_cancer, digits, wine"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)), y=np.array([0, -1, 1]))
    with pytest.raises(DataError, match=r"bad\.npz: label -1 is negative"):
        load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="load_device_folder"):
        load_dataset(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.npz or \.csv files"):
        load_device_folder(tmp_path / "empty")


def test_train_test_split_is_stratified_and_deterministic() -> None:
    data = Dataset(np.arange(100, dtype=np.float32).reshape(100, 1), np.repeat([0, 1], [80, 20]).astype(np.int32))
    train, test = train_test_split(data, 0.25, seed=0)
    assert len(test) == 25 and np.bincount(test.y).tolist() == [20, 5] and np.bincount(train.y).tolist() == [60, 15]
    assert np.array_equal(np.sort(np.concatenate([train.x, test.x]).ravel()), np.arange(100))
    again, _ = train_test_split(data, 0.25, seed=0)
    other, _ = train_test_split(data, 0.25, seed=1)
    assert np.array_equal(again.x, train.x) and not np.array_equal(other.x, train.x)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(data, 1.0, seed=0)
