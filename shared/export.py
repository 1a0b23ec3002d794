"""Write a data set's simulated owner partitions as image folders, one per owner.

Deployed owners read their images from an ImageFolder tree. This turns the embedded digits (or
any supported data set) into such trees, so that a deployment can be tried without private data.
Images are written as PNG at the job's input size, byte for byte the pixels a simulation uses.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .config import JobConfig
from .data import ImageSet
from .errors import DataError
from .partition import owner_id, partition

logger = logging.getLogger(__name__)


def _write_tree(data: ImageSet, indices: np.ndarray, root: Path) -> None:
    from PIL import Image

    # Only classes the owner has images of get a folder, because an empty class folder is an error when read.
    for index in indices:
        pixels = data.images[int(index)].permute(1, 2, 0).numpy()
        folder = root / data.classes[int(data.labels[index])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{int(index):06d}.png")


def export_partitions(job: JobConfig, out: str | Path) -> dict[str, int]:
    """Write owner ``i``'s training images to ``out/owner-<i>/<class>/`` and the test split to
    ``out/test/<class>/``; return the image count per folder.

    Raises
    ------
    DataError
        ``out`` is not empty, or the data set cannot be partitioned.
    """
    from ..client.owners import backbone_for, datasets_for

    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise DataError(f"output folder {str(root)!r} is not empty; choose a new folder or remove it")
    backbone_for(job)
    train, test = datasets_for(job)
    parts = partition(train.labels, job.partitioner, job.num_owners, job.seed, job.alpha, job.shards_per_owner)

    counts: dict[str, int] = {}
    for index, indices in enumerate(parts):
        _write_tree(train, indices, root / owner_id(index))
        counts[owner_id(index)] = len(indices)
    _write_tree(test, np.arange(len(test)), root / "test")
    counts["test"] = len(test)
    logger.info("wrote %d owner folders and a test folder under %s", job.num_owners, root)
    return counts
