"""Adaptive clustering of owner summaries into prototypes.

Items are the owners' local k-means centroids, weighted by their sample counts. The server
merges them by count-weighted average linkage (UPGMA) and cuts the dendrogram at a height
proportional to the data's spread, so diverse data give more clusters and homogeneous data
fewer. The spread is snapped down to a geometric grid (steps of 2^(1/4), about 19 %). One
owner's departure changes the spread by a few percent, which then usually leaves the cut
unchanged, and with it every cluster that did not contain that owner. Two size rules then keep the clusters useful for both accuracy and forgetting:

- a cluster holding more than ``max_fraction`` of all samples is split into its two
  dendrogram children while both keep at least ``min_size`` samples (data that cannot be split
  that way are homogeneous enough to warrant one large cluster);
- a cluster below ``min_size`` samples merges into its nearest cluster by average linkage.

The result is a deterministic function of the set of items: they are sorted by owner id and
centroid index first, ties break by that order, and cluster keys hash the member items.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SummaryItem:
    """One local k-means centroid of an owner, with the number of samples it stands for."""

    owner: str
    index: int
    centroid: np.ndarray
    count: int


@dataclasses.dataclass
class Cluster:
    """A cluster of summary items.

    Attributes
    ----------
    key : str
        SHA-256 over the member items (owner, centroid bytes, count): the cluster's identity
        and the root of every seed used to train it.
    items : list of SummaryItem
        Member items in canonical order.
    prototype : np.ndarray
        Count-weighted mean of the member centroids, float32.
    """

    key: str
    items: list[SummaryItem]
    prototype: np.ndarray

    @property
    def weight(self) -> int:
        """Samples summarised by the member items."""
        return sum(item.count for item in self.items)


def cluster_key(items: list[SummaryItem]) -> str:
    """Hash the member items of a cluster, independent of their order."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda it: (it.owner, it.index)):
        digest.update(item.owner.encode())
        digest.update(np.ascontiguousarray(item.centroid, dtype=np.float32).tobytes())
        digest.update(int(item.count).to_bytes(8, "big"))
    return digest.hexdigest()


def make_cluster(items: list[SummaryItem]) -> Cluster:
    """Build a cluster (key and weighted-mean prototype) from its items."""
    items = sorted(items, key=lambda it: (it.owner, it.index))
    weights = np.array([item.count for item in items], dtype=np.float64)
    centroids = np.stack([np.asarray(item.centroid, dtype=np.float64) for item in items])
    prototype = (weights[:, None] * centroids).sum(0) / weights.sum()
    return Cluster(cluster_key(items), items, prototype.astype(np.float32))


GRID_STEPS_PER_OCTAVE = 4


def spread(centroids: np.ndarray, weights: np.ndarray) -> float:
    """Return the count-weighted RMS distance of the centroids to their weighted mean."""
    mean = (weights[:, None] * centroids).sum(0) / weights.sum()
    return float(np.sqrt((weights * ((centroids - mean) ** 2).sum(1)).sum() / weights.sum()))


def snap_to_grid(value: float) -> float:
    """Round ``value`` down to the nearest power of 2^(1/4); zero stays zero."""
    if value <= 0:
        return 0.0
    return float(2.0 ** (np.floor(np.log2(value) * GRID_STEPS_PER_OCTAVE + 1e-9) / GRID_STEPS_PER_OCTAVE))


@dataclasses.dataclass
class _Node:
    members: list[int]
    weight: float
    height: float
    children: tuple[int, int] | None


def average_linkage(distances: np.ndarray, weights: np.ndarray) -> list[_Node]:
    """Build the count-weighted average-linkage dendrogram.

    Returns nodes where the first ``n`` are leaves and each later node merges two earlier
    ones; the last node is the root. The distance between clusters is the count-weighted mean
    of item distances, updated by Lance-Williams: d(A+B, C) = (w_A d(A,C) + w_B d(B,C)) / (w_A + w_B).
    """
    n = len(weights)
    nodes = [_Node([i], float(weights[i]), 0.0, None) for i in range(n)]
    if n == 1:
        return nodes
    linkage = distances.astype(np.float64).copy()
    np.fill_diagonal(linkage, np.inf)
    active = list(range(n))  # node index of each row of `linkage`
    alive = np.ones(n, dtype=bool)

    for _ in range(n - 1):
        masked = np.where(alive[:, None] & alive[None, :], linkage, np.inf)
        flat = int(np.argmin(masked))  # first minimum in row-major order breaks ties canonically
        row, col = divmod(flat, n)
        row, col = min(row, col), max(row, col)
        left, right = nodes[active[row]], nodes[active[col]]
        merged = _Node(left.members + right.members, left.weight + right.weight, float(masked[row, col]),
                       (active[row], active[col]))
        updated = (left.weight * linkage[row] + right.weight * linkage[col]) / merged.weight
        linkage[row, :], linkage[:, row] = updated, updated
        linkage[row, row] = np.inf
        alive[col] = False
        nodes.append(merged)
        active[row] = len(nodes) - 1
    return nodes


def _cut(nodes: list[_Node], threshold: float) -> list[int]:
    """Return the maximal nodes whose merge height is at most ``threshold``."""
    selected, stack = [], [len(nodes) - 1]
    while stack:
        index = stack.pop()
        node = nodes[index]
        if node.children is None or node.height <= threshold:
            selected.append(index)
        else:
            stack.extend(node.children)
    return selected


def _split_dominant(nodes: list[_Node], selected: list[int], total: float, min_weight: float,
                    max_fraction: float) -> list[int]:
    result, queue = [], list(selected)
    while queue:
        index = queue.pop()
        node = nodes[index]
        if node.weight > max_fraction * total and node.children is not None:
            left, right = node.children
            if nodes[left].weight >= min_weight and nodes[right].weight >= min_weight:
                queue.extend([left, right])
                continue
        result.append(index)
    return result


def _merge_small(groups: list[list[int]], distances: np.ndarray, weights: np.ndarray,
                 min_weight: float) -> list[list[int]]:
    groups = [sorted(group) for group in groups]
    while len(groups) > 1:
        sizes = [weights[group].sum() for group in groups]
        small = [i for i, size in enumerate(sizes) if size < min_weight]
        if not small:
            break
        source = min(small, key=lambda i: (sizes[i], groups[i][0]))
        best, best_distance = -1, np.inf
        for target, group in enumerate(groups):
            if target == source:
                continue
            pair = np.outer(weights[groups[source]], weights[group])
            distance = float((pair * distances[np.ix_(groups[source], group)]).sum() / pair.sum())
            if distance < best_distance:
                best, best_distance = target, distance
        groups[best] = sorted(groups[best] + groups[source])
        del groups[source]
    return groups


def cluster_summaries(items: list[SummaryItem], distance_factor: float = 1.0, min_size: int = 100,
                      max_fraction: float = 0.5) -> list[Cluster]:
    """Cluster summary items; return clusters sorted by key.

    Parameters
    ----------
    items : list of SummaryItem
        Every owner's centroids; order does not matter.
    distance_factor : float, default 1.0
        Cut height as a multiple of the items' :func:`spread`, snapped by :func:`snap_to_grid`.
    min_size : int, default 100
        Minimum samples per cluster (unless all items together hold fewer).
    max_fraction : float, default 0.5
        Share above which a cluster is split if its dendrogram children are both large enough.
    """
    if not items:
        return []
    items = sorted(items, key=lambda it: (it.owner, it.index))
    centroids = np.stack([np.asarray(item.centroid, dtype=np.float64) for item in items])
    weights = np.array([item.count for item in items], dtype=np.float64)
    total = weights.sum()
    min_weight = float(min_size)

    squared = (centroids ** 2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] - 2 * centroids @ centroids.T + squared[None, :], 0.0))
    threshold = distance_factor * snap_to_grid(spread(centroids, weights))
    nodes = average_linkage(distances, weights)

    selected = _cut(nodes, threshold)
    selected = _split_dominant(nodes, selected, total, min_weight, max_fraction)
    groups = _merge_small([nodes[i].members for i in selected], distances, weights, min_weight)

    clusters = sorted((make_cluster([items[i] for i in group]) for group in groups), key=lambda c: c.key)
    logger.info("clustered %d summary items (%d samples) at height %.3f into %d clusters, sizes %s",
                len(items), int(total), threshold, len(clusters), sorted((c.weight for c in clusters), reverse=True))
    return clusters
