"""Deployment against simulation: time per round for the same job, and revoke-to-publish time.

Starts a local federation with ``deploy/federation.py`` (SuperLink with TLS and SuperNode
authentication, the lmeraser server, one SuperNode per owner on 127.0.0.1), trains, revokes one
owner through the control service and waits for the receipt. Then it runs the same job (the same
digits partition, seed and settings) on Flower's Simulation Engine and compares the round times.
The tensors differ between the two: the owners' folders list images in another order than the
simulated partitions, which moves the k-means summaries (tests/test_deployment.py checks the
deployment against an in-process run over the same folders instead). Run it alone: two torch
processes on 2 cores slow each other down.

Usage::

    python benchmarks/deployment.py --owners 3 --out bench-results

Writes ``OUT/deployment.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SETTINGS = {"summary-k": 2, "warmup-rounds": 5, "rounds": 3, "local-epochs": 2, "round-timeout": 300}


def _run(*command: str, timeout: float = 3600.0) -> str:
    completed = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} failed:\n{completed.stderr[-3000:]}")
    return completed.stdout


def deployment(run: Path, owners: int, revoke: str) -> dict:
    """Train and revoke on a local deployed federation; return the measured times and versions."""
    from lmeraser.server.state import StateDB

    federation = [sys.executable, str(ROOT / "deploy" / "federation.py")]
    settings = [item for key, value in SETTINGS.items() for item in ("--set", f"{key}={value}")]
    started = time.perf_counter()
    _run(*federation, "start", "--run", str(run), "--owners", str(owners), *settings)
    start_seconds = time.perf_counter() - started
    try:
        started = time.perf_counter()
        _run(*federation, "train", "--run", str(run))
        train_seconds = time.perf_counter() - started
        state = StateDB(run / "server")
        training = state.jobs()[-1].result

        started = time.perf_counter()
        _run(str(BIN / "lmeraser"), "owner", "revoke", "--owner", revoke, "--key",
             str(run / "owners" / revoke / "owner.key"), "--server",
             f"127.0.0.1:{json.loads((run / 'federation.json').read_text())['base_port'] + 2}",
             "--ca", str(run / "certs" / "ca.crt"), "--wait", "--server-key",
             str(run / "server" / "server-signing.pub"), "--out", str(run / "receipt.json"))
        revoke_seconds = time.perf_counter() - started
        unlearning = state.jobs()[-1].result
    finally:
        subprocess.run([*federation, "stop", "--run", str(run)], capture_output=True, timeout=300)
    return {"start_seconds": start_seconds, "train_seconds": train_seconds, "revoke_to_publish_seconds": revoke_seconds,
            "train_rounds": training["cost"]["round_seconds"], "train_version": training["version"],
            "unlearning_rounds": unlearning["revocation"]["cost"]["round_seconds"],
            "unlearning": unlearning["revocation"]["cost"], "receipt": unlearning["receipt"]["receipt"]}


def simulation(owners: int, state_dir: Path) -> dict:
    """Run the same job on Flower's Simulation Engine; return its training cost."""
    options = [item for key, value in SETTINGS.items() if key != "round-timeout" for item in (f"--{key}", str(value))]
    started = time.perf_counter()
    _run(str(BIN / "lmeraser"), "simulate", "--num-owners", str(owners), "--partitioner", "iid", "--baselines", "",
         "--verify", "false", "--state-dir", str(state_dir), *options)
    results = json.loads((state_dir / "results.json").read_text())
    return {"wall_seconds": time.perf_counter() - started, "train_rounds": results["models"]["routed"]["cost"]["round_seconds"],
            "version": results["models"]["routed"]["version"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--owners", type=int, default=3, help="owners (default: %(default)s)")
    parser.add_argument("--revoke", default="owner-001", help="owner to revoke (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmeraser-bench-") as scratch:
        scratch = Path(scratch)
        deployed = deployment(scratch / "run", arguments.owners, arguments.revoke)
        simulated = simulation(arguments.owners, scratch / "simulation")

    deployed_round = statistics.median(deployed["train_rounds"])
    simulated_round = statistics.median(simulated["train_rounds"])
    report = {"settings": SETTINGS, "owners": arguments.owners, "deployment": deployed, "simulation": simulated,
              "median_round_seconds": {"deployment": deployed_round, "simulation": simulated_round}}
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "deployment.json").write_text(json.dumps(report, indent=1))

    print(f"{'':34}{'deployment':>12}{'simulation':>12}")
    print(f"{'median training round (s)':34}{deployed_round:>12.2f}{simulated_round:>12.2f}")
    print(f"{'training rounds':34}{len(deployed['train_rounds']):>12}{len(simulated['train_rounds']):>12}")
    print(f"federation start: {deployed['start_seconds']:.1f} s; training job: {deployed['train_seconds']:.1f} s")
    print(f"revoke request -> verified receipt of the published model: {deployed['revoke_to_publish_seconds']:.1f} s "
          f"({len(deployed['unlearning_rounds'])} rounds, median "
          f"{statistics.median(deployed['unlearning_rounds'] or [0.0]):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
