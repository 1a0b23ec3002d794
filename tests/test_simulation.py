"""The whole job through Flower's Simulation Engine (Ray), as the command line runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmeraser.server.cli import main

pytestmark = pytest.mark.slow


def test_simulate_command_on_flower(tmp_path) -> None:
    state = tmp_path / "state"
    environment = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
                   "RAY_USAGE_STATS_ENABLED": "0"}
    script = Path(sys.executable).with_name("lmeraser")
    options = ["--num-owners", "4", "--rounds", "1", "--local-epochs", "1", "--batch-size", "64",
               "--baselines", "global", "--revoke", "owner-002"]
    command = [str(script if script.exists() else shutil.which("lmeraser")), "simulate", "--engine", "flower",
               "--state-dir", str(state), *options]
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

    # The engine does not depend on the transport: in-process owners give the same model versions.
    local_state = tmp_path / "local-state"
    assert main(["simulate", "--engine", "local", "--state-dir", str(local_state), *options]) == 0
    local = json.loads((local_state / "results.json").read_text())
    assert local["transport"] == "InProcessTransport"
    assert local["models"]["routed"]["version"] == results["models"]["routed"]["version"]
    assert local["revocation"]["version"] == results["revocation"]["version"]


def test_flwr_run_uses_app_config(tmp_path) -> None:
    """`flwr run .` against a local simulation SuperLink runs the app from pyproject.toml."""
    repository = Path(__file__).resolve().parents[1]
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 4\n'
    )
    state = tmp_path / "state"
    bin_dir = Path(sys.executable).parent
    environment = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                   "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
                   "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    run_config = f'num-owners=4 rounds=1 local-epochs=1 batch-size=64 baselines="" state-dir="{state}"'
    try:
        completed = subprocess.run([str(bin_dir / "flwr"), "run", str(repository), "local", "--stream",
                                    "--run-config", run_config],
                                   capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
        assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    finally:
        # The local SuperLink detaches from `flwr run`; stop the one that uses this test's FLWR_HOME.
        listing = subprocess.run(["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True)
        for pid in listing.stdout.split():
            os.kill(int(pid), signal.SIGTERM)

    results = json.loads((state / "results.json").read_text())
    assert results["transport"] == "GridTransport"
    assert results["owners"] == 4
    assert results["config"]["rounds"] == 1
    assert results["verify"]["exact"] is True
