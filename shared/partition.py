"""Seeded partitioners that split a training set among simulated data owners.

Each returns one sorted index array per owner. Owner ``i`` is named :func:`owner_id` ``(i)``;
sorted owner ids are the canonical order everywhere else in the system.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError


def owner_id(index: int) -> str:
    """Return the owner id of partition ``index`` (``owner-007``)."""
    return f"owner-{index:03d}"


def _check(num_samples: int, num_owners: int) -> None:
    if num_owners < 1:
        raise DataError(f"invalid num-owners={num_owners}: expected at least 1")
    if num_owners > num_samples:
        raise DataError(f"num-owners={num_owners} exceeds the {num_samples} training samples; "
                        f"use at most {num_samples} owners or more data")


def _finish(parts: list[np.ndarray], method: str) -> list[np.ndarray]:
    for index, part in enumerate(parts):
        if len(part) == 0:
            raise DataError(f"{method} partition gave {owner_id(index)} zero samples; use fewer owners, "
                            f"a larger alpha or another seed")
    return [np.sort(part).astype(np.int64) for part in parts]


def partition_iid(labels: np.ndarray, num_owners: int, seed: int) -> list[np.ndarray]:
    """Shuffle the samples and deal them into ``num_owners`` parts of near-equal size."""
    _check(len(labels), num_owners)
    order = np.random.default_rng(seed).permutation(len(labels))
    return _finish(list(np.array_split(order, num_owners)), "iid")


def partition_dirichlet(labels: np.ndarray, num_owners: int, alpha: float, seed: int,
                        min_samples: int = 1, max_attempts: int = 100) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among owners by proportions ~ Dirichlet(alpha).

    Draws are repeated (at most ``max_attempts`` times, each from the same seeded generator)
    until every owner has at least ``min_samples`` samples.
    """
    _check(len(labels), num_owners)
    if alpha <= 0:
        raise DataError(f"invalid alpha={alpha}: expected > 0")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_attempts):
        parts: list[list[int]] = [[] for _ in range(num_owners)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_owners, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for owner, chunk in enumerate(np.split(members, cuts)):
                parts[owner].extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_samples:
            return _finish([np.asarray(part) for part in parts], "dirichlet")
    raise DataError(f"dirichlet partition with alpha={alpha} left an owner with fewer than {min_samples} "
                    f"samples in {max_attempts} draws; use fewer owners or a larger alpha")


def partition_shards(labels: np.ndarray, num_owners: int, shards_per_owner: int, seed: int) -> list[np.ndarray]:
    """Sort by label, cut into ``num_owners * shards_per_owner`` shards and deal them at random."""
    _check(len(labels), num_owners)
    num_shards = num_owners * shards_per_owner
    if num_shards > len(labels):
        raise DataError(f"{num_owners} owners x {shards_per_owner} shards exceed the {len(labels)} samples; "
                        f"lower shards-per-owner or num-owners")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_owners, shards_per_owner)
    return _finish([np.concatenate([shards[s] for s in row]) for row in dealt], "shards")


def partition(labels: np.ndarray, method: str, num_owners: int, seed: int, alpha: float = 0.5,
              shards_per_owner: int = 2) -> list[np.ndarray]:
    """Dispatch to the partitioner named ``method`` (``iid``, ``dirichlet`` or ``shards``)."""
    if method == "iid":
        return partition_iid(labels, num_owners, seed)
    if method == "dirichlet":
        return partition_dirichlet(labels, num_owners, alpha, seed)
    if method == "shards":
        return partition_shards(labels, num_owners, shards_per_owner, seed)
    raise DataError(f"unknown partitioner {method!r}; use iid, dirichlet or shards")
