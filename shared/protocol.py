"""Messages between the server engine and an owner, independent of how they travel.

A :class:`Task` or :class:`Reply` is a set of named numpy arrays plus a flat config of scalars
and strings: exactly what a Flower ``RecordDict`` with one ``ArrayRecord`` and one
``ConfigRecord`` holds, and what an in-process call passes by reference.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

# Task kinds; under Flower each becomes the action of a "query" or "train" message.
HELLO = "hello"          # owner id, sample count and backbone hash
SUMMARIZE = "summarize"  # local k-means centroids and counts of the owner's features
ASSIGN = "assign"        # per-cluster sample counts and digests under given prototypes
TRAIN = "train"          # local epochs on each listed cluster's prompt and head
TASK_KINDS = (HELLO, SUMMARIZE, ASSIGN, TRAIN)

# Phases of a train task: the head alone on cached features, then prompt and head together.
WARMUP_PHASE = "warmup"
PROMPT_PHASE = "prompt"


@dataclasses.dataclass
class Task:
    """A request to one owner."""

    kind: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Reply:
    """An owner's reply to a :class:`Task`; ``error`` is set instead of results on failure."""

    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    error: str = ""


def cluster_array_name(cluster_key: str, parameter: str) -> str:
    """Return the array name of a cluster parameter inside a train task (``c/<key>/<name>``)."""
    return f"c/{cluster_key}/{parameter}"


def split_cluster_arrays(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Group ``c/<key>/<name>`` arrays by cluster key."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        if name.startswith("c/"):
            _, key, parameter = name.split("/", 2)
            grouped.setdefault(key, {})[parameter] = value
    return grouped


def dumps(value: Any) -> str:
    """Encode a JSON config value canonically (sorted keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
