"""Local training of one cluster's prompt and head on the owner's samples routed to it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..shared.backbone import Backbone
from ..shared.data import normalize
from ..shared.prompt import PromptedClassifier


def train_cluster(backbone: Backbone, parameters: dict[str, np.ndarray], images: torch.Tensor,
                  labels: np.ndarray, num_classes: int, prompt_width: int, epochs: int, batch_size: int,
                  prompt_lr: float, head_lr: float, shuffle: torch.Generator) -> tuple[dict[str, np.ndarray], float]:
    """Run ``epochs`` passes of Adam over ``images`` and return the new parameters and mean loss.

    The optimizer state starts fresh on every call, as in federated averaging where only the
    parameters are shared between rounds. Batch order comes from ``shuffle`` alone.
    """
    model = PromptedClassifier(backbone, num_classes, prompt_width)
    model.set_parameters(parameters)
    optimizer = torch.optim.Adam([
        {"params": model.prompt.parameters(), "lr": prompt_lr},
        {"params": model.head.parameters(), "lr": head_lr},
    ])
    criterion = nn.CrossEntropyLoss()
    targets = torch.from_numpy(labels)

    total_loss, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=shuffle)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            inputs = normalize(images[batch], backbone.mean, backbone.std)
            loss = criterion(model(inputs), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach())
            steps += 1
    return model.get_parameters(), total_loss / max(steps, 1)


def train_head(parameters: dict[str, np.ndarray], features: np.ndarray, labels: np.ndarray, epochs: int,
               batch_size: int, learning_rate: float, shuffle: torch.Generator) -> tuple[dict[str, np.ndarray], float]:
    """Train only the linear head on precomputed backbone features; return all parameters and mean loss.

    This is the warm-up phase (linear probing before prompt tuning): a pass costs one small
    matrix product per batch instead of a forward and backward pass through the backbone.
    """
    head = nn.Linear(features.shape[1], parameters["head.weight"].shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(parameters["head.weight"]))
        head.bias.copy_(torch.from_numpy(parameters["head.bias"]))
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    criterion = nn.CrossEntropyLoss()
    inputs, targets = torch.from_numpy(np.ascontiguousarray(features)), torch.from_numpy(labels)

    total_loss, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=shuffle)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = criterion(head(inputs[batch]), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach())
            steps += 1

    updated = dict(parameters)
    updated["head.weight"] = head.weight.detach().numpy().copy()
    updated["head.bias"] = head.bias.detach().numpy().copy()
    return updated, total_loss / max(steps, 1)


@torch.no_grad()
def predict_logits(backbone: Backbone, parameters: dict[str, np.ndarray], images: torch.Tensor,
                   num_classes: int, prompt_width: int, batch_size: int = 256) -> torch.Tensor:
    """Return logits (N, num_classes) of the prompted classifier on uint8 images."""
    model = PromptedClassifier(backbone, num_classes, prompt_width)
    model.set_parameters(parameters)
    outputs = [model(normalize(images[i:i + batch_size], backbone.mean, backbone.std))
               for i in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.zeros(0, num_classes)
