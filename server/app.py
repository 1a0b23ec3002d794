"""The lmeraser ServerApp: the engine driven over Flower's Grid (Message API).

Under ``flwr run .`` the job configuration is the app's run config (pyproject.toml's
``[tool.flwr.app.config]``, overridable with ``--run-config``); ``lmeraser simulate`` builds the
app with :func:`make_server_app` instead. In a deployed federation the job launcher sets
``job-id`` and ``state-dir``, and the app runs that job of the state database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from ..shared import protocol
from ..shared.config import JobConfig
from ..shared.environment import configure_offline_environment
from ..shared.errors import LmeraserError
from ..shared.flower_codec import encode, message_type, reply_from_message
from ..shared.protocol import Reply, Task
from .job import run_job

configure_offline_environment()
logger = logging.getLogger(__name__)

JOB_ID_KEY = "job-id"


class GridTransport:
    """Deliver engine tasks as Flower messages through a ``Grid``.

    Every task carries the job configuration, so a ClientApp process needs no other state to
    build its owner's worker. Owners are discovered once with a ``hello`` query.

    Parameters
    ----------
    grid : Grid
        The Grid of the running ServerApp.
    job : JobConfig
        Configuration sent with every task.
    timeout : float, optional
        Seconds to wait for replies per exchange; ``None`` waits for all.
    min_nodes : int, default 1
        Nodes to wait for before discovery; nodes may still be registering when the app starts.
    connect_timeout : float, default 120.0
        Seconds to wait for ``min_nodes`` nodes.
    """

    def __init__(self, grid: Grid, job: JobConfig, timeout: float | None = None, min_nodes: int = 1,
                 connect_timeout: float = 120.0) -> None:
        self.grid = grid
        self.job_json = json.dumps(job.to_mapping(), sort_keys=True)
        self.timeout = timeout
        self.min_nodes = min_nodes
        self.connect_timeout = connect_timeout
        self.nodes: dict[str, int] = {}

    def _messages(self, tasks: dict[int, Task]) -> list[Message]:
        messages = []
        for node_id, task in tasks.items():
            config = {**task.config, "job": self.job_json}
            messages.append(Message(encode(config, task.arrays), dst_node_id=node_id,
                                    message_type=message_type(task.kind)))
        return messages

    def discover(self) -> dict[str, int]:
        """Wait for ``min_nodes`` nodes, ask each for its owner id and return owner -> node id."""
        deadline = time.monotonic() + self.connect_timeout
        node_ids = sorted(self.grid.get_node_ids())
        while len(node_ids) < self.min_nodes:
            if time.monotonic() > deadline:
                raise LmeraserError(f"only {len(node_ids)} of {self.min_nodes} nodes connected within "
                                    f"{self.connect_timeout:.0f} s; start the missing SuperNodes or lower num-owners")
            time.sleep(0.5)
            node_ids = sorted(self.grid.get_node_ids())
        replies = self.grid.send_and_receive(self._messages({n: Task(protocol.HELLO) for n in node_ids}),
                                             timeout=self.timeout)
        nodes = {}
        for message in replies:
            if message.has_error():
                raise LmeraserError(f"node {message.metadata.src_node_id} did not reply to the hello: "
                                    f"{message.error.reason}; check that its SuperNode runs")
            reply = reply_from_message(message)
            if reply.error:
                raise LmeraserError(f"node {message.metadata.src_node_id} failed to start: {reply.error}")
            nodes[str(reply.config["owner"])] = message.metadata.src_node_id
        logger.info("discovered %d owners on %d nodes", len(nodes), len(node_ids))
        self.nodes = nodes
        return nodes

    def owners(self) -> list[str]:
        """Return discovered owner ids, sorted (discovering on first use)."""
        if not self.nodes:
            self.discover()
        return sorted(self.nodes)

    def send(self, tasks: dict[str, Task]) -> dict[str, Reply]:
        """Send each owner its task in one Grid exchange and map replies back to owners."""
        owner_of = {self.nodes[owner]: owner for owner in tasks}
        replies = self.grid.send_and_receive(self._messages({self.nodes[o]: t for o, t in tasks.items()}),
                                             timeout=self.timeout)
        results = {}
        for message in replies:
            # For a node that went away, the SuperLink replies with an error message of its own.
            if message.has_error() or message.metadata.src_node_id not in owner_of:
                logger.warning("no result from node %s: %s", message.metadata.src_node_id,
                               message.error.reason if message.has_error() else "unknown sender")
                continue
            results[owner_of[message.metadata.src_node_id]] = reply_from_message(message)
        return results


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """Build a ServerApp whose job is the run config updated with ``overrides``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = {**dict(context.run_config), **dict(overrides or {})}
        job_id = int(settings.pop(JOB_ID_KEY, 0) or 0)
        if job_id:
            # A deployed federation's job, queued in the state database by the control service.
            from .deployment import run_state_job

            run_state_job(grid, settings["state-dir"], job_id)
            return
        job = JobConfig.from_mapping(settings)
        logger.info("lmeraser job starting: %s", job.to_mapping())
        run_job(job, GridTransport(grid, job, min_nodes=job.num_owners))

    return server_app


app = make_server_app()
