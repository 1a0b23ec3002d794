"""Training and unlearning jobs of a deployed federation, run by the ServerApp over the Grid.

The control service queues jobs in the state database; the job launcher submits one Flower run
per job, and the run's ServerApp calls :func:`run_state_job`. A job's outcome (the published
model version, the job's result and, for an unlearning job, the signed receipt) is committed in
one transaction. Each training round is checkpointed, so a job whose process died resumes after
its last completed round and reaches the same tensors.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..client.owners import backbone_for
from ..shared import protocol
from ..shared.config import JobConfig
from ..shared.errors import LmeraserError
from ..shared.flower_codec import reply_from_message
from ..shared.identity import fingerprint, load_private_key
from ..shared.prompt import PARAMETER_NAMES
from ..shared.protocol import Reply, Task
from .app import GridTransport
from .federation import Federation
from .ledger import MembershipLedger
from .model import ModelStore, atomic_write
from .receipts import Receipt, sign_receipt
from .state import DONE, FAILED, TRAIN, UNLEARN, Job, StateDB

logger = logging.getLogger(__name__)

SIGNING_KEY_FILE = "server-signing.key"
LOCK_FILE = "job.lock"
CHECKPOINT_DIR = "checkpoints"


@contextlib.contextmanager
def job_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's job lock: one job runs at a time, and a second ServerApp waits
    here until the first exits (the kernel releases the lock when a process dies)."""
    with open(state_dir / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class FileCheckpoint:
    """Training state after each round, in ``checkpoints/<job>/``, for :class:`Federation`.

    A checkpoint belongs to one set of clusters and one ledger; a checkpoint of another run
    (after the base model changed, say) is ignored. Files are written atomically, the tensors
    before the JSON that names their hash, so a crash leaves the previous checkpoint usable.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fingerprint = ""

    @staticmethod
    def _fingerprint(keys: list[str], ledger: MembershipLedger) -> str:
        payload = json.dumps({"keys": sorted(keys), "ledger": ledger.to_json()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def load(self, keys: list[str], ledger: MembershipLedger):
        """Return the saved state of this run, or None (see :class:`~.federation.TrainingCheckpoint`)."""
        from safetensors.numpy import load

        self.fingerprint = self._fingerprint(keys, ledger)
        meta_path = self.folder / "checkpoint.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        if meta["fingerprint"] != self.fingerprint:
            logger.warning("checkpoint in %s belongs to another run; starting from the first round", self.folder)
            return None
        raw = (self.folder / "checkpoint.safetensors").read_bytes()
        if hashlib.sha256(raw).hexdigest() != meta["tensors_sha256"]:
            raise LmeraserError(f"checkpoint {self.folder / 'checkpoint.safetensors'} does not match its recorded "
                                f"hash; delete the folder {self.folder} to restart the job from its first round")
        tensors = load(raw)
        parameters = {key: {name: tensors[f"{key}/{name}"] for name in PARAMETER_NAMES} for key in keys}
        return int(meta["rounds_done"]), parameters, int(meta["sample_epochs"]), dict(meta["dropped"])

    def save(self, rounds_done: int, parameters: dict[str, dict[str, np.ndarray]], sample_epochs: int,
             dropped: dict[str, int]) -> None:
        """Write the state after ``rounds_done`` rounds."""
        from safetensors.numpy import save

        self.folder.mkdir(parents=True, exist_ok=True)
        raw = save({f"{key}/{name}": np.ascontiguousarray(value) for key, values in parameters.items()
                    for name, value in values.items()})
        atomic_write(self.folder / "checkpoint.safetensors", raw)
        meta = {"fingerprint": self.fingerprint, "rounds_done": rounds_done, "sample_epochs": sample_epochs,
                "dropped": dropped, "tensors_sha256": hashlib.sha256(raw).hexdigest()}
        atomic_write(self.folder / "checkpoint.json", json.dumps(meta, sort_keys=True).encode())


class DeployedTransport(GridTransport):
    """A :class:`GridTransport` that admits only enrolled, active owners on their enrolled nodes.

    Every node is asked for its owner id and backbone hash. A node is rejected, by owner and
    node name, when its owner is not enrolled or was revoked, when the SuperLink registered it
    under another owner's node name, or when its backbone differs from the server's.
    """

    def __init__(self, grid, job: JobConfig, state: StateDB, backbone_sha256: str,
                 connect_timeout: float = 120.0) -> None:
        super().__init__(grid, job, timeout=job.round_timeout or None, min_nodes=1, connect_timeout=connect_timeout)
        self.state = state
        self.backbone_sha256 = backbone_sha256
        self.rejected: dict[str, str] = {}

    def _node_names(self) -> dict[int, str]:
        try:
            return {int(node.node_id): str(node.name) for node in self.grid.get_nodes() if node.name}
        except (AttributeError, TypeError):  # a Grid without registered-node details
            return {}

    def discover(self) -> dict[str, int]:
        """Greet every connected node and keep the admissible ones; return owner -> node id."""
        node_ids = sorted(self.grid.get_node_ids())
        names = self._node_names()
        config = {"backbone-sha256": self.backbone_sha256}
        replies = self.grid.send_and_receive(self._messages({n: Task(protocol.HELLO, config) for n in node_ids}),
                                             timeout=self.timeout or 60.0)
        nodes: dict[str, int] = {}
        for message in replies:
            node_id = message.metadata.src_node_id
            if message.has_error():  # the node went away; the next discovery may find it again
                logger.warning("node %s did not reply to the hello: %s", node_id, message.error.reason)
                continue
            reply = reply_from_message(message)
            owner = str(reply.config.get("owner", ""))
            reason = self._rejection(owner, names.get(node_id, ""), reply)
            if reason:
                label = owner or f"node {node_id}"
                if self.rejected.get(label) != reason:
                    logger.error("rejected %s: %s", label, reason)
                self.rejected[label] = reason
                continue
            nodes[owner] = node_id
        self.nodes = nodes
        logger.info("admitted owners %s on %d connected nodes", sorted(nodes), len(node_ids))
        return nodes

    def _rejection(self, owner: str, node_name: str, reply: Reply) -> str:
        if reply.error:
            return reply.error
        enrolled = self.state.owner(owner)
        if enrolled is None:
            return f"owner {owner!r} is not enrolled; enrol it with 'lmeraser owner enrol' first"
        if enrolled.status != "active":
            return f"owner {owner!r} was revoked at {time.ctime(enrolled.revoked_at or 0)} and may not rejoin"
        if node_name and node_name != enrolled.node_name:
            return (f"node {node_name!r} claims owner {owner!r}, whose enrolled node is {enrolled.node_name!r}; "
                    f"start the SuperNode with the owner's own node key")
        return ""

    def require(self, owners: list[str], timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds until every owner in ``owners`` is admitted or rejected;
        return the admitted ones."""
        deadline = time.monotonic() + timeout
        while True:
            present = sorted(set(owners) & set(self.discover()))
            waiting = set(owners) - set(present) - set(self.rejected)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        missing = sorted(set(owners) - set(present) - set(self.rejected))
        if missing:
            logger.warning("owners %s did not connect within %.0f s", missing, timeout)
        return present

    def send(self, tasks: dict[str, Task]) -> dict[str, Reply]:
        """Send tasks to admitted owners; an owner without a connected node gets none and no reply."""
        absent = sorted(owner for owner in tasks if owner not in self.nodes)
        if absent:
            logger.warning("owners %s have no connected node; they receive no task", absent)
        return super().send({owner: task for owner, task in tasks.items() if owner in self.nodes})


class JobRunner:
    """Run one job of the state database over a transport and commit its outcome.

    Parameters
    ----------
    state : StateDB
        The server's state database.
    transport : DeployedTransport
        Reaches the owners' nodes.
    job : Job
        The job to run; its ``config`` is the federation's :class:`JobConfig`.
    connect_timeout : float, default 120.0
        Seconds to wait for the owners a job needs to connect.
    """

    def __init__(self, state: StateDB, transport: DeployedTransport, job: Job, connect_timeout: float = 120.0) -> None:
        self.state = state
        self.store = ModelStore(state.state_dir)
        self.transport = transport
        self.job = job
        self.config = JobConfig.from_mapping(job.config)
        self.connect_timeout = connect_timeout
        if not self.config.class_names:
            raise LmeraserError("the federation's job configuration names no classes; set classes in the "
                                "server configuration (for example classes=\"0,1,2,3,4,5,6,7,8,9\")")
        self.backbone = backbone_for(self.config)
        self.federation = Federation(transport, self.config, self.backbone, self.config.class_names, progress=False)
        self.federation.checkpoint = FileCheckpoint(state.state_dir / CHECKPOINT_DIR / str(job.id))
        self.federation.on_round = self._record_progress

    def _record_progress(self, description: str, done: int, total: int) -> None:
        self.state.set_progress(self.job.id, {"phase": description, "done": done, "total": total})

    def run(self) -> dict[str, Any]:
        """Run the job to its end and return its result."""
        if self.job.kind == TRAIN:
            return self._train()
        if self.job.kind == UNLEARN:
            return self._unlearn()
        raise LmeraserError(f"job {self.job.id} has unknown kind {self.job.kind!r}; expected train or unlearn")

    def _train(self) -> dict[str, Any]:
        enrolled = [owner.owner for owner in self.state.owners(status="active")]
        if not enrolled:
            raise LmeraserError("no enrolled owners to train with; owners enrol with 'lmeraser owner enrol'")
        owners = self.transport.require(enrolled, self.connect_timeout)
        if not owners:
            raise LmeraserError(f"none of the enrolled owners {enrolled} connected with an admissible node; "
                                f"rejected: {self.transport.rejected or 'none'}")

        parent = self.state.current_version()
        model, cost = self.federation.fit(owners, "routed", check=False)
        if parent:
            model.parent = parent
        version = self.store.save(model)
        result = {"version": version, "owners": owners, "missing": sorted(set(enrolled) - set(owners)),
                  "rejected": self.transport.rejected, "cost": cost.to_json(),
                  "ledger": model.ledger.to_json(), "clusters": len(model.served_clusters)}
        with self.state.transaction() as connection:
            self.state.publish(connection, version, parent, self.job.id)
            self.state.finish_job(connection, self.job.id, result)
            self.state.audit.append("training", {"job": self.job.id, "version": version, "owners": owners,
                                                 "sample_epochs": cost.sample_epochs})
        logger.info("job %d trained model %s on owners %s", self.job.id, version[:12], owners)
        return result

    def _unlearn(self) -> dict[str, Any]:
        owner = self.job.owner or ""
        revocation = self.state.revocation(owner=owner)
        if revocation is None:
            raise LmeraserError(f"job {self.job.id} unlearns owner {owner!r} but no revocation of it is recorded")
        base = self.job.base_version or ""
        started = time.time()

        if base:
            model = self.store.load(base)
            if model.config_fingerprint != self.config.training_fingerprint():
                raise LmeraserError(f"the server's job settings changed since model {base[:12]} was trained, and "
                                    f"unlearning must use the settings of the training; restore them in "
                                    f"server.json ('lmeraser server init' with the original --set values)")
            needed = sorted({item.owner for item in model.summaries} - {owner})
            self.transport.require(needed, self.connect_timeout)
            updated, report = self.federation.revoke(model, owner, parent=base)
            version = self.store.save(updated)
            retrained, contacted, dropped = report.retrained, sorted(self.federation.contacted), report.dropped
            sample_epochs = report.cost.sample_epochs
            report_json = report.to_json()
        else:
            version, retrained, contacted, dropped, sample_epochs, report_json = "", [], [], [], 0, {}

        completed_at = time.time()
        signing_key = load_private_key(self.state.state_dir / SIGNING_KEY_FILE)
        receipt = Receipt(owner=owner, request_hash=revocation.request_hash, accepted_at=revocation.accepted_at,
                          completed_at=completed_at, clusters_retrained=tuple(retrained),
                          owners_contacted=tuple(contacted), sample_epochs=sample_epochs, old_model=base,
                          new_model=version, server_key=fingerprint(signing_key.public_key()),
                          clusters_dropped=tuple(dropped))
        document = sign_receipt(signing_key, receipt)
        result = {"version": version, "base": base, "revocation": report_json,
                  "seconds": completed_at - started, "receipt": document}
        with self.state.transaction() as connection:
            if version and version != base:
                self.state.publish(connection, version, base, self.job.id)
            self.state.finish_job(connection, self.job.id, result)
            self.state.attach_receipt(connection, revocation.request_hash, document, completed_at)
        logger.info("job %d unlearned owner %s: retrained %d clusters, new model %s", self.job.id, owner,
                    len(retrained), version[:12] or "-")
        return result


def run_state_job(grid, state_dir: str | Path, job_id: int) -> None:
    """Run job ``job_id`` of the state directory over ``grid`` (the ServerApp's entry point).

    A job that already has an outcome is left alone, so a job submitted twice runs once.
    """
    state_dir = Path(state_dir)
    state = StateDB(state_dir)
    with job_lock(state_dir):
        atomic_write(state_dir / "serverapp.pid", str(os.getpid()).encode())
        job = state.job(job_id)
        if job.status in (DONE, FAILED):
            logger.info("job %d is already %s; nothing to do", job_id, job.status)
            return
        config = JobConfig.from_mapping(job.config)
        torch.set_num_threads(config.threads)
        job = state.start_job(job_id, state.current_version() if job.kind == UNLEARN else None)
        logger.info("job %d (%s) attempt %d starting", job.id, job.kind, job.attempts)
        from .settings import ServerSettings

        connect_timeout = ServerSettings.load(state_dir).connect_timeout
        backbone = backbone_for(config)
        transport = DeployedTransport(grid, config, state, backbone.sha256, connect_timeout=connect_timeout)
        try:
            JobRunner(state, transport, job, connect_timeout=connect_timeout).run()
        except LmeraserError as error:
            logger.error("job %d attempt %d failed: %s", job.id, job.attempts, error)
            state.record_error(job.id, str(error))
            raise
