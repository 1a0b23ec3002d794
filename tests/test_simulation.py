"""The whole job through Flower's Simulation Engine (Ray), as the command line runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_simulate_command_on_flower(tmp_path) -> None:
    state = tmp_path / "state"
    environment = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
                   "RAY_USAGE_STATS_ENABLED": "0"}
    script = Path(sys.executable).with_name("lmeraser")
    command = [str(script if script.exists() else shutil.which("lmeraser")), "simulate", "--engine", "flower",
               "--state-dir", str(state), "--num-owners", "4", "--rounds", "1", "--local-epochs", "1",
               "--batch-size", "64", "--baselines", "global", "--revoke", "owner-002"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "exact: yes" in completed.stdout

    results = json.loads((state / "results.json").read_text())
    assert results["transport"] == "GridTransport"
    assert results["owners"] == 4
    assert results["revocation"]["owner"] == "owner-002"
    assert results["verify"]["exact"] is True
    assert set(results["models"]) == {"routed", "global"}
    assert 0.0 < results["models"]["routed"]["accuracy"] <= 1.0

    manifests = list((state / "models").glob("*.json"))
    assert len(manifests) == 4  # routed, global, unlearned, reference
    current = (state / "current").read_text()
    manifest = json.loads((state / "models" / f"{current}.json").read_text())
    assert manifest["revoked"] == ["owner-002"]
    assert "owner-002" not in json.dumps(manifest["ledger"])
