"""An owner's worker: runs the server's tasks over the owner's private images.

Only aggregates leave the worker: k-means centroids with counts, per-cluster sample counts
with a digest of which samples they are, and trained prompt and head parameters.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time

import numpy as np
import torch

from ..shared import protocol
from ..shared.backbone import Backbone
from ..shared.config import JobConfig
from ..shared.data import ImageSet
from ..shared.errors import BackboneError, LmeraserError
from ..shared.prompt import PARAMETER_NAMES
from ..shared.protocol import Reply, Task
from ..shared.seeding import derive_seed, generator
from .training import train_cluster, train_head

logger = logging.getLogger(__name__)


class OwnerWorker:
    """Serve one owner's tasks.

    Parameters
    ----------
    owner_id : str
        The owner's id, as the server's ledger names it.
    data : ImageSet
        The owner's training images; they never leave this object.
    backbone : Backbone
        The frozen backbone; its hash must match the server's.
    job : JobConfig
        Training configuration shared by the federation.
    """

    def __init__(self, owner_id: str, data: ImageSet, backbone: Backbone, job: JobConfig) -> None:
        if len(data) == 0:
            raise LmeraserError(f"owner {owner_id} has zero training samples; give the owner images or "
                                f"leave it out of the federation")
        self.owner_id = owner_id
        self.data = data
        self.backbone = backbone
        self.job = job
        self._groups: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ local state

    @functools.cached_property
    def features(self) -> np.ndarray:
        """Pooled backbone features (N, d) of the owner's images, without any prompt."""
        started = time.perf_counter()
        features = self.backbone.embed_images(self.data.images)
        logger.debug("owner %s embedded %d images in %.1fs", self.owner_id, len(features),
                     time.perf_counter() - started)
        return features

    def local_groups(self, summary_k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Return k-means centroids (k, d) of the owner's features and each sample's group (N,).

        ``k`` is ``summary_k`` capped by the number of distinct feature vectors. The seed derives
        from the global seed and the owner id, so the groups are the same in every run.
        """
        cache_key = (summary_k, seed)
        if cache_key not in self._groups:
            from sklearn.cluster import KMeans

            features = self.features.astype(np.float64)
            distinct = len(np.unique(features.round(6), axis=0))
            k = max(1, min(summary_k, distinct))
            random_state = derive_seed(seed, "summary", self.owner_id) % (2 ** 32)
            kmeans = KMeans(n_clusters=k, n_init=4, random_state=random_state).fit(features)
            self._groups[cache_key] = (kmeans.cluster_centers_.astype(np.float32), kmeans.labels_.astype(np.int64))
        return self._groups[cache_key]

    def route(self, item_clusters: list[str], summary_k: int, seed: int) -> dict[str, np.ndarray]:
        """Return the sample indices of each cluster: a sample goes where its k-means group went."""
        _, groups = self.local_groups(summary_k, seed)
        if len(item_clusters) != groups.max() + 1:
            raise LmeraserError(f"owner {self.owner_id} has {groups.max() + 1} summary groups but the server "
                                f"assigned {len(item_clusters)}; the server's summaries are out of date")
        routes: dict[str, list[np.ndarray]] = {}
        for group, key in enumerate(item_clusters):
            routes.setdefault(key, []).append(np.flatnonzero(groups == group))
        return {key: np.sort(np.concatenate(parts)) for key, parts in routes.items()}

    def digest(self, indices: np.ndarray) -> str:
        """Return a SHA-256 of the sample ids and labels at ``indices`` (names which samples, not what)."""
        payload = [(self.data.sample_ids[i], int(self.data.labels[i])) for i in indices]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    # ------------------------------------------------------------------ tasks

    def handle(self, task: Task) -> Reply:
        """Check the backbone hash, run ``task`` and return its reply; input errors become replies."""
        try:
            expected = task.config.get("backbone-sha256", "")
            if expected and expected != self.backbone.sha256:
                raise BackboneError(
                    f"owner {self.owner_id}'s backbone {self.backbone.name} has sha256 "
                    f"{self.backbone.sha256[:12]}, the server expects {expected[:12]}; "
                    f"load the same weights on both sides"
                )
            handler = {
                protocol.HELLO: self.hello,
                protocol.SUMMARIZE: self.summarize,
                protocol.ASSIGN: self.assign,
                protocol.TRAIN: self.train,
            }.get(task.kind)
            if handler is None:
                raise LmeraserError(f"unknown task kind {task.kind!r}; expected one of {protocol.TASK_KINDS}")
            return handler(task)
        except LmeraserError as error:
            logger.error("owner %s rejected task %s: %s", self.owner_id, task.kind, error)
            return Reply(config={"owner": self.owner_id}, error=str(error))

    def hello(self, task: Task) -> Reply:
        """Return the owner id, its sample count and backbone identity."""
        return Reply(config={
            "owner": self.owner_id,
            "samples": len(self.data),
            "backbone": self.backbone.name,
            "backbone-sha256": self.backbone.sha256,
        })

    def summarize(self, task: Task) -> Reply:
        """Return at most ``summary-k`` k-means centroids of the owner's features and their counts."""
        centroids, groups = self.local_groups(int(task.config["summary-k"]), int(task.config["seed"]))
        counts = np.bincount(groups, minlength=len(centroids)).astype(np.int64)
        logger.info("owner %s summarised %d samples into %d centroids", self.owner_id, len(groups), len(centroids))
        return Reply(config={"owner": self.owner_id}, arrays={"centroids": centroids, "counts": counts})

    def _routes_from(self, task: Task) -> dict[str, np.ndarray]:
        return self.route(json.loads(task.config["item-clusters"]), int(task.config["summary-k"]),
                          int(task.config["seed"]))

    def assign(self, task: Task) -> Reply:
        """Return, per cluster, how many samples route there, a digest of which ones and their labels."""
        routes = self._routes_from(task)
        num_classes = int(task.config["num-classes"])
        report = {
            key: [int(len(idx)), self.digest(idx), np.bincount(self.data.labels[idx], minlength=num_classes).tolist()]
            for key, idx in routes.items() if len(idx)
        }
        logger.info("owner %s contributes %d samples to clusters %s", self.owner_id, len(self.data),
                    {key[:8]: value[0] for key, value in report.items()})
        return Reply(config={"owner": self.owner_id, "routes": protocol.dumps(report)})

    def train(self, task: Task) -> Reply:
        """Train each listed cluster on the samples routed to it: the head alone on cached features
        in the ``warmup`` phase, the prompt and head through the backbone in the ``prompt`` phase."""
        routes = self._routes_from(task)
        clusters = protocol.split_cluster_arrays(task.arrays)
        seed, round_number = int(task.config["seed"]), int(task.config["round"])
        phase = str(task.config.get("phase", protocol.PROMPT_PHASE))
        if phase not in (protocol.WARMUP_PHASE, protocol.PROMPT_PHASE):
            raise LmeraserError(f"unknown training phase {phase!r}; expected warmup or prompt")
        arrays: dict[str, np.ndarray] = {}
        samples: dict[str, int] = {}
        losses: dict[str, float] = {}

        for key in sorted(clusters):
            indices = routes.get(key, np.zeros(0, dtype=np.int64))
            if len(indices) == 0:
                raise LmeraserError(f"owner {self.owner_id} has no samples routed to cluster {key[:12]}; "
                                    f"the server's ledger is out of date")
            current = {name: clusters[key][name] for name in PARAMETER_NAMES}
            shuffle = generator(seed, "shuffle", key, phase, round_number, self.owner_id)
            if phase == protocol.WARMUP_PHASE:
                parameters, loss = train_head(current, self.features[indices], self.data.labels[indices],
                                              epochs=self.job.warmup_epochs, batch_size=self.job.batch_size,
                                              learning_rate=self.job.warmup_lr, shuffle=shuffle)
            else:
                parameters, loss = train_cluster(
                    self.backbone, current, self.data.images[torch.from_numpy(indices)], self.data.labels[indices],
                    num_classes=int(task.config["num-classes"]), prompt_width=self.job.prompt_width,
                    epochs=self.job.local_epochs, batch_size=self.job.batch_size,
                    prompt_lr=self.job.prompt_lr, head_lr=self.job.head_lr, shuffle=shuffle,
                )
            for name, value in parameters.items():
                arrays[protocol.cluster_array_name(key, name)] = value
            samples[key], losses[key] = int(len(indices)), loss
            logger.info("owner %s %s round %d cluster %s: %d samples, loss %.4f", self.owner_id, phase,
                        round_number, key[:8], len(indices), loss)

        return Reply(config={"owner": self.owner_id, "samples": protocol.dumps(samples),
                             "losses": protocol.dumps(losses)}, arrays=arrays)
