"""The owner control plane over gRPC with TLS: enrol, revoke, status, receipt and predict.

The servicer only moves data. A :class:`ControlHandler` does the work on plain dicts, and the
servicer converts them to and from the messages in ``shared/control.proto``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..shared import control_pb2, control_pb2_grpc
from ..shared.errors import CONTROL_ERROR_STATUS, ControlError, LmeraserError

logger = logging.getLogger(__name__)

# Maximum size of a request or reply, in bytes, so that one predict call can carry several large images.
# The client sets the same limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Trailing-metadata key that marks a status set by the handler. The client uses it to tell a
# handler's UNAVAILABLE from a connection failure, and it contains the ControlError code.
ERROR_CODE_METADATA_KEY = "lmeraser-control-error"

_Reply = TypeVar("_Reply")


class ControlHandler(Protocol):
    """The control plane's business logic, called by :class:`ControlServicer` with plain dicts.

    Each method raises :class:`ControlError` for a request it rejects, and the client receives the
    same code and message. Timestamps are Unix seconds.
    """

    def enrol(self, request: dict[str, Any]) -> dict[str, Any]:
        """Enrol an owner's public key.

        Parameters
        ----------
        request
            Enrolment document ``{"owner": str, "public_key": str, "node_name": str,
            "issued_at": int, "signature": str}``.

        Returns
        -------
        dict
            ``{"owner": str, "fingerprint": str, "enrolled_at": float, "status": str}``.
        """
        ...

    def revoke(self, request: dict[str, Any]) -> dict[str, Any]:
        """Accept a revocation request.

        Parameters
        ----------
        request
            Revocation document ``{"owner": str, "nonce": str, "issued_at": int, "scope": str,
            "signature": str}``.

        Returns
        -------
        dict
            ``{"request_hash": str, "status": str, "accepted_at": float,
            "withdrawn_clusters": list[str], "receipt": dict | None}``, where ``receipt`` is the
            signed receipt document, or None while there is none.
        """
        ...

    def status(self, owner: str, request_hash: str) -> dict[str, Any]:
        """Report a revocation request's state, selected by ``request_hash`` or ``owner``.

        At least one of the two is a non-empty string, and the other may be empty.

        Returns
        -------
        dict
            ``{"request_hash": str, "owner": str, "status": "accepted" | "running" | "done" |
            "failed", "progress": {"phase": str, "done": int, "total": int},
            "accepted_at": float, "completed_at": float | None, "error": str | None}``.
        """
        ...

    def receipt(self, owner: str, request_hash: str) -> dict[str, Any]:
        """Return the signed receipt ``{"receipt": {...}, "signature": str}`` of a revocation.

        The request is selected as in :meth:`status`.
        """
        ...

    def predict(self, model: str, images: list[bytes]) -> dict[str, Any]:
        """Classify encoded images (PNG or JPEG files) with a model version.

        Parameters
        ----------
        model
            Model version id, or ``""`` for the current version.
        images
            Encoded image files.

        Returns
        -------
        dict
            ``{"model": str, "predictions": [{"label": int | None, "class": str | None,
            "cluster": str, "withdrawn": bool, "message": str}]}``, one prediction per image.
        """
        ...


def _encode_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


class ControlServicer(control_pb2_grpc.ControlServicer):
    """gRPC servicer that converts messages to dicts, calls a :class:`ControlHandler`, and maps
    its errors to gRPC status codes.

    A ``ControlError`` becomes the status named in ``CONTROL_ERROR_STATUS`` with the error's
    message. Any other ``LmeraserError`` becomes INVALID_ARGUMENT. Other exceptions are logged with
    their traceback and become INTERNAL with a short message.
    """

    def __init__(self, handler: ControlHandler) -> None:
        self.handler = handler

    def Enrol(self, request: control_pb2.EnrolRequest, context: grpc.ServicerContext) -> control_pb2.EnrolReply:
        logger.info("Enrol request for owner %r, node %r from %s", request.owner, request.node_name, context.peer())
        document = {
            "owner": request.owner,
            "public_key": request.public_key,
            "node_name": request.node_name,
            "node_key": request.node_key,
            "issued_at": request.issued_at,
            "signature": request.signature,
        }

        def call() -> control_pb2.EnrolReply:
            result = self.handler.enrol(document)
            return control_pb2.EnrolReply(owner=result["owner"], fingerprint=result["fingerprint"],
                                          enrolled_at=result["enrolled_at"], status=result["status"],
                                          node_id=str(result.get("node_id", "")))

        return self._invoke(context, "Enrol", f"owner {request.owner!r}", call)

    def Revoke(self, request: control_pb2.RevokeRequest, context: grpc.ServicerContext) -> control_pb2.RevokeReply:
        logger.info("Revoke request for owner %r, scope %r from %s", request.owner, request.scope, context.peer())
        document = {
            "owner": request.owner,
            "nonce": request.nonce,
            "issued_at": request.issued_at,
            "scope": request.scope,
            "signature": request.signature,
        }

        def call() -> control_pb2.RevokeReply:
            result = self.handler.revoke(document)
            receipt = result["receipt"]
            reply = control_pb2.RevokeReply(
                request_hash=result["request_hash"],
                status=result["status"],
                accepted_at=result["accepted_at"],
                withdrawn_clusters=list(result["withdrawn_clusters"]),
                receipt_json="" if receipt is None else _encode_json(receipt),
            )
            logger.info("Revoke for owner %r accepted as request %s, status %r",
                        request.owner, reply.request_hash, reply.status)
            return reply

        return self._invoke(context, "Revoke", f"owner {request.owner!r}", call)

    def Status(self, request: control_pb2.StatusRequest, context: grpc.ServicerContext) -> control_pb2.StatusReply:
        subject = _describe_selection(request.owner, request.request_hash)
        logger.info("Status request for %s from %s", subject, context.peer())

        def call() -> control_pb2.StatusReply:
            result = self.handler.status(request.owner, request.request_hash)
            reply = control_pb2.StatusReply(
                request_hash=result["request_hash"],
                owner=result["owner"],
                status=result["status"],
                progress_json=_encode_json(result["progress"]),
                accepted_at=result["accepted_at"],
            )
            # Optional fields: leaving them unset is how the reply carries None.
            if result["completed_at"] is not None:
                reply.completed_at = result["completed_at"]
            if result["error"] is not None:
                reply.error = result["error"]
            return reply

        return self._invoke(context, "Status", subject, call)

    def Receipt(self, request: control_pb2.ReceiptRequest, context: grpc.ServicerContext) -> control_pb2.ReceiptReply:
        subject = _describe_selection(request.owner, request.request_hash)
        logger.info("Receipt request for %s from %s", subject, context.peer())

        def call() -> control_pb2.ReceiptReply:
            result = self.handler.receipt(request.owner, request.request_hash)
            return control_pb2.ReceiptReply(receipt_json=_encode_json(result))

        return self._invoke(context, "Receipt", subject, call)

    def Predict(self, request: control_pb2.PredictRequest, context: grpc.ServicerContext) -> control_pb2.PredictReply:
        model = request.model or "current"
        logger.info("Predict request for %d images with model %s from %s", len(request.images), model, context.peer())

        def call() -> control_pb2.PredictReply:
            result = self.handler.predict(request.model, list(request.images))
            return control_pb2.PredictReply(json=_encode_json(result))

        return self._invoke(context, "Predict", f"model {model}", call)

    def _invoke(self, context: grpc.ServicerContext, method: str, subject: str,
                call: Callable[[], _Reply]) -> _Reply:
        """Run ``call`` and return its reply, or abort the RPC with the status for its error."""
        # context.abort raises, so it is called after the try block, where nothing catches it.
        code: str | None
        try:
            return call()
        except ControlError as error:
            code, status, message = error.code, grpc.StatusCode[CONTROL_ERROR_STATUS[error.code]], str(error)
            logger.warning("%s for %s rejected (%s): %s", method, subject, code, message)
        except LmeraserError as error:
            code, status, message = "invalid", grpc.StatusCode.INVALID_ARGUMENT, str(error)
            logger.warning("%s for %s rejected (invalid): %s", method, subject, message)
        except Exception:
            logger.exception("%s for %s failed with an unexpected error", method, subject)
            code, status = None, grpc.StatusCode.INTERNAL
            message = f"{method} failed because of an internal server error; the server log has the traceback"

        if code is not None:
            context.set_trailing_metadata(((ERROR_CODE_METADATA_KEY, code),))
        context.abort(status, message)
        raise AssertionError("grpc.ServicerContext.abort returned instead of raising")


def _describe_selection(owner: str, request_hash: str) -> str:
    parts = []
    if request_hash:
        parts.append(f"request {request_hash}")
    if owner:
        parts.append(f"owner {owner!r}")
    return ", ".join(parts) or "no owner or request hash"


def _read_pem_file(path: Path, description: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise LmeraserError(f"cannot read the control server's {description} {str(path)!r}: {error.strerror}; "
                            f"give the path of a readable PEM file") from error


def _load_tls_pair(certfile: Path, keyfile: Path) -> tuple[bytes, bytes]:
    """Read a PEM certificate chain and its private key, and check that they belong together.

    grpcio 1.85 reports a bad certificate or key only as a failed bind, so these checks name the file.
    """
    certificate_pem = _read_pem_file(certfile, "TLS certificate")
    key_pem = _read_pem_file(keyfile, "TLS private key")

    try:
        chain = x509.load_pem_x509_certificates(certificate_pem)
    except ValueError as error:
        raise LmeraserError(f"the control server's TLS certificate {str(certfile)!r} is not a PEM certificate "
                            f"({error}); give the server certificate, optionally followed by its chain") from error
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as error:
        raise LmeraserError(f"the control server's TLS private key {str(keyfile)!r} is encrypted, which grpc "
                            f"cannot use; give an unencrypted PEM key") from error
    except ValueError as error:
        raise LmeraserError(f"the control server's TLS private key {str(keyfile)!r} is not a PEM private key "
                            f"({error}); give the key of {str(certfile)!r}") from error

    public_format = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*public_format) != key.public_key().public_bytes(*public_format):
        raise LmeraserError(f"the TLS private key {str(keyfile)!r} does not belong to the certificate "
                            f"{str(certfile)!r}; give the key that the certificate was issued for")
    return certificate_pem, key_pem


def serve_control(handler: ControlHandler, address: str, certfile: Path, keyfile: Path,
                  max_workers: int = 4) -> tuple[grpc.Server, int]:
    """Start the control plane's gRPC server with TLS (no client certificates) on ``address``.

    Parameters
    ----------
    handler
        Business logic that serves each request.
    address
        ``host:port`` to bind, such as ``"127.0.0.1:9300"``. Port 0 picks a free port.
    certfile, keyfile
        PEM server certificate (optionally followed by its chain) and its unencrypted private key.
    max_workers
        Threads that serve requests concurrently.

    Returns
    -------
    tuple[grpc.Server, int]
        The started server and the port it is bound to. Stop it with :func:`stop_control`.

    Raises
    ------
    LmeraserError
        If a TLS file is missing, unreadable or invalid, if ``max_workers`` is below 1, or if
        ``address`` cannot be bound.
    """
    if max_workers < 1:
        raise LmeraserError(f"invalid control server max_workers {max_workers}; use 1 or more")
    certificate_pem, key_pem = _load_tls_pair(certfile, keyfile)
    credentials = grpc.ssl_server_credentials([(key_pem, certificate_pem)], require_client_auth=False)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lmeraser-control"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Fail the bind when another socket is bound to the port. grpc enables SO_REUSEPORT by default,
            # which would let two servers share it.
            ("grpc.so_reuseport", 0),
        ],
    )
    control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(handler), server)

    # grpcio releases differ: some return port 0 when the bind fails, others raise RuntimeError.
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        server.stop(None)
        raise LmeraserError(f"cannot bind the control server to {address!r} ({error}): address in use, "
                            f"or not a host:port of this machine? choose another --control-address") from error
    if port == 0:
        server.stop(None)
        raise LmeraserError(f"cannot bind the control server to {address!r}: address in use, "
                            f"or not a host:port of this machine? choose another --control-address")

    server.start()
    logger.info("control server started on %s (port %d) with TLS, %d worker threads", address, port, max_workers)
    return server, port


def stop_control(server: grpc.Server, grace: float | None = 5.0) -> None:
    """Stop a server from :func:`serve_control`, letting running requests finish for ``grace`` seconds."""
    logger.info("control server stopping, grace %s s", grace)
    server.stop(grace).wait()
    logger.info("control server stopped")
