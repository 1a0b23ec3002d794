"""Routed prediction and accuracy, overall and per cluster."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..client.training import predict_logits
from ..shared.backbone import Backbone
from ..shared.data import ImageSet
from ..shared.errors import LmeraserError
from .model import ENSEMBLE, ModelVersion


@dataclasses.dataclass
class Prediction:
    """Predicted class per input and, for routed models, the cluster key each input went to."""

    labels: np.ndarray
    clusters: list[str]


# Clusters whose relative distance exceeds this many temperatures get no weight (e^-5 < 1 %).
WEIGHT_CUTOFF = 5.0


def routing_weights(features: np.ndarray, prototypes: np.ndarray, temperature: float) -> np.ndarray:
    """Return per-input cluster weights (N, C) from distances to the prototypes.

    ``temperature`` 0 gives hard routing: weight 1 on the nearest prototype. Otherwise cluster
    ``c`` gets weight proportional to exp(-(d_c - d_min) / (temperature * d_min)), so a cluster
    10 % farther than the nearest one weighs e^-1 as much at temperature 0.1. Clusters more than
    ``WEIGHT_CUTOFF`` temperatures away get none, which bounds the heads evaluated per input.
    """
    features64 = np.asarray(features, dtype=np.float64)
    prototypes64 = np.asarray(prototypes, dtype=np.float64)
    squared = ((features64 ** 2).sum(1, keepdims=True) - 2.0 * features64 @ prototypes64.T
               + (prototypes64 ** 2).sum(1)[None, :])
    distances = np.sqrt(np.maximum(squared, 0.0))
    nearest = distances.argmin(1)
    weights = np.zeros_like(distances)
    if temperature <= 0:
        weights[np.arange(len(nearest)), nearest] = 1.0
        return weights
    closest = np.maximum(distances.min(1, keepdims=True), 1e-12)
    relative = (distances - closest) / (temperature * closest)
    weights = np.where(relative <= WEIGHT_CUTOFF, np.exp(-relative), 0.0)
    return weights / weights.sum(1, keepdims=True)


def predict(model: ModelVersion, backbone: Backbone, images: torch.Tensor,
            features: np.ndarray | None = None, temperature: float | None = None) -> Prediction:
    """Predict classes with a stored model.

    A routed model weighs clusters by their prototypes' distance (:func:`routing_weights`) and
    mixes the class probabilities of each weighted cluster's prompt and head. At temperature 0
    this is the nearest prototype's prediction alone. An ensemble model averages every cluster.
    ``temperature`` defaults to the model's own ``routing_temperature``.
    """
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
        features = backbone.embed_images(images)
    if temperature is None:
        temperature = model.routing_temperature
    weights = routing_weights(features, np.stack([c.prototype for c in served]), temperature)
    mixture = _mix_clusters(model, backbone, images, weights)
    return Prediction(mixture.argmax(1), [served[i].key for i in weights.argmax(1)])


def _mix_clusters(model: ModelVersion, backbone: Backbone, images: torch.Tensor, weights: np.ndarray) -> np.ndarray:
    """Return class probabilities (N, classes) mixed over served clusters by ``weights`` (N, C);
    a cluster runs its prompt and head only on the inputs that give it weight."""
    mixture = np.zeros((len(images), len(model.classes)))
    for index, cluster in enumerate(model.served_clusters):
        routed = np.flatnonzero(weights[:, index] > 0)
        if len(routed):
            logits = predict_logits(backbone, model.parameters[cluster.key], images[torch.from_numpy(routed)],
                                    len(model.classes), model.prompt_width)
            mixture[routed] += weights[routed, index, None] * torch.softmax(logits, 1).numpy()
    return mixture


def evaluate(model: ModelVersion, backbone: Backbone, test: ImageSet,
             features: np.ndarray | None = None, temperature: float | None = None) -> dict[str, Any]:
    """Return overall accuracy and, per cluster, members, training samples, test inputs whose
    nearest prototype it is, their accuracy and label coverage (share of those inputs whose
    class the cluster trained on)."""
    prediction = predict(model, backbone, test.images, features, temperature)
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


@dataclasses.dataclass
class ServedPrediction:
    """A prediction for one input, or the cluster that cannot serve it while it is withdrawn."""

    label: int | None
    cluster: str
    withdrawn: bool


def predict_serving(model: ModelVersion, backbone: Backbone, images: torch.Tensor, withdrawn: set[str],
                    temperature: float | None = None) -> list[ServedPrediction]:
    """Predict like :func:`predict`, without using any cluster in ``withdrawn``.

    An input whose nearest prototype is withdrawn gets no label. Other inputs mix only the
    clusters that are not withdrawn, so no withdrawn prompt or head touches any answer.
    """
    if model.prediction == ENSEMBLE or not withdrawn:
        prediction = predict(model, backbone, images, temperature=temperature)
        return [ServedPrediction(int(label), cluster, False)
                for label, cluster in zip(prediction.labels, prediction.clusters)]

    served = model.served_clusters
    features = backbone.embed_images(images)
    if temperature is None:
        temperature = model.routing_temperature
    weights = routing_weights(features, np.stack([c.prototype for c in served]), temperature)
    nearest = weights.argmax(1)
    blocked = np.array([cluster.key in withdrawn for cluster in served])
    weights[:, blocked] = 0.0
    serving = ~blocked[nearest]
    weights[serving] /= weights[serving].sum(1, keepdims=True)

    mixture = _mix_clusters(model, backbone, images, weights)
    return [ServedPrediction(int(mixture[i].argmax()) if serving[i] else None, served[nearest[i]].key, not serving[i])
            for i in range(len(images))]
