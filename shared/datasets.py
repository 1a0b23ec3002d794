"""Resolve a data set name (``digits``, ``folder:PATH``, ``mnist:PATH``) into train and test splits."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from .data import ImageSet, load_digits, load_image_folder, load_mnist
from .errors import DataError

logger = logging.getLogger(__name__)


def _stratified_split(data: ImageSet, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(data))
    counts = np.bincount(data.labels)
    stratify = data.labels if counts[counts > 0].min() >= 2 else None
    try:
        train, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=stratify)
    except ValueError as error:
        raise DataError(f"cannot hold out test-fraction={test_fraction} of {len(data)} images: {error}") from error
    train_set, test_set = data.subset(np.sort(train)), data.subset(np.sort(test))
    train_set.skipped = data.skipped
    return train_set, test_set


def _cap_per_class(data: ImageSet, max_per_class: int) -> ImageSet:
    if max_per_class <= 0:
        return data
    keep = np.concatenate([np.flatnonzero(data.labels == c)[:max_per_class] for c in range(len(data.classes))])
    capped = data.subset(np.sort(keep))
    capped.skipped = data.skipped
    return capped


@functools.lru_cache(maxsize=4)
def load_dataset(spec: str, size: int, test_fraction: float = 0.3, seed: int = 0,
                 max_per_class: int = 0) -> tuple[ImageSet, ImageSet]:
    """Load a data set and return ``(train, test)`` with images of ``size`` pixels.

    Parameters
    ----------
    spec : str
        ``digits`` is scikit-learn's digits, split by ``test_fraction``. ``folder:PATH`` is an
        ImageFolder tree split the same way, or a folder containing ``train/`` and ``test/``
        trees. ``mnist:PATH`` is a folder of IDX files: the ``train-*`` split trains when
        present, and otherwise ``t10k-*`` is split.
    size : int
        Side of the square images, in pixels.
    test_fraction : float, default 0.3
        Held-out share when the data set has no test split of its own (stratified, seeded).
    seed : int, default 0
        Seed of that split.
    max_per_class : int, default 0
        Keep at most this many images per class in each split (the first in file order); 0 keeps all.

    Raises
    ------
    DataError
        Unknown spec, missing folder or files, or unusable images.
    """
    kind, _, argument = spec.partition(":")
    if kind == "digits" and not argument:
        train, test = _stratified_split(load_digits(size), test_fraction, seed)
    elif kind == "folder" and argument:
        root = Path(argument).expanduser()
        if (root / "train").is_dir() and (root / "test").is_dir():
            train = load_image_folder(root / "train", size)
            test = load_image_folder(root / "test", size, classes=train.classes)
        else:
            train, test = _stratified_split(load_image_folder(root, size), test_fraction, seed)
    elif kind == "mnist" and argument:
        root = Path(argument).expanduser()
        train = load_mnist(root, size, "train")
        test = load_mnist(root, size, "t10k")
        if test is None and train is None:
            raise DataError(f"no MNIST IDX files in {str(root)!r}; expected t10k-images-idx3-ubyte[.gz] "
                            f"and t10k-labels-idx1-ubyte[.gz]")
        if train is None or test is None:
            train, test = _stratified_split(train or test, test_fraction, seed)
    else:
        raise DataError(f"unknown dataset {spec!r}; use 'digits', 'folder:PATH' or 'mnist:PATH'")

    train, test = _cap_per_class(train, max_per_class), _cap_per_class(test, max_per_class)
    logger.info("dataset %s: %d train / %d test images, %d classes, %dpx", spec, len(train), len(test),
                len(train.classes), size)
    return train, test
