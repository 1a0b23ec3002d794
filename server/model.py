"""Immutable model versions and their store: safetensors for tensors, a JSON manifest beside them.

A version contains everything needed to serve and to unlearn: backbone id and hash, the owner
summaries the clustering was computed from, each cluster's prototype, prompt and head, the
membership ledger and the owners revoked so far. Its id is the SHA-256 of the tensor file and
the manifest, so any change of any tensor or ledger entry gives a new id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..shared.errors import LmeraserError
from ..shared.files import atomic_write
from ..shared.prompt import PARAMETER_NAMES
from .clustering import Cluster, SummaryItem, make_cluster
from .ledger import MembershipLedger

logger = logging.getLogger(__name__)

# Prediction modes: route to the nearest prototype, or average every cluster's probabilities
# (the SISA-style random-partition baseline, whose shards have no meaningful prototypes).
ROUTED, ENSEMBLE = "routed", "ensemble"


@dataclasses.dataclass
class ModelVersion:
    """One trained model. Treat as immutable once saved.

    Attributes
    ----------
    strategy : str
        How clusters were formed: ``routed``, ``global`` or ``random``.
    prediction : str
        ``routed`` or ``ensemble`` (see module constants).
    clusters : list of Cluster
        Clusters sorted by key, with prototypes.
    parameters : dict
        Cluster key -> {parameter name: array} for every cluster in the ledger.
    routing : dict
        Owner -> cluster key of each of its summary items (list index = k-means group).
    ledger : MembershipLedger
        Samples each owner contributed to each cluster.
    routing_temperature : float
        Soft-routing temperature used by prediction (0 routes to the nearest prototype only).
    """

    strategy: str
    prediction: str
    backbone: str
    backbone_sha256: str
    input_size: int
    prompt_width: int
    classes: list[str]
    config_fingerprint: str
    summaries: list[SummaryItem]
    clusters: list[Cluster]
    routing: dict[str, list[str]]
    ledger: MembershipLedger
    parameters: dict[str, dict[str, np.ndarray]]
    revoked: list[str] = dataclasses.field(default_factory=list)
    parent: str = ""
    routing_temperature: float = 0.0

    @property
    def served_clusters(self) -> list[Cluster]:
        """Clusters with trained parameters, sorted by key."""
        return [c for c in self.clusters if c.key in self.parameters]

    def tensors(self) -> dict[str, np.ndarray]:
        """Return every tensor of the version under a flat, stable name."""
        tensors: dict[str, np.ndarray] = {}
        for cluster in self.served_clusters:
            tensors[f"prototype/{cluster.key}"] = cluster.prototype
            for name in PARAMETER_NAMES:
                tensors[f"{cluster.key}/{name}"] = self.parameters[cluster.key][name]
        for item in self.summaries:
            tensors[f"summary/{item.owner}/{item.index}"] = np.asarray(item.centroid, dtype=np.float32)
        return tensors

    def manifest(self) -> dict[str, Any]:
        """Return the JSON-ready description of the version (everything but the tensors)."""
        return {
            "format": "lmeraser-model/1",
            "strategy": self.strategy,
            "prediction": self.prediction,
            "backbone": self.backbone,
            "backbone_sha256": self.backbone_sha256,
            "input_size": self.input_size,
            "prompt_width": self.prompt_width,
            "classes": self.classes,
            "config_fingerprint": self.config_fingerprint,
            "summaries": [[item.owner, item.index, item.count] for item in self.summaries],
            "clusters": [[c.key, [[it.owner, it.index] for it in c.items]] for c in self.clusters],
            "routing": {owner: keys for owner, keys in sorted(self.routing.items())},
            "ledger": self.ledger.to_json(),
            "revoked": sorted(self.revoked),
            "parent": self.parent,
            "routing_temperature": self.routing_temperature,
        }


def _tensor_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(value) for name, value in sorted(tensors.items())})


def version_id(model: ModelVersion) -> str:
    """Return the content hash that names ``model``."""
    digest = hashlib.sha256(_tensor_bytes(model.tensors()))
    digest.update(json.dumps(model.manifest(), sort_keys=True).encode())
    return digest.hexdigest()


class ModelStore:
    """Model versions under ``root/models``: ``<id>.safetensors`` and ``<id>.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"

    def save(self, model: ModelVersion) -> str:
        """Write ``model`` atomically and return its version id (writing an existing id is a no-op)."""
        tensors = _tensor_bytes(model.tensors())
        manifest = model.manifest()
        identifier = version_id(model)
        manifest["tensors_sha256"] = hashlib.sha256(tensors).hexdigest()
        manifest["version"] = identifier
        atomic_write(self.models / f"{identifier}.safetensors", tensors)
        atomic_write(self.models / f"{identifier}.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
        logger.info("saved model version %s (%s, %d clusters)", identifier[:12], model.strategy,
                    len(model.served_clusters))
        return identifier

    def versions(self) -> list[str]:
        """Saved version ids, sorted."""
        return sorted(path.stem for path in self.models.glob("*.json"))

    def load(self, identifier: str) -> ModelVersion:
        """Load a version by id or unique id prefix; the tensor file must match its recorded hash."""
        matches = [v for v in self.versions() if v.startswith(identifier)] if identifier else []
        if len(matches) != 1:
            raise LmeraserError(f"model version {identifier!r} {'is ambiguous' if matches else 'not found'} "
                                f"in {self.models}; known versions: {[v[:12] for v in self.versions()]}")
        identifier = matches[0]
        manifest = json.loads((self.models / f"{identifier}.json").read_text())
        raw = (self.models / f"{identifier}.safetensors").read_bytes()
        if hashlib.sha256(raw).hexdigest() != manifest["tensors_sha256"]:
            raise LmeraserError(f"model version {identifier[:12]} is corrupt: its tensor file does not match "
                                f"the hash in its manifest; restore it from a backup or retrain")
        from safetensors.numpy import load

        tensors = load(raw)
        return _from_stored(manifest, tensors)


def _from_stored(manifest: dict[str, Any], tensors: dict[str, np.ndarray]) -> ModelVersion:
    summaries = [SummaryItem(owner, index, tensors[f"summary/{owner}/{index}"], count)
                 for owner, index, count in manifest["summaries"]]
    by_id = {(item.owner, item.index): item for item in summaries}
    clusters = [make_cluster([by_id[(owner, index)] for owner, index in members])
                for key, members in manifest["clusters"]]
    for cluster, (key, _) in zip(clusters, manifest["clusters"]):
        if cluster.key != key:
            raise LmeraserError(f"stored cluster {key[:12]} does not match its summaries; the model is corrupt")
    ledger = MembershipLedger.from_json(manifest["ledger"])
    parameters = {
        key: {name: tensors[f"{key}/{name}"] for name in PARAMETER_NAMES}
        for key in {name.split("/")[0] for name in tensors if not name.startswith(("prototype/", "summary/"))}
    }
    return ModelVersion(
        strategy=manifest["strategy"], prediction=manifest["prediction"], backbone=manifest["backbone"],
        backbone_sha256=manifest["backbone_sha256"], input_size=manifest["input_size"],
        prompt_width=manifest["prompt_width"], classes=manifest["classes"],
        config_fingerprint=manifest["config_fingerprint"], summaries=summaries, clusters=clusters,
        routing=manifest["routing"], ledger=ledger, parameters=parameters,
        revoked=manifest["revoked"], parent=manifest["parent"],
        routing_temperature=float(manifest.get("routing_temperature", 0.0)),
    )
