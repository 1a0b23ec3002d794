"""Baselines that are not federated prompt training: a linear probe on frozen features."""

from __future__ import annotations

import logging

import numpy as np

from ..shared.backbone import Backbone
from ..shared.data import ImageSet

logger = logging.getLogger(__name__)


def linear_probe_accuracy(backbone: Backbone, train: ImageSet, test: ImageSet,
                          test_features: np.ndarray | None = None, regularization: float = 0.1) -> float:
    """Fit logistic regression (inverse regularisation ``C``) on pooled training features and
    return its test accuracy.

    The probe trains on the pooled training set, which no federated method can do. It is a
    reference for what the frozen features alone give, not a federated baseline.
    """
    from sklearn.linear_model import LogisticRegression

    train_features = backbone.embed_images(train.images)
    if test_features is None:
        test_features = backbone.embed_images(test.images)
    probe = LogisticRegression(C=regularization, max_iter=2000).fit(train_features, train.labels)
    accuracy = float((probe.predict(test_features) == test.labels).mean())
    logger.info("linear probe on %d frozen features: accuracy %.4f", train_features.shape[1], accuracy)
    return accuracy
