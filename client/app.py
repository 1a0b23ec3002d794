"""The lmeraser ClientApp: one data owner's side of the federation on Flower.

In simulation each virtual SuperNode is an owner whose images are partition ``partition-id``
of the job's data set, rebuilt from the job configuration that every task carries. A deployed
SuperNode names its owner and image folder in its node config:
``--node-config 'owner-id="hospital-a" data-dir="/data/images"'``, and optionally
``backbone-checkpoint="/weights/backbone.pth"`` for its own copy of the backbone weights.
"""

from __future__ import annotations

import json
import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ..shared import protocol
from ..shared.config import JobConfig
from ..shared.environment import configure_offline_environment
from ..shared.errors import LmeraserError
from ..shared.flower_codec import reply_message, task_from_message
from ..shared.protocol import Reply
from .owners import folder_worker, simulated_worker
from .worker import OwnerWorker

configure_offline_environment()
logger = logging.getLogger(__name__)

JOB_KEY = "job"

app = ClientApp()


def worker_for(job: JobConfig, context: Context) -> OwnerWorker:
    """Return the worker of the owner this node serves."""
    node_config = context.node_config
    if "data-dir" in node_config or "owner-id" in node_config:
        missing = [key for key in ("owner-id", "data-dir") if not str(node_config.get(key, ""))]
        if missing:
            raise LmeraserError(f"this node's config lacks {missing}; start the SuperNode with "
                                f"--node-config 'owner-id=\"NAME\" data-dir=\"/path/to/images\"'")
        return folder_worker(job, str(node_config["owner-id"]), str(node_config["data-dir"]),
                             str(node_config.get("backbone-checkpoint", "")))
    if "partition-id" not in node_config:
        raise LmeraserError("this node has no 'partition-id' in its node config; simulated owners need one "
                            "(Flower's Simulation Engine sets it), deployed owners need owner-id and data-dir")
    return simulated_worker(job, int(node_config["partition-id"]))


def _handle(message: Message, context: Context) -> Message:
    task = task_from_message(message)
    try:
        job = JobConfig.from_mapping(json.loads(task.config.pop(JOB_KEY)))
        worker = worker_for(job, context)
    except (LmeraserError, KeyError) as error:
        # A node that cannot build its worker still replies, so the server can name it.
        logger.error("cannot serve task %s: %s", task.kind, error)
        return reply_message(Reply(error=str(error)), message)
    return reply_message(worker.handle(task), message)


@app.query(protocol.HELLO)
def hello(message: Message, context: Context) -> Message:
    """Report the owner id, sample count and backbone hash."""
    return _handle(message, context)


@app.query(protocol.SUMMARIZE)
def summarize(message: Message, context: Context) -> Message:
    """Return local k-means centroids and counts."""
    return _handle(message, context)


@app.query(protocol.ASSIGN)
def assign(message: Message, context: Context) -> Message:
    """Return per-cluster sample counts under the given prototypes."""
    return _handle(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the prompt and head of each listed cluster on the owner's routed samples."""
    return _handle(message, context)
