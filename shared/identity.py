"""Ed25519 identity keys for owners and the server, and the requests that owners sign.

Each owner and the server have an Ed25519 key pair. Private keys are PEM files (PKCS8,
unencrypted, mode 0600) and public keys are PEM files (SubjectPublicKeyInfo) next to them.
On the wire a public key is the base64 text of its 32 raw bytes (``public_key_text``), and
people compare keys by ``fingerprint``.

A signature covers ``canonical_json`` of a payload dict, so signer and verifier must build
the same dict. A ``RevocationRequest`` is an owner's request to remove their data from the
model, signed with the owner's enrolled key. An ``EnrolmentRequest`` registers a key and is
signed by that same key as proof of possession.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import IdentityError
from .files import atomic_write

logger = logging.getLogger(__name__)

PUBLIC_KEY_SUFFIX = ".pub"
RAW_PUBLIC_KEY_BYTES = 32
MAX_NAME_LENGTH = 64
MAX_NONCE_LENGTH = 128
SUPPORTED_SCOPES = ("all",)

_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
_SHOWN_VALUE_LENGTH = 60


# ----------------------------------------------------------------------------- encoding


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as the canonical JSON bytes that signatures and hashes cover.

    Keys are sorted, there is no whitespace, and non-ASCII characters are escaped, so equal
    dicts always give equal bytes. NaN and infinity raise ValueError because they are not JSON.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def _shorten(value: object) -> str:
    """Return ``repr(value)`` cut to a length that fits in an error message."""
    text = repr(value)
    if len(text) > _SHOWN_VALUE_LENGTH:
        return text[: _SHOWN_VALUE_LENGTH - 3] + "..."
    return text


def _decode_base64(text: object, label: str) -> bytes:
    """Decode standard base64 ``text`` or raise IdentityError naming ``label`` and the value."""
    if not isinstance(text, str):
        raise IdentityError(f"{label} must be a base64 string, got {type(text).__name__} {_shorten(text)}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise IdentityError(f"{label} {_shorten(text)} is not valid base64 ({error}); "
                            f"pass the text exactly as it was generated") from error


def validate_name(value: object, label: str) -> str:
    """Return ``value`` if it is a valid owner id or node name, else raise IdentityError.

    A valid name is 1 to 64 characters from ``A-Z a-z 0-9 . _ -``, so it is safe in file
    names, URLs and log lines. ``label`` names the field in the message, for example "owner id".
    """
    if not isinstance(value, str):
        raise IdentityError(f"{label} must be a string, got {type(value).__name__} {_shorten(value)}")
    if not value or len(value) > MAX_NAME_LENGTH or not _NAME_PATTERN.fullmatch(value):
        raise IdentityError(f"invalid {label} {_shorten(value)}: use 1 to {MAX_NAME_LENGTH} characters "
                            f"from A-Z, a-z, 0-9, '.', '_' and '-'")
    return value


# ----------------------------------------------------------------------------- key files


def public_key_path(path: Path) -> Path:
    """Return the public key file that belongs to the private key file ``path`` (suffix ``.pub``)."""
    return Path(path).with_suffix(PUBLIC_KEY_SUFFIX)


def generate_key(path: Path, force: bool = False) -> Ed25519PrivateKey:
    """Generate an Ed25519 key pair and write it to ``path`` and ``path.with_suffix(".pub")``.

    The private key is written as unencrypted PKCS8 PEM with mode 0600 and the public key as
    SubjectPublicKeyInfo PEM with mode 0644. Missing parent folders are created. Both files
    are written atomically, private key first.

    Raises
    ------
    IdentityError
        If ``path`` or its ``.pub`` file exists and ``force`` is false, or if ``path`` itself
        ends in ``.pub``.
    """
    path = Path(path)
    public_path = public_key_path(path)
    if public_path == path:
        raise IdentityError(f"private key path {str(path)!r} ends in {PUBLIC_KEY_SUFFIX!r}, which is kept for "
                            f"the public key; choose a path such as {str(path.with_suffix('.key'))!r}")
    if not force:
        for existing in (path, public_path):
            if existing.exists():
                raise IdentityError(f"key file {str(existing)!r} already exists; pass --force to replace it "
                                    f"or choose another path")

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(encoding=serialization.Encoding.PEM,
                                    format=serialization.PrivateFormat.PKCS8,
                                    encryption_algorithm=serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(encoding=serialization.Encoding.PEM,
                                               format=serialization.PublicFormat.SubjectPublicKeyInfo)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, private_pem, 0o600)
    atomic_write(public_path, public_pem, 0o644)
    logger.info("wrote Ed25519 key %s to %s and %s", fingerprint(key.public_key()), path, public_path)
    return key


def _read_pem(path: Path, label: str) -> bytes:
    """Read the PEM file ``path`` or raise IdentityError naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise IdentityError(f"{label} file {str(path)!r} not found; check the path (an owner creates keys with 'lmeraser owner keygen', and a server's "
                            f"public key is the server-signing.pub of its state directory)") from error
    except OSError as error:
        raise IdentityError(f"cannot read {label} file {str(path)!r}: {error.strerror}") from error
    if b"-----BEGIN " not in data:
        raise IdentityError(f"{label} file {str(path)!r} is not a PEM file (no '-----BEGIN' line); "
                            f"pass a PEM key file such as one written by 'lmeraser owner keygen'")
    return data


def _parse_private_pem(data: bytes, path: Path) -> Ed25519PrivateKey:
    """Parse an unencrypted PEM private key or raise IdentityError naming ``path``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as error:
        raise IdentityError(f"private key file {str(path)!r} is encrypted; lmeraser reads unencrypted PKCS8 "
                            f"keys, so decrypt it (openssl pkey -in FILE -out NEW) or generate a new key") from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise IdentityError(f"private key file {str(path)!r} is not a readable PEM private key ({error})") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"private key file {str(path)!r} contains a {type(key).__name__}, not an Ed25519 "
                            f"key; generate an Ed25519 key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from an unencrypted PEM file.

    Logs a warning when the file is readable by group or others.

    Raises
    ------
    IdentityError
        If the file is missing, is not PEM, is encrypted or contains another key type.
    """
    path = Path(path)
    data = _read_pem(path, "private key")
    key = _parse_private_pem(data, path)
    if path.stat().st_mode & 0o077:
        logger.warning("private key file %s is readable by other users; run 'chmod 600 %s'", path, path)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM public key file or derive it from a PEM private key file.

    Raises
    ------
    IdentityError
        If the file is missing, is not PEM or contains another key type.
    """
    path = Path(path)
    data = _read_pem(path, "public key")
    if b"PRIVATE KEY-----" in data:
        return _parse_private_pem(data, path).public_key()

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise IdentityError(f"public key file {str(path)!r} is not a readable PEM public key ({error})") from error
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError(f"public key file {str(path)!r} contains a {type(key).__name__}, not an Ed25519 "
                            f"key; pass the .pub file of an Ed25519 key")
    return key


# ----------------------------------------------------------------------------- key text and signatures


def _raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Encode a public key as standard base64 of its 32 raw bytes (a private key gives its public key)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return base64.b64encode(_raw_public_bytes(key)).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Decode a public key written by ``public_key_text``.

    Raises
    ------
    IdentityError
        If ``text`` is not base64 or does not decode to 32 bytes.
    """
    raw = _decode_base64(text, "public key")
    if len(raw) != RAW_PUBLIC_KEY_BYTES:
        raise IdentityError(f"public key {_shorten(text)} decodes to {len(raw)} bytes, but an Ed25519 public key "
                            f"has {RAW_PUBLIC_KEY_BYTES}; pass the base64 text of the raw public key")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as error:
        raise IdentityError(f"public key {_shorten(text)} is not a valid Ed25519 public key ({error})") from error


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """Return ``"sha256:"`` and the first 16 hex digits of the SHA-256 of the raw public key."""
    return "sha256:" + hashlib.sha256(_raw_public_bytes(public_key)).hexdigest()[:16]


def sign_payload(private_key: Ed25519PrivateKey, payload: dict[str, Any]) -> str:
    """Sign ``canonical_json(payload)`` and return the signature as standard base64."""
    return base64.b64encode(private_key.sign(canonical_json(payload))).decode("ascii")


def verify_payload(public_key: Ed25519PublicKey, payload: dict[str, Any], signature: str) -> None:
    """Check that ``signature`` signs ``canonical_json(payload)`` with ``public_key``.

    Raises
    ------
    IdentityError
        If the signature is not base64 or does not verify.
    """
    raw = _decode_base64(signature, "signature")
    try:
        public_key.verify(raw, canonical_json(payload))
    except InvalidSignature as error:
        raise IdentityError(f"signature does not verify with key {fingerprint(public_key)}; the payload was "
                            f"altered or signed with another key") from error


# ----------------------------------------------------------------------------- signed requests


def _check_fields(data: object, fields: dict[str, type], label: str) -> dict[str, Any]:
    """Return ``data`` if it is a dict with exactly ``fields`` of the given types, else raise IdentityError."""
    if not isinstance(data, dict):
        raise IdentityError(f"{label} must be a JSON object, got {type(data).__name__}")
    missing = [name for name in fields if name not in data]
    if missing:
        raise IdentityError(f"{label} is missing field(s) {', '.join(missing)}; send all of {', '.join(fields)}")
    unknown = sorted(str(name) for name in data if name not in fields)
    if unknown:
        raise IdentityError(f"{label} has unknown field(s) {', '.join(unknown)}; send only {', '.join(fields)}")
    for name, expected in fields.items():
        value = data[name]
        # bool is a subclass of int, but true/false is never a valid timestamp.
        if not isinstance(value, expected) or isinstance(value, bool):
            raise IdentityError(f"{label} field {name!r} must be {expected.__name__}, "
                                f"got {type(value).__name__} {_shorten(value)}")
    return data


def _check_issued_at(issued_at: int, label: str, now: float | None, max_age: float, max_skew: float) -> None:
    """Raise IdentityError if ``issued_at`` is more than ``max_age`` s old or ``max_skew`` s in the future."""
    current = time.time() if now is None else now
    age = current - issued_at
    if age > max_age:
        raise IdentityError(f"{label} was issued {age:.0f} s ago, and requests expire after {max_age:.0f} s; "
                            f"create a new request")
    if -age > max_skew:
        raise IdentityError(f"{label} was issued {-age:.0f} s in the future, more than the {max_skew:.0f} s "
                            f"allowed; check the clock of the machine that created it")


def _issued_now(now: float | None) -> int:
    return int(time.time() if now is None else now)


@dataclasses.dataclass(frozen=True)
class RevocationRequest:
    """An owner's signed request to remove their data from the model.

    ``issued_at`` is in unix seconds (UTC). ``create`` draws a random 128-bit hex ``nonce``, so
    two created requests have different ``request_hash`` values. This class checks the
    signature, the age and the scope, and the server's database detects replays.
    """

    owner: str
    nonce: str
    issued_at: int
    scope: str
    signature: str

    FIELDS = {"owner": str, "nonce": str, "issued_at": int, "scope": str}

    def __post_init__(self) -> None:
        validate_name(self.owner, "owner id")
        if not isinstance(self.nonce, str) or not self.nonce or len(self.nonce) > MAX_NONCE_LENGTH:
            raise IdentityError(f"revocation request nonce {_shorten(self.nonce)} must be a string of 1 to "
                                f"{MAX_NONCE_LENGTH} characters; create the request with RevocationRequest.create")

    def payload(self) -> dict[str, Any]:
        """Return the signed fields: owner, nonce, issued_at and scope."""
        return {"owner": self.owner, "nonce": self.nonce, "issued_at": self.issued_at, "scope": self.scope}

    def request_hash(self) -> str:
        """Return the SHA-256 hex of the canonical payload, which names the request (the signature is not hashed)."""
        return hashlib.sha256(canonical_json(self.payload())).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """Return the payload with its ``signature``, ready for ``json.dumps``."""
        return {**self.payload(), "signature": self.signature}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RevocationRequest:
        """Build a request from ``to_json`` output, raising IdentityError on a missing or ill-typed field."""
        fields = _check_fields(data, {**cls.FIELDS, "signature": str}, "revocation request")
        return cls(owner=fields["owner"], nonce=fields["nonce"], issued_at=fields["issued_at"],
                   scope=fields["scope"], signature=fields["signature"])

    @classmethod
    def create(cls, owner: str, private_key: Ed25519PrivateKey, scope: str = "all",
               now: float | None = None) -> RevocationRequest:
        """Create a request for ``owner`` with a fresh nonce and sign it with ``private_key``."""
        validate_name(owner, "owner id")
        _check_scope(scope)
        unsigned = cls(owner=owner, nonce=secrets.token_hex(16), issued_at=_issued_now(now), scope=scope,
                       signature="")
        return dataclasses.replace(unsigned, signature=sign_payload(private_key, unsigned.payload()))

    def check(self, public_key: Ed25519PublicKey, now: float | None = None, max_age: float = 300.0,
              max_skew: float = 60.0) -> None:
        """Verify the signature against the owner's enrolled ``public_key``, then the age and the scope.

        Raises
        ------
        IdentityError
            If the signature does not verify, the request is older than ``max_age`` seconds or
            more than ``max_skew`` seconds in the future, or the scope is not supported.
        """
        try:
            verify_payload(public_key, self.payload(), self.signature)
        except IdentityError as error:
            raise IdentityError(f"signature of the revocation request for owner {self.owner!r} does not verify "
                                f"with the enrolled key ({fingerprint(public_key)}); sign it with the owner's "
                                f"own key") from error
        _check_issued_at(self.issued_at, f"revocation request for owner {self.owner!r}", now, max_age, max_skew)
        _check_scope(self.scope)


def _check_scope(scope: object) -> None:
    if scope not in SUPPORTED_SCOPES:
        raise IdentityError(f"revocation scope {_shorten(scope)} is not supported; use one of "
                            f"{', '.join(SUPPORTED_SCOPES)}")


@dataclasses.dataclass(frozen=True)
class EnrolmentRequest:
    """A request to enrol ``public_key`` for ``owner`` on node ``node_name``.

    The request is signed by the private half of ``public_key``, which proves that the sender
    has the private key. ``node_key`` is the public key (OpenSSH text, EC P-384) of the owner's
    SuperNode, which the server registers with the SuperLink under ``node_name``. ``issued_at``
    is in unix seconds (UTC).
    """

    owner: str
    public_key: str
    node_name: str
    node_key: str
    issued_at: int
    signature: str

    FIELDS = {"owner": str, "public_key": str, "node_name": str, "node_key": str, "issued_at": int}

    def __post_init__(self) -> None:
        validate_name(self.owner, "owner id")
        validate_name(self.node_name, "node name")

    def payload(self) -> dict[str, Any]:
        """Return the signed fields: owner, public_key, node_name, node_key and issued_at."""
        return {"owner": self.owner, "public_key": self.public_key, "node_name": self.node_name,
                "node_key": self.node_key, "issued_at": self.issued_at}

    def to_json(self) -> dict[str, Any]:
        """Return the payload with its ``signature``, ready for ``json.dumps``."""
        return {**self.payload(), "signature": self.signature}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EnrolmentRequest:
        """Build a request from ``to_json`` output, raising IdentityError on a missing or ill-typed field."""
        fields = _check_fields(data, {**cls.FIELDS, "signature": str}, "enrolment request")
        return cls(owner=fields["owner"], public_key=fields["public_key"], node_name=fields["node_name"],
                   node_key=fields["node_key"], issued_at=fields["issued_at"], signature=fields["signature"])

    @classmethod
    def create(cls, owner: str, private_key: Ed25519PrivateKey, node_name: str, node_key: str,
               now: float | None = None) -> EnrolmentRequest:
        """Create an enrolment of ``private_key``'s public key and sign it with that key."""
        validate_name(owner, "owner id")
        validate_name(node_name, "node name")
        unsigned = cls(owner=owner, public_key=public_key_text(private_key.public_key()), node_name=node_name,
                       node_key=node_key.strip(), issued_at=_issued_now(now), signature="")
        return dataclasses.replace(unsigned, signature=sign_payload(private_key, unsigned.payload()))

    def key(self) -> Ed25519PublicKey:
        """Decode ``public_key``, raising IdentityError if it is not a valid key text."""
        return public_key_from_text(self.public_key)

    def check(self, now: float | None = None, max_age: float = 300.0, max_skew: float = 60.0) -> None:
        """Verify the self-signature with the enclosed public key, then the age.

        Raises
        ------
        IdentityError
            If the public key is invalid, the signature does not verify, or the request is older
            than ``max_age`` seconds or more than ``max_skew`` seconds in the future.
        """
        key = self.key()
        try:
            verify_payload(key, self.payload(), self.signature)
        except IdentityError as error:
            raise IdentityError(f"signature of the enrolment request for owner {self.owner!r} does not verify "
                                f"with the key it enrols ({fingerprint(key)}); sign it with the private half of "
                                f"that key") from error
        _check_issued_at(self.issued_at, f"enrolment request for owner {self.owner!r}", now, max_age, max_skew)
