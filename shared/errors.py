"""Exceptions that carry a user-facing message: what failed, on which value, and the fix."""


class LmeraserError(ValueError):
    """Invalid input or state that the user can fix; the message names the value and the fix."""


class DataError(LmeraserError):
    """A data set, folder, image or partition that cannot be used."""


class BackboneError(LmeraserError):
    """A backbone name, checkpoint or hash that does not match what is expected."""


class RevocationError(LmeraserError):
    """A revocation request that cannot be carried out."""


class IdentityError(LmeraserError):
    """A key file, signature, owner id or signed request that is invalid."""


class ReceiptError(LmeraserError):
    """A revocation receipt that is malformed, altered or does not match the request."""


class AuditError(LmeraserError):
    """An audit log that cannot be opened or read."""


# gRPC status name for each ControlError code. The control server and client both use this table
# and look the names up in grpc.StatusCode, so this module does not import grpc.
CONTROL_ERROR_STATUS = {
    "invalid": "INVALID_ARGUMENT",
    "not_found": "NOT_FOUND",
    "permission_denied": "PERMISSION_DENIED",
    "already_exists": "ALREADY_EXISTS",
    "failed_precondition": "FAILED_PRECONDITION",
    "unauthenticated": "UNAUTHENTICATED",
    "unavailable": "UNAVAILABLE",
}


class ControlError(LmeraserError):
    """A control-plane request that failed, with a machine-readable ``code``.

    ``code`` is a key of ``CONTROL_ERROR_STATUS``. The control server sends it to the client as the
    matching gRPC status, and the client raises a ``ControlError`` with the same code and message.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in CONTROL_ERROR_STATUS:
            raise ValueError(f"invalid ControlError code {code!r}; use one of {', '.join(CONTROL_ERROR_STATUS)}")
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Exceptions pickle their ``args``, which here contain only the message, so pass the code too.
        return (type(self), (self.code, str(self)))
