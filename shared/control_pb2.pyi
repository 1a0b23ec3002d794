from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EnrolRequest(_message.Message):
    __slots__ = ("owner", "public_key", "node_name", "issued_at", "signature", "node_key")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NODE_KEY_FIELD_NUMBER: _ClassVar[int]
    owner: str
    public_key: str
    node_name: str
    issued_at: int
    signature: str
    node_key: str
    def __init__(self, owner: _Optional[str] = ..., public_key: _Optional[str] = ..., node_name: _Optional[str] = ..., issued_at: _Optional[int] = ..., signature: _Optional[str] = ..., node_key: _Optional[str] = ...) -> None: ...

class EnrolReply(_message.Message):
    __slots__ = ("owner", "fingerprint", "enrolled_at", "status", "node_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    fingerprint: str
    enrolled_at: float
    status: str
    node_id: str
    def __init__(self, owner: _Optional[str] = ..., fingerprint: _Optional[str] = ..., enrolled_at: _Optional[float] = ..., status: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("owner", "nonce", "issued_at", "scope", "signature")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    nonce: str
    issued_at: int
    scope: str
    signature: str
    def __init__(self, owner: _Optional[str] = ..., nonce: _Optional[str] = ..., issued_at: _Optional[int] = ..., scope: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class RevokeReply(_message.Message):
    __slots__ = ("request_hash", "status", "accepted_at", "withdrawn_clusters", "receipt_json")
    REQUEST_HASH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_JSON_FIELD_NUMBER: _ClassVar[int]
    request_hash: str
    status: str
    accepted_at: float
    withdrawn_clusters: _containers.RepeatedScalarFieldContainer[str]
    receipt_json: str
    def __init__(self, request_hash: _Optional[str] = ..., status: _Optional[str] = ..., accepted_at: _Optional[float] = ..., withdrawn_clusters: _Optional[_Iterable[str]] = ..., receipt_json: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("owner", "request_hash")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HASH_FIELD_NUMBER: _ClassVar[int]
    owner: str
    request_hash: str
    def __init__(self, owner: _Optional[str] = ..., request_hash: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("request_hash", "owner", "status", "progress_json", "accepted_at", "completed_at", "error")
    REQUEST_HASH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_JSON_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_hash: str
    owner: str
    status: str
    progress_json: str
    accepted_at: float
    completed_at: float
    error: str
    def __init__(self, request_hash: _Optional[str] = ..., owner: _Optional[str] = ..., status: _Optional[str] = ..., progress_json: _Optional[str] = ..., accepted_at: _Optional[float] = ..., completed_at: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ReceiptRequest(_message.Message):
    __slots__ = ("owner", "request_hash")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HASH_FIELD_NUMBER: _ClassVar[int]
    owner: str
    request_hash: str
    def __init__(self, owner: _Optional[str] = ..., request_hash: _Optional[str] = ...) -> None: ...

class ReceiptReply(_message.Message):
    __slots__ = ("receipt_json",)
    RECEIPT_JSON_FIELD_NUMBER: _ClassVar[int]
    receipt_json: str
    def __init__(self, receipt_json: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PredictReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
