"""Data loaders and partitioners, including every bad input they must reject or skip."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from lmeraser.shared.data import load_image_folder, load_mnist
from lmeraser.shared.datasets import load_dataset
from lmeraser.shared.errors import DataError
from lmeraser.shared.partition import partition, partition_dirichlet, partition_iid, partition_shards


def _write_images(folder, count, color):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (20, 16), color).save(folder / f"{i}.png")


def test_image_folder_loads_classes(tmp_path) -> None:
    _write_images(tmp_path / "cat", 3, (255, 0, 0))
    _write_images(tmp_path / "dog", 2, (0, 0, 255))
    data = load_image_folder(tmp_path, 24)
    assert data.classes == ["cat", "dog"]
    assert data.images.shape == (5, 3, 24, 24)
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert int(data.images[0, 0].float().mean()) == 255


def test_corrupt_and_non_image_files_skipped(tmp_path, caplog) -> None:
    _write_images(tmp_path / "cat", 2, (255, 0, 0))
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, 16)
    assert len(data) == 2
    assert sorted(data.skipped) == ["cat/broken.jpg", "cat/notes.txt"]
    assert "skipped 2 unreadable or non-image files" in caplog.text


def test_missing_folder_rejected(tmp_path) -> None:
    with pytest.raises(DataError, match="image folder .*absent.* not found"):
        load_image_folder(tmp_path / "absent", 16)


def test_empty_folder_rejected(tmp_path) -> None:
    with pytest.raises(DataError, match="has no class folders"):
        load_image_folder(tmp_path, 16)


def test_class_folder_without_images_rejected(tmp_path) -> None:
    _write_images(tmp_path / "cat", 2, (255, 0, 0))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="class folder .*dog.* has no readable images"):
        load_image_folder(tmp_path, 16)


def test_unknown_dataset_rejected() -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", 32)


def test_digits_split_is_stratified() -> None:
    train, test = load_dataset("digits", 16, 0.3, 0)
    assert (len(train), len(test)) == (1257, 540)
    assert set(np.unique(test.labels)) == set(range(10))


def _write_idx(path, magic, array):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_round_trip(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (12, 28, 28))
    labels = np.arange(12) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, labels)
    data = load_mnist(tmp_path, 28, "t10k")
    assert data.images.shape == (12, 3, 28, 28)
    assert data.labels.tolist() == labels.tolist()
    assert np.array_equal(data.images[:, 0].numpy(), images)


def test_mnist_wrong_magic_rejected(tmp_path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 9999, np.zeros((2, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, np.zeros(2))
    with pytest.raises(DataError, match="magic number 2051"):
        load_mnist(tmp_path, 28, "t10k")


def test_real_mnist_test_set(data_dir) -> None:
    data = load_mnist(data_dir / "mnist", 28, "t10k")
    assert data.images.shape == (10000, 3, 28, 28)
    assert np.bincount(data.labels).min() > 800


def test_real_cifar_folder(data_dir) -> None:
    train, test = load_dataset(f"folder:{data_dir / 'cifar10-jpeg'}", 32, max_per_class=20)
    assert train.classes[0] == "airplane"
    assert (len(train), len(test)) == (200, 200)


# ----------------------------------------------------------------------------- partitions

LABELS = np.repeat(np.arange(10), 30)


def test_iid_partition_covers_every_sample() -> None:
    parts = partition_iid(LABELS, 7, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_partitions_are_seeded() -> None:
    for method in ("iid", "dirichlet", "shards"):
        first = partition(LABELS, method, 5, seed=3)
        again = partition(LABELS, method, 5, seed=3)
        other = partition(LABELS, method, 5, seed=4)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_dirichlet_skews_labels() -> None:
    parts = partition_dirichlet(LABELS, 5, alpha=0.1, seed=0)
    dominant = [np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(dominant) > 0.4


def test_shards_give_few_labels() -> None:
    parts = partition_shards(LABELS, 10, shards_per_owner=2, seed=0)
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 4


def test_more_owners_than_samples_rejected() -> None:
    with pytest.raises(DataError, match="num-owners=400 exceeds the 300 training samples"):
        partition_iid(LABELS, 400, seed=0)


def test_owner_with_zero_samples_rejected() -> None:
    with pytest.raises(DataError, match="fewer than 1 samples"):
        partition_dirichlet(np.repeat(np.arange(2), 3), 6, alpha=0.01, seed=0, max_attempts=3)
