"""Adaptive clustering: linkage, determinism, size rules and content keys."""

from __future__ import annotations

import numpy as np
import pytest

from lmeraser.server.clustering import (SummaryItem, average_linkage, cluster_key, cluster_summaries,
                                        snap_to_grid)


def _items(points, counts=None, owners=None):
    counts = counts if counts is not None else [10] * len(points)
    owners = owners or [f"owner-{i:03d}" for i in range(len(points))]
    return [SummaryItem(owner, 0, np.asarray(point, dtype=np.float32), count)
            for owner, point, count in zip(owners, points, counts)]


def test_average_linkage_matches_scipy_for_unit_weights() -> None:
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist, squareform

    points = np.random.default_rng(0).normal(size=(12, 4))
    nodes = average_linkage(squareform(pdist(points)), np.ones(12))
    ours = sorted(node.height for node in nodes[12:])
    reference = sorted(linkage(points, method="average")[:, 2])
    assert np.allclose(ours, reference)


def test_weights_pull_the_merge_height() -> None:
    distances = np.array([[0, 1, 5], [1, 0, 3], [5, 3, 0]], dtype=float)
    nodes = average_linkage(distances, np.array([1.0, 3.0, 1.0]))
    # {0,1} merge at 1; then d({0,1}, 2) = (1*5 + 3*3) / 4 = 3.5.
    assert nodes[-1].height == pytest.approx(3.5)


def test_clusters_follow_separated_groups() -> None:
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 0.1, (6, 3)), rng.normal(5, 0.1, (6, 3)), rng.normal(-5, 0.1, (6, 3))])
    clusters = cluster_summaries(_items(points), distance_factor=1.0, min_size=10, max_fraction=0.9)
    assert sorted(len(c.items) for c in clusters) == [6, 6, 6]


def test_result_independent_of_item_order() -> None:
    points = np.random.default_rng(2).normal(size=(15, 5))
    items = _items(points, counts=list(range(1, 16)))
    first = cluster_summaries(items)
    second = cluster_summaries(list(reversed(items)))
    assert [c.key for c in first] == [c.key for c in second]
    assert all(np.array_equal(a.prototype, b.prototype) for a, b in zip(first, second))


def test_small_clusters_merge_above_minimum() -> None:
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 0.1, (9, 2)), [[30.0, 30.0]]])
    counts = [100] * 9 + [5]
    clusters = cluster_summaries(_items(points, counts), distance_factor=0.5, min_size=50, max_fraction=1.0)
    assert all(c.weight >= 50 for c in clusters)


def test_dominant_cluster_split_when_possible() -> None:
    rng = np.random.default_rng(4)
    points = np.concatenate([rng.normal(0, 0.1, (8, 2)), rng.normal(1.0, 0.1, (8, 2)), [[40.0, 40.0]] * 4])
    clusters = cluster_summaries(_items(points), distance_factor=1.0, min_size=20, max_fraction=0.5)
    assert max(c.weight for c in clusters) <= 0.5 * 200


def test_prototype_is_count_weighted_mean() -> None:
    items = _items([[0.0, 0.0], [4.0, 0.0]], counts=[3, 1])
    (cluster,) = cluster_summaries(items, distance_factor=100.0, min_size=1, max_fraction=1.0)
    assert np.allclose(cluster.prototype, [1.0, 0.0])


def test_key_depends_on_content_not_order() -> None:
    items = _items([[0.0], [1.0]])
    assert cluster_key(items) == cluster_key(list(reversed(items)))
    changed = [items[0], SummaryItem(items[1].owner, 0, items[1].centroid, items[1].count + 1)]
    assert cluster_key(changed) != cluster_key(items)


def test_snap_to_grid_absorbs_small_changes() -> None:
    assert snap_to_grid(1.0) == 1.0
    assert snap_to_grid(1.05) == snap_to_grid(1.1) == 1.0
    assert snap_to_grid(1.2) == pytest.approx(2 ** 0.25)
    assert snap_to_grid(0.0) == 0.0
