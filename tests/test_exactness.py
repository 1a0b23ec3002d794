"""The exactness invariant: revoking an owner gives the tensors of a fresh run without it."""

from __future__ import annotations

import numpy as np
import pytest

from lmeraser.client.owners import backbone_for, datasets_for, simulated_workers
from lmeraser.server.federation import Federation
from lmeraser.server.job import compare_models
from lmeraser.server.transport import InProcessTransport
from lmeraser.shared.prompt import PARAMETER_NAMES

from conftest import small_job

REVOKED = "owner-000"


@pytest.fixture(scope="module")
def revocation(tmp_path_factory):
    """Train six label-sharded digit owners, revoke one, and train the reference without it."""
    job = small_job(tmp_path_factory.mktemp("exact"), num_owners=6, partitioner="shards", shards_per_owner=2,
                    summary_k=1, min_cluster_size=250, rounds=2)
    workers = simulated_workers(job)
    train, _ = datasets_for(job)
    federation = Federation(InProcessTransport(workers), job, backbone_for(job), train.classes, progress=False)

    original, _ = federation.fit(sorted(workers))
    unlearned, report = federation.revoke(original, REVOKED)
    contacted = set(federation.contacted)
    reference, _ = federation.fit([o for o in sorted(workers) if o != REVOKED])
    return original, unlearned, report, contacted, reference


def test_federation_has_several_clusters(revocation) -> None:
    original, *_ = revocation
    assert len(original.served_clusters) >= 2
    assert any(REVOKED not in original.ledger.members(c.key) for c in original.served_clusters)


def test_unlearned_equals_fresh_run(revocation) -> None:
    _, unlearned, _, _, reference = revocation
    assert [c.key for c in unlearned.served_clusters] == [c.key for c in reference.served_clusters]
    expected = {c.key: c for c in reference.served_clusters}
    for cluster in unlearned.served_clusters:
        assert np.array_equal(cluster.prototype, expected[cluster.key].prototype), cluster.key
        for name in PARAMETER_NAMES:
            assert np.array_equal(unlearned.parameters[cluster.key][name], reference.parameters[cluster.key][name]), \
                f"{cluster.key[:12]} {name}"
    assert unlearned.ledger.to_json() == reference.ledger.to_json()
    assert compare_models(unlearned, reference) == []


def test_revoked_owner_left_no_trace(revocation) -> None:
    _, unlearned, _, _, _ = revocation
    assert REVOKED not in unlearned.ledger.owners()
    assert all(item.owner != REVOKED for item in unlearned.summaries)
    assert unlearned.revoked == [REVOKED]


def test_cluster_without_owner_not_retrained(revocation) -> None:
    original, unlearned, report, contacted, _ = revocation
    untouched = [c.key for c in original.served_clusters if REVOKED not in original.ledger.members(c.key)]
    kept_untouched = [key for key in untouched if key in report.kept]
    assert kept_untouched, "no cluster without the revoked owner was kept"
    for key in kept_untouched:
        for name in PARAMETER_NAMES:
            assert unlearned.parameters[key][name] is original.parameters[key][name]
        for owner in original.ledger.members(key):
            if all(k in report.kept for k in original.ledger.clusters_of(owner)):
                assert owner not in contacted, f"{owner} was contacted but all its clusters were kept"


def test_retrained_clusters_reported(revocation) -> None:
    original, _, report, _, _ = revocation
    assert report.retrained
    assert report.cost.clusters_trained == len(report.retrained)
    assert report.cost.sample_epochs < report.full_retrain.sample_epochs
    with_owner = {c.key for c in original.served_clusters if REVOKED in original.ledger.members(c.key)}
    assert not with_owner & set(report.kept)
