"""Signed receipts that the server issues when it has carried out a revocation.

A receipt names the request it confirms (``request_hash``), what the server retrained and
which model versions it replaced. The server signs it with its Ed25519 key, so the owner can
later show that the server confirmed the removal. The signed document has the form
``{"receipt": payload, "signature": base64}``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lmeraser.shared.errors import IdentityError, ReceiptError
from lmeraser.shared.identity import canonical_json, fingerprint, sign_payload, validate_name

logger = logging.getLogger(__name__)

_REQUEST_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
_MODEL_VERSION_PATTERN = re.compile(r"[0-9a-f]*")  # empty: no model existed
_FINGERPRINT_PATTERN = re.compile(r"sha256:[0-9a-f]{16}")


@dataclasses.dataclass(frozen=True)
class Receipt:
    """The server's record of a completed revocation.

    Times are unix seconds (UTC). ``old_model`` and ``new_model`` are model version ids in
    hex, and ``server_key`` is the fingerprint of the key that signs the receipt.
    """

    owner: str
    request_hash: str
    accepted_at: float
    completed_at: float
    clusters_retrained: tuple[str, ...]
    owners_contacted: tuple[str, ...]
    sample_epochs: int
    old_model: str
    new_model: str
    server_key: str
    clusters_dropped: tuple[str, ...] = ()
    """Clusters removed because the revoked owner was their only member (nothing to retrain)."""

    def payload(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict, with the tuples as lists in their stored order."""
        return {
            "owner": self.owner,
            "request_hash": self.request_hash,
            "accepted_at": self.accepted_at,
            "completed_at": self.completed_at,
            "clusters_retrained": list(self.clusters_retrained),
            "owners_contacted": list(self.owners_contacted),
            "sample_epochs": self.sample_epochs,
            "old_model": self.old_model,
            "new_model": self.new_model,
            "server_key": self.server_key,
            "clusters_dropped": list(self.clusters_dropped),
        }

    def to_json(self) -> dict[str, Any]:
        """Return the unsigned receipt as a JSON-ready dict (the same dict as ``payload``)."""
        return self.payload()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        """Build a receipt from ``payload`` output.

        Raises
        ------
        ReceiptError
            If a field is missing, unknown, of the wrong type or badly formed; the message
            names the field.
        """
        if not isinstance(data, dict):
            raise ReceiptError(f"receipt must be a JSON object, got {type(data).__name__}")
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ReceiptError(f"receipt is missing field(s) {', '.join(missing)}; pass the whole receipt "
                               f"as the server issued it")
        unknown = sorted(str(name) for name in data if name not in names)
        if unknown:
            raise ReceiptError(f"receipt has unknown field(s) {', '.join(unknown)}; pass the receipt as the "
                               f"server issued it")

        try:
            validate_name(data["owner"], "owner id")
        except IdentityError as error:
            raise ReceiptError(f"receipt field 'owner' is invalid: {error}") from error
        for name, pattern in (("request_hash", _REQUEST_HASH_PATTERN), ("old_model", _MODEL_VERSION_PATTERN),
                              ("new_model", _MODEL_VERSION_PATTERN), ("server_key", _FINGERPRINT_PATTERN)):
            value = data[name]
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise ReceiptError(f"receipt field {name!r} must match {pattern.pattern}, got {_shorten(value)}")
        for name in ("accepted_at", "completed_at"):
            if not isinstance(data[name], (int, float)) or isinstance(data[name], bool):
                raise ReceiptError(f"receipt field {name!r} must be a number of unix seconds, "
                                   f"got {_shorten(data[name])}")
        for name in ("clusters_retrained", "owners_contacted", "clusters_dropped"):
            value = data[name]
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ReceiptError(f"receipt field {name!r} must be a list of strings, got {_shorten(value)}")
        epochs = data["sample_epochs"]
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ReceiptError(f"receipt field 'sample_epochs' must be a non-negative integer, got {_shorten(epochs)}")

        return cls(owner=data["owner"], request_hash=data["request_hash"], accepted_at=data["accepted_at"],
                   completed_at=data["completed_at"], clusters_retrained=tuple(data["clusters_retrained"]),
                   owners_contacted=tuple(data["owners_contacted"]), sample_epochs=epochs,
                   old_model=data["old_model"], new_model=data["new_model"], server_key=data["server_key"],
                   clusters_dropped=tuple(data["clusters_dropped"]))


def _shorten(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sign_receipt(private_key: Ed25519PrivateKey, receipt: Receipt) -> dict[str, Any]:
    """Sign ``receipt`` and return the document ``{"receipt": payload, "signature": base64}``.

    Raises
    ------
    ReceiptError
        If ``receipt.server_key`` is not the fingerprint of ``private_key``, because the
        receipt would then name a key that cannot verify it.
    """
    key_fingerprint = fingerprint(private_key.public_key())
    if receipt.server_key != key_fingerprint:
        raise ReceiptError(f"receipt names server key {receipt.server_key} but is being signed with key "
                           f"{key_fingerprint}; set server_key to fingerprint(private_key.public_key())")
    payload = receipt.payload()
    return {"receipt": payload, "signature": sign_payload(private_key, payload)}


def verify_receipt(public_key: Ed25519PublicKey, document: dict[str, Any], owner: str | None = None,
                   request_hash: str | None = None) -> Receipt:
    """Verify a signed receipt document against the server's ``public_key`` and return the receipt.

    The signature is checked over the ``receipt`` dict exactly as it appears in ``document``.
    When ``owner`` or ``request_hash`` is given, the receipt must name the same value.

    Raises
    ------
    ReceiptError
        If the document lacks fields, names another server key, has a signature that does not
        verify, or is for another owner or request.
    """
    if not isinstance(document, dict):
        raise ReceiptError(f"receipt document must be a JSON object, got {type(document).__name__}")
    missing = [name for name in ("receipt", "signature") if name not in document]
    if missing:
        raise ReceiptError(f"receipt document is missing field(s) {', '.join(missing)}; pass the document "
                           f"as the server issued it, with 'receipt' and 'signature'")
    payload = document["receipt"]
    receipt = Receipt.from_json(payload)

    expected_key = fingerprint(public_key)
    if receipt.server_key != expected_key:
        raise ReceiptError(f"receipt was signed by server key {receipt.server_key}, but the given key is "
                           f"{expected_key}; verify it with the public key of the server that issued it")

    signature_text = document["signature"]
    if not isinstance(signature_text, str):
        raise ReceiptError(f"receipt signature must be a base64 string, got {type(signature_text).__name__}")
    try:
        signature = base64.b64decode(signature_text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ReceiptError(f"receipt signature {_shorten(signature_text)} is not valid base64; pass the "
                           f"document as the server issued it") from error
    try:
        public_key.verify(signature, canonical_json(payload))
    except InvalidSignature as error:
        raise ReceiptError(f"receipt signature does not verify with server key {expected_key}; the receipt "
                           f"was altered or signed by another server") from error

    if owner is not None and receipt.owner != owner:
        raise ReceiptError(f"receipt is for owner {receipt.owner!r}, expected owner {owner!r}")
    if request_hash is not None and receipt.request_hash != request_hash:
        raise ReceiptError(f"receipt is for request {receipt.request_hash}, expected request {request_hash}")
    return receipt
