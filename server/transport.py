"""Transports that carry engine tasks to owners; the engine only calls :meth:`Transport.send`."""

from __future__ import annotations

from typing import Protocol

from ..shared.protocol import Reply, Task


class Transport(Protocol):
    """Delivers one task to each of several owners and returns their replies."""

    def owners(self) -> list[str]:
        """Return the ids of the owners this transport can reach, sorted."""
        ...

    def send(self, tasks: dict[str, Task]) -> dict[str, Reply]:
        """Send ``tasks[owner]`` to each owner and return every owner's reply."""
        ...


class InProcessTransport:
    """Calls workers in this process: for tests and tools that need no Flower runtime."""

    def __init__(self, workers: dict) -> None:
        self.workers = workers

    def owners(self) -> list[str]:
        """Return the worker ids, sorted."""
        return sorted(self.workers)

    def send(self, tasks: dict[str, Task]) -> dict[str, Reply]:
        """Run each task on its worker, in sorted owner order."""
        return {owner: self.workers[owner].handle(tasks[owner]) for owner in sorted(tasks)}
