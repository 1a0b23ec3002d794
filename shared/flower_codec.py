"""Conversion between engine tasks and Flower messages (one ArrayRecord, one ConfigRecord)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from .protocol import TRAIN, Reply, Task

ERROR_KEY = "error"


def message_type(kind: str) -> str:
    """Return the Flower message type of a task kind: ``train`` or ``query.<kind>``."""
    return "train" if kind == TRAIN else f"query.{kind}"


def task_kind(message: Message) -> str:
    """Inverse of :func:`message_type`."""
    category, _, action = message.metadata.message_type.partition(".")
    return TRAIN if category == "train" else action


def encode(config: dict, arrays: dict[str, np.ndarray]) -> RecordDict:
    """Pack a config and named arrays into a ``RecordDict``."""
    return RecordDict({
        "config": ConfigRecord(dict(config)),
        "arrays": ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()}),
    })


def decode(content: RecordDict) -> tuple[dict, dict[str, np.ndarray]]:
    """Unpack what :func:`encode` packed."""
    config = dict(content.config_records["config"]) if "config" in content.config_records else {}
    arrays = ({name: array.numpy() for name, array in content.array_records["arrays"].items()}
              if "arrays" in content.array_records else {})
    return config, arrays


def task_from_message(message: Message) -> Task:
    """Decode a task the server sent."""
    config, arrays = decode(message.content)
    return Task(task_kind(message), config, arrays)


def reply_message(reply: Reply, reply_to: Message) -> Message:
    """Encode a worker's reply to ``reply_to``."""
    config = dict(reply.config)
    if reply.error:
        config[ERROR_KEY] = reply.error
    return Message(encode(config, reply.arrays), reply_to=reply_to)


def reply_from_message(message: Message) -> Reply:
    """Decode an owner's reply; a Flower-level error becomes :attr:`Reply.error`."""
    if message.has_error():
        return Reply(error=f"client failed: {message.error.reason}")
    config, arrays = decode(message.content)
    error = str(config.pop(ERROR_KEY, ""))
    return Reply(config, arrays, error)
