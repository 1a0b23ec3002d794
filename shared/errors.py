"""Exceptions that carry a user-facing message: what failed, on which value, and the fix."""


class LmeraserError(ValueError):
    """Invalid input or state that the user can fix; the message names the value and the fix."""


class DataError(LmeraserError):
    """A data set, folder, image or partition that cannot be used."""


class BackboneError(LmeraserError):
    """A backbone name, checkpoint or hash that does not match what is expected."""


class RevocationError(LmeraserError):
    """A revocation request that cannot be carried out."""
