"""Run the job on Flower's Simulation Engine (Ray), on 127.0.0.1 only."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..shared.config import JobConfig
from ..shared.environment import configure_offline_environment
from ..shared.errors import LmeraserError
from .job import RESULTS_FILE, preflight

logger = logging.getLogger(__name__)


def backend_config(job: JobConfig) -> dict[str, Any]:
    """Return the Ray backend settings: local only, no dashboard, ``job.threads`` CPUs per client.

    Each virtual owner's ClientApp gets ``min(job.threads, cores)`` CPUs. On a 2-core machine one
    owner therefore trains at a time with 2 torch threads, and wider machines run owners in parallel.
    """
    cores = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": min(job.threads, cores), "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cores,
            "num_gpus": 0,
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
            "logging_level": logging.WARNING,
        },
    }


def simulate(job: JobConfig) -> dict[str, Any]:
    """Check inputs, run the job with one virtual SuperNode per owner and return its results.

    Raises
    ------
    LmeraserError
        Invalid input (found before Ray starts, so no state is written), or a job that ended
        without results.
    """
    configure_offline_environment()
    preflight(job)
    results_path = Path(job.state_dir) / RESULTS_FILE
    previous = results_path.stat().st_mtime_ns if results_path.exists() else None

    from flwr.simulation import run_simulation

    from ..client.app import app as client_app
    from .app import make_server_app

    run_simulation(server_app=make_server_app(job.to_mapping()), client_app=client_app,
                   num_supernodes=job.num_owners, backend_config=backend_config(job))

    if not results_path.exists() or results_path.stat().st_mtime_ns == previous:
        raise LmeraserError(f"the simulation ended without writing {results_path}; see the log above for the "
                            f"ServerApp's error")
    return json.loads(results_path.read_text())
