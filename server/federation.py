"""The training and unlearning engine: summaries, clustering, assignment, per-cluster FedAvg.

The engine talks to owners only through a :class:`~lmeraser.server.transport.Transport`, so the
same code drives in-process workers, Flower's Simulation Engine and real SuperNodes.

Exactness rules followed here (a revocation must give the tensors of a fresh run without the
revoked owner):

- every seed of a cluster derives from the global seed and the cluster's content key;
- aggregation sums members in sorted owner-id order, never in reply order;
- a cluster keeps its trained prompt and head after a revocation only if its key (its member
  summaries) and its ledger entry (members, counts, sample digests) are both unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..shared import protocol
from ..shared.backbone import Backbone
from ..shared.config import JobConfig
from ..shared.errors import LmeraserError, RevocationError
from ..shared.prompt import PARAMETER_NAMES, initial_parameters
from ..shared.protocol import Reply, Task
from ..shared.seeding import derive_seed
from .clustering import Cluster, SummaryItem, cluster_summaries, make_cluster
from .ledger import Contribution, MembershipLedger
from .model import ENSEMBLE, ROUTED, ModelVersion
from .transport import Transport

logger = logging.getLogger(__name__)

STRATEGIES = ("routed", "global", "random")


class OwnerTaskError(LmeraserError):
    """An owner replied with an error instead of a result."""


class TrainingCheckpoint(Protocol):
    """Durable record of a training run's last completed round."""

    def load(self, keys: list[str], ledger: MembershipLedger
             ) -> tuple[int, dict[str, dict[str, np.ndarray]], int, dict[str, int]] | None:
        """Return ``(rounds done, parameters, sample-epochs, dropped owners' completed rounds)``
        saved for this run of ``keys`` and ``ledger``, or None to start from the beginning."""
        ...

    def save(self, rounds_done: int, parameters: dict[str, dict[str, np.ndarray]], sample_epochs: int,
             dropped: dict[str, int]) -> None:
        """Persist the state after ``rounds_done`` rounds."""
        ...


@dataclasses.dataclass
class Cost:
    """Cost of a training or unlearning run.

    Attributes
    ----------
    clusters_trained : int
        Clusters trained from initialisation.
    owners_contacted : int
        Distinct owners that received any task.
    sample_epochs : int
        Sum over trained clusters and members of routed samples x local epochs x rounds.
    wall_seconds : float
        Wall-clock time of the run.
    round_seconds : list of float
        Wall-clock time of each training round (sending the tasks to aggregating the replies).
    """

    clusters_trained: int = 0
    owners_contacted: int = 0
    sample_epochs: int = 0
    wall_seconds: float = 0.0
    round_seconds: list[float] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the fields as a dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RevocationReport:
    """Outcome of revoking one owner, with the cost of the same change done by full retraining."""

    owner: str
    already_revoked: bool
    clusters_before: int
    clusters_after: int
    kept: list[str]
    retrained: list[str]
    dropped: list[str]
    cost: Cost
    full_retrain: Cost

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["cost"], data["full_retrain"] = self.cost.to_json(), self.full_retrain.to_json()
        return data


class Federation:
    """Drive a federation of owners through training and revocation.

    Parameters
    ----------
    transport : Transport
        Delivers tasks to owners.
    job : JobConfig
        Clustering and training configuration.
    backbone : Backbone
        The server's copy of the frozen backbone; owners must hold the same hash.
    classes : list of str
        Class names of the task.
    progress : bool, default True
        Show progress bars for training rounds.

    Attributes
    ----------
    checkpoint : TrainingCheckpoint or None
        Saves each training round and restores the last one saved, so that a restarted job
        resumes where it stopped.
    on_round : callable or None
        Called as ``on_round(description, rounds_done, rounds_total)`` after every round.
    """

    def __init__(self, transport: Transport, job: JobConfig, backbone: Backbone, classes: list[str],
                 progress: bool = True) -> None:
        self.transport = transport
        self.job = job
        self.backbone = backbone
        self.classes = list(classes)
        self.progress = progress
        self.contacted: set[str] = set()
        self.round_seconds: list[float] = []
        self.checkpoint: TrainingCheckpoint | None = None
        self.on_round: Callable[[str, int, int], None] | None = None

    # ------------------------------------------------------------------ messaging

    def _config(self, **extra: Any) -> dict[str, Any]:
        return {"seed": self.job.seed, "backbone-sha256": self.backbone.sha256,
                "num-classes": len(self.classes), **extra}

    def _send(self, tasks: dict[str, Task], allow_missing: bool = False) -> dict[str, Reply]:
        self.contacted.update(tasks)
        replies = self.transport.send(tasks)
        missing = sorted(set(tasks) - set(replies))
        if missing and not allow_missing:
            raise OwnerTaskError(f"no reply from owners {missing} to task {next(iter(tasks.values())).kind}")
        errors = {owner: reply.error for owner, reply in replies.items() if reply.error}
        if errors:
            details = "; ".join(f"{owner}: {error}" for owner, error in sorted(errors.items()))
            raise OwnerTaskError(f"owners rejected the task: {details}")
        return replies

    # ------------------------------------------------------------------ phases

    def check_owners(self, owners: list[str]) -> dict[str, int]:
        """Check every owner's backbone hash and return its training-sample count."""
        replies = self._send({owner: Task(protocol.HELLO, self._config()) for owner in owners})
        return {owner: int(reply.config["samples"]) for owner, reply in replies.items()}

    def collect_summaries(self, owners: list[str]) -> list[SummaryItem]:
        """Ask each owner for its k-means summary; return the items in canonical order."""
        replies = self._send({owner: Task(protocol.SUMMARIZE, self._config(**{"summary-k": self.job.summary_k}))
                              for owner in owners})
        items = []
        for owner in sorted(replies):
            centroids, counts = replies[owner].arrays["centroids"], replies[owner].arrays["counts"]
            items.extend(SummaryItem(owner, i, centroids[i], int(counts[i])) for i in range(len(counts)))
        logger.info("collected %d summary items from %d owners", len(items), len(replies))
        return items

    def form_clusters(self, strategy: str, summaries: list[SummaryItem],
                      num_clusters: int = 0) -> tuple[list[Cluster], dict[str, list[str]]]:
        """Group summaries into clusters; return them and, per owner, the cluster key of each item.

        An owner's training samples go to the cluster of the local k-means group they belong
        to, so its contribution to one cluster never depends on another cluster's prototype.

        ``routed`` clusters summaries adaptively, and ``global`` puts everything in one cluster.
        ``random`` assigns each owner to one of ``num_clusters`` groups by a hash of its id, so
        removing one owner never moves another.
        """
        if strategy == "routed":
            clusters = cluster_summaries(summaries, self.job.distance_factor, self.job.min_cluster_size,
                                         self.job.max_cluster_fraction)
        elif strategy == "global":
            clusters = [make_cluster(summaries)] if summaries else []
        elif strategy == "random":
            groups: dict[int, list[SummaryItem]] = {}
            for item in summaries:
                group = derive_seed(self.job.seed, "random-group", item.owner) % max(num_clusters, 1)
                groups.setdefault(group, []).append(item)
            clusters = sorted((make_cluster(items) for items in groups.values()), key=lambda c: c.key)
        else:
            raise LmeraserError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")

        routing: dict[str, list[str]] = {}
        for cluster in clusters:
            for item in cluster.items:
                keys = routing.setdefault(item.owner, [])
                keys.extend([""] * (item.index + 1 - len(keys)))
                keys[item.index] = cluster.key
        return clusters, routing

    def _routing_config(self, owner: str, routing: dict[str, list[str]]) -> dict[str, Any]:
        return {"item-clusters": json.dumps(routing[owner]), "summary-k": self.job.summary_k}

    def assign(self, routing: dict[str, list[str]], owners: list[str]) -> MembershipLedger:
        """Have ``owners`` report the samples they contribute to each cluster; return their ledger rows."""
        tasks = {owner: Task(protocol.ASSIGN, self._config(**self._routing_config(owner, routing)))
                 for owner in owners}
        ledger = MembershipLedger()
        for owner, reply in sorted(self._send(tasks).items()):
            for key, (samples, digest, labels) in json.loads(reply.config["routes"]).items():
                ledger.record(key, owner, Contribution(int(samples), digest, tuple(labels)))
        return ledger

    def train(self, keys: list[str], routing: dict[str, list[str]], ledger: MembershipLedger,
              description: str = "training") -> tuple[dict[str, dict[str, np.ndarray]], int]:
        """Train each cluster in ``keys`` from its seeded initialisation by FedAvg among its members.

        All listed clusters advance together, one message per owner per round carrying every
        cluster the owner belongs to: first ``warmup_rounds`` rounds of the head alone on cached
        features, then ``rounds`` rounds of prompt and head. Returns the parameters per key and
        the samples x epochs spent in backbone passes (warm-up epochs run on cached features
        and are not counted).

        With ``round-timeout`` set, an owner that does not reply in time sits out the remaining
        rounds and ``ledger`` records how many it completed. An owner the ledger already marks
        that way takes part in exactly that many rounds again, so retraining replays the run.
        With a :attr:`checkpoint`, training resumes after the last saved round.
        """
        if not keys:
            return {}, 0
        num_classes = len(self.classes)
        owners = sorted({owner for key in keys for owner in ledger.members(key)})
        member_of = {owner: [key for key in keys if owner in ledger.members(key)] for owner in owners}
        routing_config = {owner: self._routing_config(owner, routing) for owner in owners}
        schedule = ([(protocol.WARMUP_PHASE, r) for r in range(self.job.warmup_rounds)]
                    + [(protocol.PROMPT_PHASE, r) for r in range(self.job.rounds)])
        limit = {owner: len(schedule) for owner in owners}
        for owner in owners:
            if ledger.rounds_completed(owner) >= 0:
                limit[owner] = ledger.rounds_completed(owner)

        first_step, sample_epochs = 0, 0
        restored = self.checkpoint.load(keys, ledger) if self.checkpoint is not None else None
        if restored is not None:
            first_step, parameters, sample_epochs, dropped = restored
            for owner, completed in dropped.items():
                limit[owner] = completed
                ledger.mark_dropped(owner, completed, member_of.get(owner, []))
            logger.info("%s resumes at round %d of %d from its checkpoint", description, first_step + 1, len(schedule))
        else:
            parameters = {key: initial_parameters(self.backbone, num_classes, self.job.prompt_width, self.job.seed, key)
                          for key in keys}

        for step in tqdm(range(first_step, len(schedule)), desc=description, unit="round", disable=not self.progress,
                         leave=False):
            phase, round_number = schedule[step]
            round_started = time.perf_counter()
            participants = [owner for owner in owners if step < limit[owner]]
            tasks = {}
            for owner in participants:
                arrays = {protocol.cluster_array_name(key, name): parameters[key][name]
                          for key in member_of[owner] for name in PARAMETER_NAMES}
                config = self._config(round=round_number, phase=phase, **routing_config[owner])
                tasks[owner] = Task(protocol.TRAIN, config, arrays)
            replies = self._send(tasks, allow_missing=self.job.round_timeout > 0)
            for owner in sorted(set(participants) - set(replies)):
                logger.warning("owner %s did not reply in round %d of %s; it sits out the remaining rounds",
                               owner, step + 1, description)
                limit[owner] = step
                ledger.mark_dropped(owner, step, member_of[owner])

            trained_samples = {owner: json.loads(reply.config["samples"]) for owner, reply in replies.items()}
            for key in keys:
                parameters[key] = self._aggregate(key, ledger, replies, trained_samples, parameters[key])
            if phase == protocol.PROMPT_PHASE:
                sample_epochs += sum(ledger.entries[key][owner].samples for key in keys
                                     for owner in ledger.members(key) if owner in replies) * self.job.local_epochs
            self.round_seconds.append(time.perf_counter() - round_started)
            logger.info("%s %s round %d: %d clusters, %d of %d owners replied", description, phase,
                        round_number + 1, len(keys), len(replies), len(participants))
            if self.checkpoint is not None:
                dropped = {owner: limit[owner] for owner in owners if limit[owner] < len(schedule)}
                self.checkpoint.save(step + 1, parameters, sample_epochs, dropped)
            if self.on_round is not None:
                self.on_round(description, step + 1, len(schedule))
        return parameters, sample_epochs

    def _aggregate(self, key: str, ledger: MembershipLedger, replies: dict[str, Reply],
                   trained_samples: dict[str, dict[str, int]],
                   previous: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Average the replying members' parameters weighted by samples, summing in sorted owner order.

        ``trained_samples`` is each owner's reported sample count per cluster; it must match the
        ledger. A cluster none of whose members replied keeps ``previous``.
        """
        members = [owner for owner in ledger.members(key) if owner in replies]
        if not members:
            return previous
        total = sum(ledger.entries[key][owner].samples for owner in members)
        for owner in members:
            reported = trained_samples[owner][key]
            expected = ledger.entries[key][owner].samples
            if reported != expected:
                raise OwnerTaskError(f"owner {owner} trained cluster {key[:12]} on {reported} samples, "
                                     f"the ledger records {expected}")

        averaged = {}
        for name in PARAMETER_NAMES:
            accumulator = None
            for owner in members:
                value = replies[owner].arrays[protocol.cluster_array_name(key, name)].astype(np.float64)
                term = value * (ledger.entries[key][owner].samples / total)
                accumulator = term if accumulator is None else accumulator + term
            averaged[name] = accumulator.astype(np.float32)
        return averaged

    def _training_sample_epochs(self, keys: list[str], ledger: MembershipLedger) -> int:
        """Return the samples x epochs that :meth:`train` spends on ``keys`` (prompt rounds only)."""
        return sum(ledger.samples(key) for key in keys) * self.job.local_epochs * self.job.rounds

    # ------------------------------------------------------------------ whole runs

    def _model(self, strategy: str, summaries: list[SummaryItem], clusters: list[Cluster],
               routing: dict[str, list[str]], ledger: MembershipLedger, parameters: dict[str, dict[str, np.ndarray]],
               revoked: list[str], parent: str) -> ModelVersion:
        return ModelVersion(
            strategy=strategy, prediction=ENSEMBLE if strategy == "random" else ROUTED,
            backbone=self.backbone.name, backbone_sha256=self.backbone.sha256, input_size=self.backbone.input_size,
            prompt_width=self.job.prompt_width, classes=self.classes,
            config_fingerprint=self.job.training_fingerprint(), summaries=summaries,
            clusters=[c for c in clusters if c.key in parameters], routing=routing, ledger=ledger,
            parameters=parameters, revoked=sorted(revoked), parent=parent,
            routing_temperature=self.job.routing_temperature,
        )

    def fit(self, owners: list[str], strategy: str = "routed", num_clusters: int = 0,
            check: bool = True) -> tuple[ModelVersion, Cost]:
        """Train a model from scratch on ``owners``.

        Parameters
        ----------
        owners : list of str
            Participating owners.
        strategy : {"routed", "global", "random"}, default "routed"
            How clusters are formed (see :meth:`form_clusters`).
        num_clusters : int, default 0
            Groups of the ``random`` strategy.
        check : bool, default True
            Check every owner's backbone first; pass False when the caller has just done so.
        """
        started = time.perf_counter()
        self.contacted = set()
        self.round_seconds = []
        owners = sorted(owners)
        if not owners:
            raise LmeraserError("no owners to train on; the federation needs at least one owner with data")
        if check:
            self.check_owners(owners)
        summaries = self.collect_summaries(owners)
        clusters, routing = self.form_clusters(strategy, summaries, num_clusters)
        ledger = self.assign(routing, owners)

        keys = [cluster.key for cluster in clusters if ledger.members(cluster.key)]
        parameters, sample_epochs = self.train(keys, routing, ledger, description=f"{strategy} training")
        model = self._model(strategy, summaries, clusters, routing, ledger, parameters, [], "")
        cost = Cost(len(keys), len(self.contacted), sample_epochs, time.perf_counter() - started,
                    list(self.round_seconds))
        logger.info("%s model trained: %d clusters, %d owners, %d sample-epochs, %.1fs", strategy, len(keys),
                    len(owners), cost.sample_epochs, cost.wall_seconds)
        return model, cost

    def revoke(self, model: ModelVersion, owner: str, parent: str = "", full_retrain_seconds: float = 0.0,
               dry_run: bool = False) -> tuple[ModelVersion, RevocationReport]:
        """Remove ``owner`` from ``model`` and retrain only the clusters that changed.

        Parameters
        ----------
        model : ModelVersion
            The current model; it is not modified.
        owner : str
            Owner to revoke.
        parent : str, default ""
            Version id of ``model``, recorded as the new version's parent.
        full_retrain_seconds : float, default 0.0
            Measured wall time of a full retrain, reported beside the revocation's own.
        dry_run : bool, default False
            Recluster and reassign but skip training: the report gives the exact cost a real
            revocation would have (wall time aside) and the returned model is ``model`` unchanged.

        Raises
        ------
        RevocationError
            ``owner`` is not part of the model.
        """
        active = sorted({item.owner for item in model.summaries})
        if owner not in active and owner not in model.revoked:
            revoked = f" (already revoked: {', '.join(model.revoked)})" if model.revoked else ""
            raise RevocationError(f"unknown owner {owner!r}; owners of this model: {', '.join(active)}{revoked}")
        if owner in model.revoked:
            logger.info("owner %s is already revoked; nothing to do", owner)
            empty = Cost()
            clusters = len(model.served_clusters)
            return model, RevocationReport(owner, True, clusters, clusters, [c.key for c in model.served_clusters],
                                           [], [], empty, empty)

        started = time.perf_counter()
        self.contacted = set()
        self.round_seconds = []
        summaries = [item for item in model.summaries if item.owner != owner]
        remaining = sorted({item.owner for item in summaries})
        clusters, routing = self.form_clusters(model.strategy, summaries, len(model.served_clusters))

        # Owners whose items all kept their cluster contribute exactly as before: copy their rows.
        changed = [o for o in remaining if routing.get(o) != model.routing.get(o)]
        ledger = MembershipLedger()
        for key, members in model.ledger.entries.items():
            for member, contribution in members.items():
                if member != owner and member not in changed:
                    ledger.record(key, member, contribution)
        if changed:
            fresh = self.assign(routing, changed)
            for key, members in fresh.entries.items():
                for member, contribution in members.items():
                    ledger.record(key, member, contribution)
        # An owner that dropped out of the original training takes part in as many rounds again.
        for member in remaining:
            completed = model.ledger.rounds_completed(member)
            if completed >= 0:
                ledger.mark_dropped(member, completed, ledger.clusters_of(member))

        keys = [cluster.key for cluster in clusters if ledger.members(cluster.key)]
        kept = [k for k in keys if k in model.parameters and ledger.same_membership(k, model.ledger)]
        retrain = [k for k in keys if k not in kept]
        dropped = [c.key for c in model.served_clusters if model.ledger.members(c.key) == [owner]]
        for key in dropped:
            logger.warning("cluster %s had no member but %s; dropped", key[:12], owner)

        if dry_run:
            updated = model
            sample_epochs = self._training_sample_epochs(retrain, ledger)
            self.contacted |= {o for k in retrain for o in ledger.members(k)}
        else:
            parameters = {key: model.parameters[key] for key in kept}
            trained, sample_epochs = self.train(retrain, routing, ledger, description=f"unlearning {owner}")
            parameters.update(trained)
            updated = self._model(model.strategy, summaries, clusters, routing, ledger, parameters,
                                  model.revoked + [owner], parent)

        cost = Cost(len(retrain), len(self.contacted), sample_epochs, time.perf_counter() - started,
                    list(self.round_seconds))
        full = Cost(len(keys), len(remaining), self._training_sample_epochs(keys, ledger), full_retrain_seconds)
        report = RevocationReport(owner, False, len(model.served_clusters), len(keys), kept, retrain, dropped, cost, full)
        logger.info("revoked %s: kept %d clusters, retrained %d, dropped %d; %d sample-epochs vs %d for a full "
                    "retrain", owner, len(kept), len(retrain), len(dropped), cost.sample_epochs, full.sample_epochs)
        return updated, report
