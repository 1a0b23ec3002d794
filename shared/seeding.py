"""Content-derived seeds: every random choice is a function of the global seed and names.

Seeds never depend on a position in a list, so renumbering clusters or owners, or removing one,
leaves the seeds of everything else unchanged.
"""

from __future__ import annotations

import hashlib
import json

import torch


def derive_seed(global_seed: int, *parts: str | int) -> int:
    """Return a 63-bit seed from ``global_seed`` and the labelled ``parts`` (stable across runs)."""
    payload = json.dumps([global_seed, *parts], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big") >> 1


def generator(global_seed: int, *parts: str | int) -> torch.Generator:
    """Return a CPU torch generator seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(global_seed, *parts))
