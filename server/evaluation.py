"""Routed prediction and accuracy, overall and per cluster."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..client.training import nearest_prototype, predict_logits
from ..shared.backbone import Backbone
from ..shared.data import ImageSet, normalize
from ..shared.errors import LmeraserError
from .model import ENSEMBLE, ModelVersion


@dataclasses.dataclass
class Prediction:
    """Predicted class per input and, for routed models, the cluster key each input went to."""

    labels: np.ndarray
    clusters: list[str]


def embed_images(backbone: Backbone, images: torch.Tensor) -> np.ndarray:
    """Return backbone features (no prompt) of uint8 images."""
    return backbone.embed(normalize(images, backbone.mean, backbone.std)).numpy()


def predict(model: ModelVersion, backbone: Backbone, images: torch.Tensor,
            features: np.ndarray | None = None) -> Prediction:
    """Predict classes: route each input to its nearest prototype and apply that cluster's prompt
    and head, or, for an ensemble model, average the class probabilities of every cluster."""
    if backbone.sha256 != model.backbone_sha256:
        raise LmeraserError(f"backbone {backbone.name} (sha256 {backbone.sha256[:12]}) differs from the model's "
                         f"{model.backbone} (sha256 {model.backbone_sha256[:12]}); load the model's backbone")
    served = model.served_clusters
    num_classes = len(model.classes)
    if not served:
        raise LmeraserError("the model has no trained clusters (every owner was revoked); train a new model")
    if model.prediction == ENSEMBLE:
        probabilities = sum(
            torch.softmax(predict_logits(backbone, model.parameters[c.key], images, num_classes, model.prompt_width), 1)
            for c in served
        )
        return Prediction(probabilities.argmax(1).numpy(), [""] * len(images))

    if features is None:
        features = embed_images(backbone, images)
    nearest = nearest_prototype(features, np.stack([c.prototype for c in served]))
    labels = np.zeros(len(images), dtype=np.int64)
    for index, cluster in enumerate(served):
        routed = np.flatnonzero(nearest == index)
        if len(routed):
            logits = predict_logits(backbone, model.parameters[cluster.key], images[torch.from_numpy(routed)],
                                    num_classes, model.prompt_width)
            labels[routed] = logits.argmax(1).numpy()
    return Prediction(labels, [served[i].key for i in nearest])


def evaluate(model: ModelVersion, backbone: Backbone, test: ImageSet,
             features: np.ndarray | None = None) -> dict[str, Any]:
    """Return overall accuracy and, per cluster, members, training samples, routed test inputs,
    their accuracy and label coverage (share of routed inputs whose class the cluster trained on)."""
    prediction = predict(model, backbone, test.images, features)
    correct = prediction.labels == test.labels
    report: dict[str, Any] = {"accuracy": float(correct.mean()) if len(correct) else 0.0, "test_samples": len(test),
                              "clusters": []}
    if model.prediction == ENSEMBLE:
        return report

    routed_to = np.array(prediction.clusters)
    covered_total = 0
    for cluster in model.served_clusters:
        mask = routed_to == cluster.key
        label_counts = np.array(model.ledger.label_counts(cluster.key, len(model.classes)))
        covered = int((label_counts[test.labels[mask]] > 0).sum())
        covered_total += covered
        report["clusters"].append({
            "key": cluster.key,
            "members": len(model.ledger.members(cluster.key)),
            "train_samples": model.ledger.samples(cluster.key),
            "classes_seen": int((label_counts > 0).sum()),
            "test_routed": int(mask.sum()),
            "accuracy": float(correct[mask].mean()) if mask.any() else None,
            "label_coverage": covered / int(mask.sum()) if mask.any() else None,
        })
    report["label_coverage"] = covered_total / max(len(test), 1)
    return report
