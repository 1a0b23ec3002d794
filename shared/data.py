"""Image data sets: scikit-learn digits, ImageFolder trees and MNIST IDX files.

Every loader returns images resized to one square input size as uint8 tensors, so a data set
costs a quarter of its float size in memory and is normalised batch by batch.

Unreadable files inside an ImageFolder tree (corrupt JPEGs, stray text files) are skipped with a
warning and counted in :attr:`ImageSet.skipped`. A tree with no readable image in some class
folder is rejected, because a class without samples cannot be learnt or evaluated.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclasses.dataclass
class ImageSet:
    """Images with labels.

    Attributes
    ----------
    images : torch.Tensor
        uint8, shape (N, 3, S, S).
    labels : np.ndarray
        int64 class indices, shape (N,).
    classes : list of str
        Class names; ``labels`` index into it.
    sample_ids : list of str
        A stable name per image (file path relative to the data root, or ``digits/123``).
    skipped : list of str
        Files that could not be read and were left out.
    """

    images: torch.Tensor
    labels: np.ndarray
    classes: list[str]
    sample_ids: list[str]
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        """Return the images at ``indices``, keeping the class list."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            images=self.images[torch.from_numpy(indices)],
            labels=self.labels[indices],
            classes=self.classes,
            sample_ids=[self.sample_ids[i] for i in indices],
        )


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Convert uint8 images (N, 3, S, S) to float, scaled to [0, 1] then normalised per channel."""
    scaled = images.float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return scaled.sub_(mean_t).div_(std_t)


def _resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images (N, C, H, W) in [0, 1] bilinearly and return uint8 RGB (N, 3, S, S)."""
    if batch.shape[-1] != size or batch.shape[-2] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=batch.shape[-1] > size)
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    return batch.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).contiguous()


# ---------------------------------------------------------------------------- digits


def load_digits(size: int) -> ImageSet:
    """Load scikit-learn's 1,797 handwritten digits (8x8, values 0..16), upsampled bilinearly."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = torch.cat([_resize(pixels[i:i + 512], size) for i in range(0, len(pixels), 512)])
    labels = bunch.target.astype(np.int64)
    return ImageSet(images, labels, [str(c) for c in range(10)], [f"digits/{i}" for i in range(len(labels))])


# ---------------------------------------------------------------------------- folders


def _read_image(path: Path | BinaryIO, size: int) -> torch.Tensor | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return _resize(torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0), size)[0]


def load_image_folder(root: str | Path, size: int, classes: list[str] | None = None,
                      allow_missing: bool = False) -> ImageSet:
    """Load an ImageFolder tree (``root/<class>/<image>``) resized to ``size`` pixels.

    Parameters
    ----------
    root : path
        Folder with one sub-folder per class.
    size : int
        Side of the square output images, in pixels.
    classes : list of str, optional
        Class names to index labels by (a test tree must use the training tree's list).
    allow_missing : bool, default False
        Accept a tree that lacks some of ``classes`` (a deployed owner need not hold every
        class); a folder not in ``classes`` is still an error.

    Raises
    ------
    DataError
        The folder is missing, has no class folders, a class folder has no readable image,
        or its classes differ from ``classes``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} not found; pass an existing ImageFolder tree "
                        f"(one sub-folder of images per class)")
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not found:
        raise DataError(f"image folder {str(root)!r} has no class folders; put each class's images "
                        f"in a sub-folder named after the class")
    if classes is not None and allow_missing:
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise DataError(f"image folder {str(root)!r} has class folders {unknown} that are not among the "
                            f"federation's classes {classes}; remove them or add them to the job's classes")
    elif classes is not None and found != classes:
        raise DataError(f"image folder {str(root)!r} has classes {found} but the training data has "
                        f"{classes}; both trees must hold the same class folders")
    else:
        classes = found

    images, labels, sample_ids, skipped = [], [], [], []
    for label, name in enumerate(classes):
        if name not in found:
            continue
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        readable = 0
        for path in files:
            image = _read_image(path, size) if path.suffix.lower() in IMAGE_SUFFIXES else None
            relative = str(path.relative_to(root))
            if image is None:
                skipped.append(relative)
                continue
            images.append(image)
            labels.append(label)
            sample_ids.append(relative)
            readable += 1
        if readable == 0:
            raise DataError(f"class folder {str(root / name)!r} has no readable images; add images "
                            f"or remove the folder")

    if skipped:
        logger.warning("skipped %d unreadable or non-image files under %s (first: %s)",
                       len(skipped), root, skipped[0])
    return ImageSet(torch.stack(images), np.asarray(labels, dtype=np.int64), classes, sample_ids, skipped)


# ---------------------------------------------------------------------------- MNIST


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataError(f"cannot read IDX file {str(path)!r}: {error}") from error
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != magic:
        raise DataError(f"{str(path)!r} is not an IDX file with magic number {magic}")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"IDX file {str(path)!r} is truncated: expected {int(np.prod(shape))} values, "
                        f"found {body.size}")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def load_mnist(root: str | Path, size: int, split: str) -> ImageSet | None:
    """Load an MNIST split (``train`` or ``t10k``) from IDX files; ``None`` if the split is absent."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"MNIST folder {str(root)!r} not found; pass the folder holding the IDX files")
    images_path = _find_idx(root, f"{split}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{split}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        return None
    pixels = _read_idx(images_path, 2051)
    labels = _read_idx(labels_path, 2049).astype(np.int64)
    if len(pixels) != len(labels):
        raise DataError(f"{images_path.name} contains {len(pixels)} images but {labels_path.name} "
                        f"{len(labels)} labels")
    floats = torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(1)
    images = torch.cat([_resize(floats[i:i + 1024], size) for i in range(0, len(floats), 1024)])
    ids = [f"mnist/{split}/{i}" for i in range(len(labels))]
    return ImageSet(images, labels, [str(c) for c in range(10)], ids)
