"""Calls to the SuperLink's Control API through Flower's own ``flwr`` command.

The server registers each enrolled owner's SuperNode key under the owner's node name, removes
a revoked owner's node (Flower then refuses that key for good), and submits one run per job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..shared.errors import ControlError
from .settings import CONNECTION, ServerSettings

logger = logging.getLogger(__name__)


def flwr_executable() -> str:
    """Return the ``flwr`` command installed beside this Python, or the one on PATH."""
    beside = Path(sys.executable).parent / "flwr"
    if beside.exists():
        return str(beside)
    found = shutil.which("flwr")
    if found is None:
        raise ControlError("unavailable", "the 'flwr' command was not found; install lmeraser's dependencies "
                                          "(pip install lmeraser) in this environment")
    return found


def flower_environment(settings: ServerSettings) -> dict[str, str]:
    """Return the environment of ``flwr`` calls: the server's Flower home, offline switches, and
    the bin folder of this Python first on PATH (the SuperLink starts ``flwr-serverapp`` from it)."""
    environment = dict(os.environ)
    environment.update({"FLWR_HOME": str(settings.flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1",
                        "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    environment["PATH"] = str(Path(sys.executable).parent) + os.pathsep + environment.get("PATH", "")
    return environment


class SuperLinkAdmin:
    """Register and unregister SuperNodes and submit runs on the SuperLink of ``settings``."""

    def __init__(self, settings: ServerSettings, timeout: float = 60.0) -> None:
        self.settings = settings
        self.timeout = timeout

    def _flwr(self, *arguments: str) -> dict:
        command = [flwr_executable(), *arguments, CONNECTION, "--format", "json"]
        try:
            completed = subprocess.run(command, env=flower_environment(self.settings), capture_output=True,
                                       text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise ControlError("unavailable", f"the SuperLink at {self.settings.superlink} did not respond to "
                                              f"'flwr {arguments[0]} {arguments[1]}' within {self.timeout:.0f} s; "
                                              f"check that it runs") from None
        output = completed.stdout.strip()
        try:
            reply = json.loads(output[output.index("{"):]) if "{" in output else {}
        except ValueError:
            reply = {}
        if completed.returncode != 0 or not reply.get("success", False):
            detail = reply.get("error-message") or (completed.stderr or output).strip().splitlines()[-1:] or ["?"]
            detail = detail if isinstance(detail, str) else detail[0]
            raise ControlError("unavailable", f"'flwr {' '.join(arguments[:2])}' failed on the SuperLink at "
                                              f"{self.settings.superlink}: {detail}")
        return reply

    def register(self, node_key: str, node_name: str) -> str:
        """Register the OpenSSH public key ``node_key`` under ``node_name``; return the node id."""
        folder = self.settings.state_dir / "node-keys"
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder / f"{node_name}.pub"
        key_file.write_text(node_key.strip() + "\n")
        reply = self._flwr("supernode", "register", str(key_file), "--name", node_name)
        node_id = str(reply["node-id"])
        logger.info("registered node %s (id %s) with the SuperLink", node_name, node_id)
        return node_id

    def unregister(self, node_id: str) -> None:
        """Remove node ``node_id`` from the SuperLink; its key can never connect again."""
        self._flwr("supernode", "unregister", node_id)
        logger.info("unregistered node %s from the SuperLink", node_id)

    def submit(self, job_id: int, log_path: Path) -> subprocess.Popen:
        """Start ``flwr run`` for job ``job_id`` with its output streamed into ``log_path``."""
        run_config = f'job-id={job_id} state-dir="{self.settings.state_dir}"'
        command = [flwr_executable(), "run", str(self.settings.app_dir), CONNECTION, "--run-config", run_config,
                   "--stream"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=flower_environment(self.settings), stdout=log,
                                       stderr=subprocess.STDOUT, cwd=self.settings.app_dir)
        logger.info("job %d submitted to the SuperLink (flwr run pid %d, log %s)", job_id, process.pid, log_path)
        return process
