"""The deployed server: the owners' control service and the job launcher, in one process.

``lmeraser server start`` runs :func:`serve`. The control service (:class:`ControlService`)
checks and commits owners' requests. The launcher (:class:`JobLauncher`) submits every job that
has no outcome yet to the SuperLink, one at a time, and resubmits it after a failure. Both work
on the state database, so a restarted server carries on with whatever was accepted before.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ..shared.errors import ControlError, IdentityError, LmeraserError
from ..shared.identity import (EnrolmentRequest, RevocationRequest, fingerprint, public_key_from_text,
                               verify_payload)
from .model import ModelStore, ModelVersion, atomic_write
from .settings import ServerSettings
from .state import DONE, FAILED, PENDING, RUNNING, StateDB
from .superlink import SuperLinkAdmin

logger = logging.getLogger(__name__)

PID_FILE = "server.pid"


def _check_node_key(node_key: str, owner: str) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(node_key.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ControlError("invalid", f"node key of owner {owner!r} is not an OpenSSH public key ({error}); "
                                      f"create one with 'lmeraser owner keygen'") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ControlError("invalid", f"node key of owner {owner!r} is a {type(key).__name__}; Flower's SuperNode "
                                      f"authentication needs an EC key (P-384), as 'lmeraser owner keygen' makes")


class ControlService:
    """The owners' control plane: enrolment, revocation, status, receipts and prediction.

    Implements :class:`~lmeraser.server.control.ControlHandler`. Every accepted request is
    committed to the state database before the reply. Rejected requests change nothing.

    Parameters
    ----------
    settings : ServerSettings
        The server's settings.
    state : StateDB
        The state database.
    admin : SuperLinkAdmin
        Registers and unregisters owners' nodes.
    wake : threading.Event, optional
        Set when a job is queued, so the launcher starts it without waiting for its next poll.
    """

    def __init__(self, settings: ServerSettings, state: StateDB, admin: SuperLinkAdmin,
                 wake: threading.Event | None = None) -> None:
        self.settings = settings
        self.state = state
        self.admin = admin
        self.wake = wake or threading.Event()
        self.store = ModelStore(settings.state_dir)
        self._enrol_lock = threading.Lock()
        self._unregister_lock = threading.Lock()

    # ------------------------------------------------------------------ enrolment

    def enrol(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check a self-signed enrolment, register the owner's node and commit the owner."""
        try:
            enrolment = EnrolmentRequest.from_json(request)
            enrolment.check(max_age=self.settings.max_request_age, max_skew=self.settings.max_clock_skew)
        except IdentityError as error:
            raise ControlError("invalid", str(error)) from None
        _check_node_key(enrolment.node_key, enrolment.owner)

        with self._enrol_lock:
            existing = self.state.owner(enrolment.owner)
            if existing is not None:
                raise ControlError("already_exists", f"owner {enrolment.owner!r} is already enrolled (status "
                                                     f"{existing.status}); choose another owner id")
            holder = self.state.find_owner(public_key=enrolment.public_key, node_name=enrolment.node_name)
            if holder is not None:
                field = "public key" if holder.public_key == enrolment.public_key else "node name"
                raise ControlError("already_exists", f"{field} of owner {enrolment.owner!r} is already enrolled "
                                                     f"for owner {holder.owner!r}; every owner needs its own key "
                                                     f"and node name")
            node_id = self.admin.register(enrolment.node_key, enrolment.node_name)
            enrolled_at = time.time()
            self.state.add_owner(enrolment.owner, enrolment.public_key, enrolment.node_name, node_id, enrolled_at)
        return {"owner": enrolment.owner, "fingerprint": fingerprint(enrolment.key()), "enrolled_at": enrolled_at,
                "status": "active", "node_id": node_id}

    # ------------------------------------------------------------------ revocation

    def revoke(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check a signed revocation request, commit it with its unlearning job, withdraw the
        owner's clusters from serving and unregister its node."""
        try:
            revocation = RevocationRequest.from_json(request)
        except IdentityError as error:
            raise ControlError("invalid", str(error)) from None
        owner = self.state.owner(revocation.owner)
        if owner is None:
            raise ControlError("not_found", f"unknown owner {revocation.owner!r}: no owner of that id is enrolled; "
                                            f"check the owner id")
        key = public_key_from_text(owner.public_key)
        try:
            verify_payload(key, revocation.payload(), revocation.signature)
        except IdentityError:
            raise ControlError("permission_denied", f"the signature of the revocation request for owner "
                                                    f"{revocation.owner!r} does not verify with its enrolled key "
                                                    f"({fingerprint(key)}); sign it with the owner's own key, "
                                                    f"unaltered") from None
        try:
            revocation.check(key, max_age=self.settings.max_request_age, max_skew=self.settings.max_clock_skew)
        except IdentityError as error:
            raise ControlError("invalid", str(error)) from None
        request_hash = revocation.request_hash()

        used_by = self.state.nonce_use(revocation.owner, revocation.nonce)
        if used_by is not None:
            raise ControlError("already_exists", f"nonce {revocation.nonce!r} was already used by request "
                                                 f"{used_by[:12]}; a replayed request is rejected, so create a new "
                                                 f"one ('lmeraser owner revoke' does)")
        existing = self.state.revocation(owner=revocation.owner)
        if existing is not None:
            logger.info("owner %s is already revoked (request %s); returning the first request's record",
                        revocation.owner, existing.request_hash[:12])
            return self._revocation_reply(existing.request_hash)

        withdrawn = self._clusters_of(revocation.owner)
        self.state.accept_revocation(revocation.owner, revocation.to_json(), request_hash, withdrawn,
                                     self.settings.job)
        self.wake.set()
        self.unregister_node(revocation.owner)
        return self._revocation_reply(request_hash)

    def _clusters_of(self, owner: str) -> list[str]:
        version = self.state.current_version()
        if not version:
            return []
        return self.store.load(version).ledger.clusters_of(owner)

    def unregister_node(self, owner: str) -> bool:
        """Remove a revoked owner's node from the SuperLink; return whether it is gone.

        A failure (SuperLink down) is logged, and :class:`JobLauncher` retries it.
        """
        with self._unregister_lock:
            record = self.state.owner(owner)
            if record is None or record.node_unregistered or not record.node_id:
                return True
            try:
                self.admin.unregister(record.node_id)
            except ControlError as error:
                logger.error("could not unregister node %s of revoked owner %s yet: %s", record.node_id, owner,
                             error)
                return False
            self.state.mark_unregistered(owner)
            return True

    def _revocation_reply(self, request_hash: str) -> dict[str, Any]:
        record = self.state.revocation(request_hash=request_hash)
        status = self.status("", request_hash)
        return {"request_hash": record.request_hash, "status": status["status"], "accepted_at": record.accepted_at,
                "withdrawn_clusters": record.withdrawn, "receipt": record.receipt}

    # ------------------------------------------------------------------ status and receipts

    def _find(self, owner: str, request_hash: str):
        record = self.state.revocation(owner=owner, request_hash=request_hash)
        if record is None and owner and self.state.owner(owner) is not None:
            raise ControlError("not_found", f"owner {owner!r} is enrolled and active: it has not requested a "
                                            f"revocation")
        if record is None:
            raise ControlError("not_found", f"no revocation for owner {owner!r}" if owner else
                               f"no revocation with request hash {request_hash!r}")
        return record

    def status(self, owner: str, request_hash: str) -> dict[str, Any]:
        """Return the state of a revocation and the progress of its unlearning job."""
        record = self._find(owner, request_hash)
        job = self.state.job(record.job)
        status = {PENDING: "accepted", RUNNING: "running", DONE: "done", FAILED: "failed"}[job.status]
        progress = {"phase": str(job.progress.get("phase", "")), "done": int(job.progress.get("done", 0)),
                    "total": int(job.progress.get("total", 0))}
        return {"request_hash": record.request_hash, "owner": record.owner, "status": status, "progress": progress,
                "accepted_at": record.accepted_at, "completed_at": record.completed_at, "error": job.error}

    def receipt(self, owner: str, request_hash: str) -> dict[str, Any]:
        """Return the signed receipt of a completed revocation."""
        record = self._find(owner, request_hash)
        if record.receipt is None:
            status = self.status(record.owner, "")
            raise ControlError("failed_precondition",
                               f"the revocation of owner {record.owner!r} is {status['status']} "
                               f"({status['progress']['done']}/{status['progress']['total']} rounds of "
                               f"{status['progress']['phase'] or 'the job'}); ask again when it is done")
        return record.receipt

    # ------------------------------------------------------------------ prediction

    @functools.cached_property
    def backbone(self):
        """The server's backbone, loaded on first use."""
        from ..client.owners import backbone_for

        return backbone_for(self.settings.job_config)

    def withdrawn_clusters(self, model: ModelVersion) -> set[str]:
        """Return the clusters of ``model`` that any revoked owner contributed to."""
        revoked = {record.owner for record in self.state.owners(status="revoked")}
        return {key for key, members in model.ledger.entries.items() if revoked & set(members)}

    def predict(self, model: str, images: list[bytes]) -> dict[str, Any]:
        """Classify encoded images with a model version, never using a withdrawn cluster."""
        import torch

        from ..shared.data import _read_image
        from .evaluation import predict_serving

        version = model or self.state.current_version()
        if not version:
            raise ControlError("failed_precondition", "no model has been trained yet; queue a training job with "
                                                      "'lmeraser server train'")
        try:
            stored = self.store.load(version)
        except LmeraserError as error:
            raise ControlError("not_found", str(error)) from None

        tensors = []
        for index, data in enumerate(images):
            tensor = _read_image(io.BytesIO(data), stored.input_size)
            if tensor is None:
                raise ControlError("invalid", f"image {index} of the request is not a readable image; send PNG "
                                              f"or JPEG files")
            tensors.append(tensor)

        withdrawn = self.withdrawn_clusters(stored)
        predictions = predict_serving(stored, self.backbone, torch.stack(tensors), withdrawn)
        results = []
        serving = version == self.state.current_version()
        for prediction in predictions:
            if not prediction.withdrawn:
                results.append({"label": prediction.label, "class": stored.classes[prediction.label],
                                "cluster": prediction.cluster, "withdrawn": False, "message": ""})
                continue
            if serving:
                message = (f"cluster {prediction.cluster[:12]} is withdrawn until the unlearning of a revoked "
                           f"owner publishes a new model; no prediction")
            else:
                message = (f"a revoked owner trained cluster {prediction.cluster[:12]}; use the model version "
                           f"published after its unlearning")
            results.append({"label": None, "class": None, "cluster": prediction.cluster, "withdrawn": True,
                            "message": message})
        return {"model": version, "predictions": results}


class JobLauncher(threading.Thread):
    """Submit each job without an outcome to the SuperLink, oldest first, until it has one.

    A run that ends without an outcome (the SuperLink restarted, the ServerApp died) is
    resubmitted after a back-off of 5 s doubling to at most 60 s. The ServerApp resumes the
    job from its last checkpointed round.
    """

    def __init__(self, settings: ServerSettings, control: ControlService, wake: threading.Event) -> None:
        super().__init__(name="job-launcher", daemon=True)
        self.settings = settings
        self.control = control
        self.state = StateDB(settings.state_dir)
        self.admin = control.admin
        self.wake = wake
        self.stopping = threading.Event()
        self.process = None

    def stop(self) -> None:
        """Stop after the current run (which keeps running under the SuperLink)."""
        self.stopping.set()
        self.wake.set()

    def _retry_unregistrations(self) -> None:
        for owner in self.state.owners(status="revoked"):
            if not owner.node_unregistered:
                self.control.unregister_node(owner.owner)

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self._retry_unregistrations()
            job = self.state.next_job()
            if job is None:
                self.wake.wait(timeout=2.0)
                self.wake.clear()
                continue

            log_path = self.settings.state_dir / "logs" / f"job-{job.id}.log"
            try:
                self.process = self.admin.submit(job.id, log_path)
                while self.process.poll() is None and not self.stopping.is_set():
                    time.sleep(0.5)
            except (OSError, LmeraserError) as error:
                logger.error("could not submit job %d: %s", job.id, error)

            if self.stopping.is_set():
                break
            outcome = self.state.job(job.id)
            if outcome.status in (DONE, FAILED):
                logger.info("job %d (%s) is %s", job.id, job.kind, outcome.status)
                failures = 0
                continue
            failures += 1
            delay = min(60.0, 5.0 * 2 ** (failures - 1))
            logger.warning("run of job %d ended without an outcome (attempt %d, last error: %s); resubmitting in "
                           "%.0f s", job.id, outcome.attempts, outcome.error or "none recorded", delay)
            self.stopping.wait(delay)


def serve(settings: ServerSettings) -> int:
    """Run the control service and the job launcher until SIGTERM or SIGINT; return the exit status."""
    from .control import serve_control, stop_control

    state = StateDB(settings.state_dir)
    wake = threading.Event()
    control = ControlService(settings, state, SuperLinkAdmin(settings), wake)
    server, port = serve_control(control, settings.control_address, Path(settings.tls_cert),
                                 Path(settings.tls_key))
    launcher = JobLauncher(settings, control, wake)
    launcher.start()
    atomic_write(settings.state_dir / PID_FILE, str(os.getpid()).encode())
    logger.info("lmeraser server running: control service on port %d, state in %s", port, settings.state_dir)
    print(f"lmeraser server: control service on {settings.control_address.rsplit(':', 1)[0]}:{port}, "
          f"state {settings.state_dir}", flush=True)

    stopped = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stopped.set())
    stopped.wait()
    logger.info("lmeraser server stopping")
    launcher.stop()
    stop_control(server)
    return 0
