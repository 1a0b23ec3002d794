"""The whole simulated job: train, evaluate, run baselines, revoke one owner, unlearn, verify.

:func:`preflight` checks every input (configuration, backbone, data, partition, owner to revoke)
before anything is written, so bad input leaves the state directory as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..client.owners import backbone_for, datasets_for
from ..shared.config import JobConfig
from ..shared.errors import RevocationError
from ..shared.partition import owner_id, partition
from ..shared.prompt import PARAMETER_NAMES
from .baselines import linear_probe_accuracy
from .evaluation import evaluate
from .federation import Federation
from .model import ModelStore, ModelVersion, atomic_write
from .transport import Transport

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
JOB_FILE = "job.json"
CURRENT_FILE = "current"


@dataclasses.dataclass
class Preflight:
    """Facts established before a job writes anything."""

    owners: list[str]
    revoke: str
    owner_samples: list[int]


def preflight(job: JobConfig) -> Preflight:
    """Load the backbone and data, partition them and check the owner to revoke.

    Raises
    ------
    LmeraserError
        Any invalid input, with the value and the fix in the message.
    """
    backbone_for(job)
    train, _ = datasets_for(job)
    parts = partition(train.labels, job.partitioner, job.num_owners, job.seed, job.alpha, job.shards_per_owner)
    owners = [owner_id(i) for i in range(job.num_owners)]
    revoke = job.revoke or owners[0]
    if revoke not in owners:
        raise RevocationError(f"unknown owner to revoke {revoke!r}; this federation has owners "
                              f"{owners[0]} to {owners[-1]}")
    return Preflight(owners, revoke, [len(p) for p in parts])


def compare_models(actual: ModelVersion, expected: ModelVersion) -> list[str]:
    """Return every difference between two models' clusters, prototypes, prompts, heads and ledgers."""
    differences = []
    actual_keys = {c.key for c in actual.served_clusters}
    expected_keys = {c.key for c in expected.served_clusters}
    for key in sorted(actual_keys ^ expected_keys):
        differences.append(f"cluster {key[:12]} exists in only one model")
    prototypes = {c.key: c.prototype for c in expected.served_clusters}
    for cluster in actual.served_clusters:
        if cluster.key not in expected_keys:
            continue
        if not np.array_equal(cluster.prototype, prototypes[cluster.key]):
            differences.append(f"cluster {cluster.key[:12]} prototype differs")
        for name in PARAMETER_NAMES:
            if not np.array_equal(actual.parameters[cluster.key][name], expected.parameters[cluster.key][name]):
                differences.append(f"cluster {cluster.key[:12]} {name} differs")
    if actual.ledger.to_json() != expected.ledger.to_json():
        differences.append("membership ledgers differ")
    return differences


def _summary(model: ModelVersion, version: str, cost: Any, evaluation: dict[str, Any]) -> dict[str, Any]:
    return {"version": version, "accuracy": evaluation["accuracy"], "clusters": evaluation["clusters"],
            "label_coverage": evaluation.get("label_coverage"), "cost": cost.to_json(),
            "cluster_sizes": sorted((model.ledger.samples(c.key) for c in model.served_clusters), reverse=True)}


def run_job(job: JobConfig, transport: Transport, progress: bool = True) -> dict[str, Any]:
    """Run the whole job over ``transport`` and write models and results under ``job.state_dir``."""
    started = time.perf_counter()
    checked = preflight(job)
    backbone = backbone_for(job)
    train, test = datasets_for(job)
    state = Path(job.state_dir)
    store = ModelStore(state)
    owners = [o for o in transport.owners() if o in checked.owners]
    federation = Federation(transport, job, backbone, train.classes, progress=progress)
    test_features = backbone.embed_images(test.images)
    results: dict[str, Any] = {"config": job.to_mapping(), "owners": len(owners), "train_samples": len(train),
                               "test_samples": len(test), "input_size": backbone.input_size,
                               "backbone": backbone.name, "backbone_sha256": backbone.sha256,
                               "transport": type(transport).__name__,
                               "skipped_files": len(train.skipped) + len(test.skipped), "models": {}}
    atomic_write(state / JOB_FILE, json.dumps(job.to_mapping(), indent=1, sort_keys=True).encode())

    # Routed prompts: the model that will serve and forget.
    model, cost = federation.fit(owners, "routed")
    version = store.save(model)
    results["models"]["routed"] = _summary(model, version, cost, evaluate(model, backbone, test, test_features))
    results["models"]["routed"]["accuracy_nearest"] = evaluate(model, backbone, test, test_features,
                                                              temperature=0.0)["accuracy"]

    # Baselines, trained by the same engine so that the comparison is fair.
    for name in job.baseline_names:
        if name == "probe":
            results["models"]["probe"] = {"accuracy": linear_probe_accuracy(backbone, train, test, test_features)}
            continue
        baseline, baseline_cost = federation.fit(owners, name, num_clusters=len(model.served_clusters))
        baseline_version = store.save(baseline)
        results["models"][name] = _summary(baseline, baseline_version, baseline_cost,
                                           evaluate(baseline, backbone, test, test_features))

    # Revocation: unlearn one owner, then (optionally) train the reference without it.
    unlearned, report = federation.revoke(model, checked.revoke, parent=version, full_retrain_seconds=cost.wall_seconds)
    unlearned_version = store.save(unlearned)
    revocation = report.to_json()
    revocation["version"] = unlearned_version
    revocation["accuracy_after"] = evaluate(unlearned, backbone, test, test_features)["accuracy"]
    if job.verify:
        reference, reference_cost = federation.fit([o for o in owners if o != checked.revoke], "routed")
        differences = compare_models(unlearned, reference)
        revocation["full_retrain"]["wall_seconds"] = reference_cost.wall_seconds
        revocation["full_retrain"]["measured"] = True
        results["verify"] = {"exact": not differences, "differences": differences,
                             "reference_version": store.save(reference)}
        logger.info("verification against a fresh run without %s: %s", checked.revoke,
                    "exact" if not differences else f"{len(differences)} differences")
    results["revocation"] = revocation

    atomic_write(state / CURRENT_FILE, unlearned_version.encode())
    atomic_write(state / "ledger.json", json.dumps(unlearned.ledger.to_json(), indent=1).encode())
    results["wall_seconds"] = time.perf_counter() - started
    atomic_write(state / RESULTS_FILE, json.dumps(results, indent=1).encode())
    return results
