"""Client of the owner control plane: enrol, revoke, follow a revocation, fetch its receipt, predict.

The methods take and return the same dicts as ``lmeraser.server.control.ControlHandler``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cryptography import x509

from ..shared import control_pb2, control_pb2_grpc
from ..shared.errors import CONTROL_ERROR_STATUS, ControlError, LmeraserError

logger = logging.getLogger(__name__)

# Maximum size of a request or reply, in bytes. It matches MAX_MESSAGE_BYTES in lmeraser.server.control.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Trailing-metadata key that the server sets on statuses raised by its handler. It matches
# ERROR_CODE_METADATA_KEY in lmeraser.server.control.
ERROR_CODE_METADATA_KEY = "lmeraser-control-error"

_CODE_BY_STATUS = {grpc.StatusCode[status]: code for code, status in CONTROL_ERROR_STATUS.items()}

# Field name and type of each signed document the client sends. Signatures cover exactly these
# fields, so the client rejects missing or extra keys in place of dropping them silently.
_ENROL_FIELDS = {"owner": str, "public_key": str, "node_name": str, "node_key": str, "issued_at": int,
                 "signature": str}
_REVOKE_FIELDS = {"owner": str, "nonce": str, "issued_at": int, "scope": str, "signature": str}


def _check_document(document: Mapping[str, Any], fields: dict[str, type], kind: str) -> None:
    if not isinstance(document, Mapping):
        raise ControlError("invalid", f"invalid {kind} document of type {type(document).__name__}; "
                                      f"give a dict with keys {', '.join(fields)}")
    missing = [name for name in fields if name not in document]
    extra = sorted(str(name) for name in document if name not in fields)
    if missing or extra:
        raise ControlError("invalid", f"invalid {kind} document: missing keys {missing}, unexpected keys {extra}; "
                                      f"give exactly the keys {', '.join(fields)}")
    for name, expected in fields.items():
        value = document[name]
        # bool is a subclass of int, but True is not a timestamp.
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ControlError("invalid", f"invalid {kind} document field {name!r}: {value!r} is a "
                                          f"{type(value).__name__}; give a {expected.__name__}")


def _check_selection(owner: str, request_hash: str, method: str) -> None:
    if not isinstance(owner, str) or not isinstance(request_hash, str):
        raise ControlError("invalid", f"invalid {method} selection owner={owner!r}, request_hash={request_hash!r}; "
                                      f"give strings")
    if not owner and not request_hash:
        raise ControlError("invalid", f"{method} needs an owner id or a request hash; give at least one")


class ControlClient:
    """gRPC client of the control server, over TLS verified against a CA certificate.

    Parameters
    ----------
    address
        ``host:port`` of the control server, such as ``"127.0.0.1:9300"``.
    root_certificates
        PEM file with the CA certificate(s) that issued the server's certificate.
    timeout
        Deadline of each call, in seconds.
    server_name
        Name to verify the server certificate against, for a certificate issued to a name other
        than the host in ``address``. None verifies against that host.

    Raises
    ------
    LmeraserError
        If ``root_certificates`` is missing, unreadable or contains no PEM certificate, or if
        ``timeout`` is not positive.

    Each call raises :class:`ControlError` when it fails, with the server's code and message.
    A failed connection or TLS handshake, and a missed deadline, raise code ``"unavailable"``.
    """

    def __init__(self, address: str, root_certificates: Path, timeout: float = 30.0,
                 server_name: str | None = None) -> None:
        if not timeout > 0:
            raise LmeraserError(f"invalid control client timeout {timeout!r} s; give a positive number of seconds")
        self.address = address
        self.root_certificates = Path(root_certificates)
        self.timeout = timeout

        ca_pem = self._read_root_certificates()
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = control_pb2_grpc.ControlStub(self._channel)
        logger.info("control client for %s started, CA %s", address, self.root_certificates)

    def _read_root_certificates(self) -> bytes:
        path = self.root_certificates
        try:
            pem = path.read_bytes()
        except OSError as error:
            raise LmeraserError(f"cannot read the control CA certificate file {str(path)!r}: {error.strerror}; "
                                f"give the PEM file of the CA that issued the server's certificate") from error
        try:
            x509.load_pem_x509_certificates(pem)
        except ValueError as error:
            raise LmeraserError(f"the control CA certificate file {str(path)!r} contains no PEM certificate ({error}); "
                                f"give the PEM file of the CA that issued the server's certificate") from error
        return pem

    def enrol(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Send a signed enrolment document.

        Parameters
        ----------
        document
            ``{"owner": str, "public_key": str, "node_name": str, "node_key": str, "issued_at": int,
            "signature": str}``.

        Returns
        -------
        dict
            ``{"owner", "fingerprint", "enrolled_at", "status"}``.
        """
        _check_document(document, _ENROL_FIELDS, "enrolment")
        reply = self._call("Enrol", self._stub.Enrol, control_pb2.EnrolRequest(**document))
        return {"owner": reply.owner, "fingerprint": reply.fingerprint,
                "enrolled_at": reply.enrolled_at, "status": reply.status, "node_id": reply.node_id}

    def revoke(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Send a signed revocation request.

        Parameters
        ----------
        document
            ``{"owner": str, "nonce": str, "issued_at": int, "scope": str, "signature": str}``.

        Returns
        -------
        dict
            ``{"request_hash", "status", "accepted_at", "withdrawn_clusters": list[str],
            "receipt": dict | None}``.
        """
        _check_document(document, _REVOKE_FIELDS, "revocation")
        reply = self._call("Revoke", self._stub.Revoke, control_pb2.RevokeRequest(**document))
        return {
            "request_hash": reply.request_hash,
            "status": reply.status,
            "accepted_at": reply.accepted_at,
            "withdrawn_clusters": list(reply.withdrawn_clusters),
            "receipt": json.loads(reply.receipt_json) if reply.receipt_json else None,
        }

    def status(self, owner: str = "", request_hash: str = "") -> dict[str, Any]:
        """Fetch the state of a revocation request, selected by ``request_hash`` or ``owner``.

        Returns
        -------
        dict
            ``{"request_hash", "owner", "status", "progress": {"phase", "done", "total"},
            "accepted_at", "completed_at": float | None, "error": str | None}``.
        """
        _check_selection(owner, request_hash, "status")
        request = control_pb2.StatusRequest(owner=owner, request_hash=request_hash)
        reply = self._call("Status", self._stub.Status, request)
        return {
            "request_hash": reply.request_hash,
            "owner": reply.owner,
            "status": reply.status,
            "progress": json.loads(reply.progress_json),
            "accepted_at": reply.accepted_at,
            "completed_at": reply.completed_at if reply.HasField("completed_at") else None,
            "error": reply.error if reply.HasField("error") else None,
        }

    def receipt(self, owner: str = "", request_hash: str = "") -> dict[str, Any]:
        """Fetch the signed receipt ``{"receipt": {...}, "signature": str}`` of a revocation request,
        selected by ``request_hash`` or ``owner``."""
        _check_selection(owner, request_hash, "receipt")
        request = control_pb2.ReceiptRequest(owner=owner, request_hash=request_hash)
        reply = self._call("Receipt", self._stub.Receipt, request)
        return json.loads(reply.receipt_json)

    def predict(self, images: list[bytes], model: str = "") -> dict[str, Any]:
        """Classify encoded image files (PNG or JPEG) with model version ``model`` ("" for current).

        Returns
        -------
        dict
            ``{"model": str, "predictions": [{"label", "class", "cluster", "withdrawn", "message"}]}``,
            one prediction per image.
        """
        if not isinstance(images, (list, tuple)) or not images:
            received = "an empty list" if isinstance(images, (list, tuple)) else f"a {type(images).__name__}"
            raise ControlError("invalid", f"invalid predict images: {received}; give a non-empty list "
                                          f"of encoded image files as bytes")
        for index, image in enumerate(images):
            if not isinstance(image, bytes):
                raise ControlError("invalid", f"invalid predict image {index}: a {type(image).__name__}; give the "
                                              f"encoded file's bytes")
        total = sum(len(image) for image in images)
        if total > MAX_MESSAGE_BYTES:
            raise ControlError("invalid", f"the {len(images)} images total {total / 2**20:.1f} MiB, over the "
                                          f"{MAX_MESSAGE_BYTES // 2**20} MiB limit of one predict call; "
                                          f"send them in smaller batches")
        request = control_pb2.PredictRequest(model=model, images=list(images))
        reply = self._call("Predict", self._stub.Predict, request)
        return json.loads(reply.json)

    def _call(self, method: str, rpc: Any, request: Any) -> Any:
        """Call ``rpc`` with the client's deadline and raise :class:`ControlError` if it fails."""
        try:
            return rpc(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._control_error(method, error) from error

    def _control_error(self, method: str, error: grpc.RpcError) -> ControlError:
        """Convert a failed call to a ControlError with the server's code and message."""
        status = error.code()
        details = error.details() or ""
        metadata = dict(error.trailing_metadata() or ())

        # The server's handler set this status, so its message is passed on unchanged.
        handler_code = metadata.get(ERROR_CODE_METADATA_KEY)
        if handler_code in CONTROL_ERROR_STATUS:
            return ControlError(handler_code, details)

        check = (f"check that the control server is running at {self.address} and that "
                 f"{str(self.root_certificates)!r} is the CA that issued its certificate")
        if status == grpc.StatusCode.UNAVAILABLE:
            return ControlError("unavailable", f"{method} failed: control server at {self.address} is unavailable "
                                               f"({details}); {check}")
        if status == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ControlError("unavailable", f"{method} timed out: control server at {self.address} did not reply "
                                               f"within {self.timeout:g} s; {check}")
        if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ControlError("invalid", f"{method} to {self.address} failed: {details}; messages are limited to "
                                           f"{MAX_MESSAGE_BYTES // 2**20} MiB, so send less per call")
        if status in _CODE_BY_STATUS:
            return ControlError(_CODE_BY_STATUS[status], details)
        # INTERNAL, UNKNOWN, UNIMPLEMENTED and the rest: the server could not serve the call.
        return ControlError("unavailable", f"{method} failed on the control server at {self.address} "
                                           f"({status.name}): {details}")

    def close(self) -> None:
        """Close the channel. Calls after this fail."""
        self._channel.close()
        logger.info("control client for %s stopped", self.address)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
