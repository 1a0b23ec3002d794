"""A deployed federation of real processes on 127.0.0.1: SuperLink with TLS and SuperNode
authentication, the lmeraser server, and three owners' SuperNodes over gRPC, each with its own
image folder (digits split three ways).

The tests run in file order on one federation. A node with other backbone weights is rejected,
and training survives a SuperLink restart. A revocation through the control service gives a
verified receipt and the tensors of a fresh federation without the owner, and the revoked node
cannot rejoin. A server killed during unlearning resumes to the same tensors and one receipt,
and a SuperNode killed mid-training leaves its completed rounds in the ledger.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmeraser.client.control_client import ControlClient
from lmeraser.client.owners import backbone_for, folder_worker
from lmeraser.server.federation import Federation
from lmeraser.server.job import compare_models
from lmeraser.server.model import ModelStore
from lmeraser.server.receipts import verify_receipt
from lmeraser.server.settings import ServerSettings
from lmeraser.server.state import StateDB
from lmeraser.server.transport import InProcessTransport
from lmeraser.shared.identity import RevocationRequest, load_private_key, load_public_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FEDERATION = [sys.executable, str(ROOT / "deploy" / "federation.py")]
LMERASER = str(Path(sys.executable).parent / "lmeraser")
JOB = ["summary-k=2", "warmup-rounds=2", "rounds=1", "local-epochs=1", "batch-size=64", "round-timeout=120"]


def _free_base_port() -> int:
    for base in range(29200, 30000, 20):
        ports = [base, base + 1, base + 2] + list(range(base + 10, base + 15))
        free = True
        for port in ports:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError("no free port range on 127.0.0.1 between 29200 and 30000")


class LocalFederation:
    """Handle on a federation started by deploy/federation.py."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.config = json.loads((run / "federation.json").read_text())
        self.state_dir = run / "server"
        self.certs = run / "certs"
        self.server_address = f"127.0.0.1:{self.config['base_port'] + 2}"
        self.fleet_port = self.config["base_port"] + 1

    def call(self, *arguments: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
        return subprocess.run([*FEDERATION, *arguments, "--run", str(self.run)], capture_output=True, text=True,
                              timeout=timeout, check=True)

    def lmeraser(self, *arguments: str, timeout: float = 900.0) -> subprocess.CompletedProcess:
        return subprocess.run([LMERASER, *arguments], capture_output=True, text=True, timeout=timeout)

    def state(self) -> StateDB:
        return StateDB(self.state_dir)

    def client(self) -> ControlClient:
        return ControlClient(self.server_address, self.certs / "ca.crt", timeout=60.0)

    def pid(self, name: str) -> int:
        return int((self.run / "pids" / f"{name}.pid").read_text())

    def wait_job(self, job_id: int, done_rounds: int = 0, timeout: float = 600.0) -> None:
        """Wait until job ``job_id`` is done, or (with ``done_rounds``) has checkpointed that many rounds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.state().job(job_id)
            if job.status in ("done", "failed"):
                return
            if done_rounds and job.status == "running" and job.progress.get("done", 0) >= done_rounds:
                return
            time.sleep(1.0)
        raise AssertionError(f"job {job_id} did not reach {done_rounds or 'the end'} within {timeout} s: "
                             f"{self.state().job(job_id)}")

    def reference(self, owners: list[str]):
        """Train a fresh federation of ``owners`` in this process with the deployment's settings."""
        job = ServerSettings.load(self.state_dir).job_config
        workers = {owner: folder_worker(job, owner, self.config["data"][owner]) for owner in owners}
        federation = Federation(InProcessTransport(workers), job, backbone_for(job), job.class_names, progress=False)
        model, _ = federation.fit(owners)
        return model


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("deployment") / "run"
    settings = [item for pair in JOB for item in ("--set", pair)]
    subprocess.run([*FEDERATION, "start", "--run", str(run), "--owners", "3", "--base-port", str(_free_base_port()),
                    *settings], check=True, capture_output=True, text=True, timeout=300)
    try:
        yield LocalFederation(run)
    finally:
        subprocess.run([*FEDERATION, "stop", "--run", str(run)], capture_output=True, timeout=120)


def test_fleet_link_is_grpc_over_tls(federation: LocalFederation) -> None:
    log = (federation.run / "logs" / "superlink.log").read_text()
    assert f"Starting Fleet API (gRPC-rere) on 127.0.0.1:{federation.fleet_port}" in log

    listening = subprocess.run(["ss", "-Hltnp", f"sport = :{federation.fleet_port}"], capture_output=True,
                               text=True).stdout
    assert f"pid={federation.pid('superlink')}" in listening
    assert "127.0.0.1" in listening

    # Each owner's SuperNode has a connection to the Fleet API.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        established = subprocess.run(["ss", "-Htnp", "state", "established", f"dport = :{federation.fleet_port}"],
                                     capture_output=True, text=True).stdout
        if all(f"pid={federation.pid(f'node-{o}')}" in established for o in federation.config["owners"]):
            break
        time.sleep(1.0)
    for owner in federation.config["owners"]:
        assert f"pid={federation.pid(f'node-{owner}')}" in established

    # The port speaks TLS with HTTP/2 (gRPC), under a certificate from the federation's CA.
    context = ssl.create_default_context(cafile=str(federation.certs / "ca.crt"))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", federation.fleet_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "h2"


def test_node_with_other_backbone_rejected(federation: LocalFederation, tmp_path_factory) -> None:
    job = ServerSettings.load(federation.state_dir).job_config
    state = {name: value.clone() for name, value in backbone_for(job).model.state_dict().items()}
    first = next(name for name, value in state.items() if value.is_floating_point())
    state[first] += 0.01
    checkpoint = tmp_path_factory.mktemp("weights") / "other-weights.pth"
    torch.save(state, checkpoint)

    federation.call("join", "owner-x", "--data", federation.config["data"]["owner-002"],
                    "--backbone-checkpoint", str(checkpoint))
    assert federation.state().owner("owner-x").status == "active"


def test_training_survives_superlink_restart(federation: LocalFederation) -> None:
    job_id = int(federation.lmeraser("server", "train", "--state-dir", str(federation.state_dir))
                 .stdout.split()[2])
    federation.wait_job(job_id, done_rounds=1)
    federation.call("kill", "superlink")
    federation.call("superlink")
    federation.wait_job(job_id)

    job = federation.state().job(job_id)
    assert job.status == "done", job.error
    assert job.attempts >= 2
    assert job.result["owners"] == ["owner-000", "owner-001", "owner-002"]
    assert "owner-x" in job.result["rejected"]
    assert "backbone" in job.result["rejected"]["owner-x"]
    assert "expects" in job.result["rejected"]["owner-x"]

    trained = ModelStore(federation.state_dir).load(job.result["version"])
    assert compare_models(trained, federation.reference(["owner-000", "owner-001", "owner-002"])) == []


def test_revocation_gives_verified_receipt_and_exact_model(federation: LocalFederation) -> None:
    keys = federation.run / "owners" / "owner-001"
    receipt_file = federation.run / "receipt-owner-001.json"
    server_key = federation.state_dir / "server-signing.pub"
    started = time.monotonic()
    result = federation.lmeraser("owner", "revoke", "--owner", "owner-001", "--key", str(keys / "owner.key"),
                                 "--server", federation.server_address, "--ca", str(federation.certs / "ca.crt"),
                                 "--wait", "--server-key", str(server_key), "--out", str(receipt_file))
    print(f"revoke -> published: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr
    assert "receipt verified" in result.stdout

    receipt = verify_receipt(load_public_key(server_key), json.loads(receipt_file.read_text()), owner="owner-001")
    state = federation.state()
    assert receipt.new_model == state.current_version()
    assert receipt.old_model != receipt.new_model
    assert "owner-001" not in receipt.owners_contacted

    unlearned = ModelStore(federation.state_dir).load(receipt.new_model)
    assert "owner-001" not in unlearned.ledger.owners()
    assert compare_models(unlearned, federation.reference(["owner-000", "owner-002"])) == []

    audit = federation.lmeraser("audit", "verify", "--state-dir", str(federation.state_dir))
    assert audit.returncode == 0
    assert "chain intact" in audit.stdout


def test_second_revocation_returns_first_receipt(federation: LocalFederation) -> None:
    key = load_private_key(federation.run / "owners" / "owner-001" / "owner.key")
    first = json.loads((federation.run / "receipt-owner-001.json").read_text())
    jobs_before = len(federation.state().jobs())
    with federation.client() as client:
        reply = client.revoke(RevocationRequest.create("owner-001", key).to_json())
    assert reply["receipt"] == first
    assert reply["status"] == "done"
    assert len(federation.state().jobs()) == jobs_before


def test_tampered_receipt_fails_offline_check(federation: LocalFederation) -> None:
    document = json.loads((federation.run / "receipt-owner-001.json").read_text())
    document["receipt"]["sample_epochs"] += 1
    tampered = federation.run / "receipt-tampered.json"
    tampered.write_text(json.dumps(document))
    result = federation.lmeraser("owner", "verify-receipt", str(tampered), "--server-key",
                                 str(federation.state_dir / "server-signing.pub"))
    assert result.returncode == 2
    assert "does not verify" in result.stderr


def test_revoked_node_cannot_rejoin(federation: LocalFederation) -> None:
    assert federation.state().owner("owner-001").node_unregistered == 1
    federation.call("node", "owner-001")
    log = federation.run / "logs" / "node-owner-001.log"
    size_before = log.stat().st_size

    deadline = time.monotonic() + 60
    exited = False
    while time.monotonic() < deadline and not exited:
        try:
            os.kill(federation.pid("node-owner-001"), 0)
        except ProcessLookupError:
            exited = True
        time.sleep(1.0)
    text = log.read_text()[size_before:]
    assert exited, f"the revoked owner's SuperNode is still running; its log: {text[-2000:]}"
    assert "owner-001" not in {o for o in federation.state().owners(status="active")}


def test_server_killed_during_unlearning_resumes(federation: LocalFederation) -> None:
    key = load_private_key(federation.run / "owners" / "owner-002" / "owner.key")
    with federation.client() as client:
        reply = client.revoke(RevocationRequest.create("owner-002", key).to_json())
    job_id = federation.state().revocation(owner="owner-002").job
    assert reply["withdrawn_clusters"]

    # Kill the server and the ServerApp running the job after its first checkpointed round.
    federation.wait_job(job_id, done_rounds=1)
    assert federation.state().job(job_id).status == "running"
    serverapp = int((federation.state_dir / "serverapp.pid").read_text())
    federation.call("kill", "server", "--hard")
    os.kill(serverapp, signal.SIGKILL)

    # While the job is stopped, no prediction uses a cluster that owner-002 trained.
    test_images = sorted(str(p) for p in Path(federation.config["test"]).rglob("*.png"))[:40]
    prediction = federation.lmeraser("predict", "--state-dir", str(federation.state_dir), *test_images)
    assert prediction.returncode == 0, prediction.stderr
    assert "WITHDRAWN" in prediction.stdout

    federation.call("server")
    federation.wait_job(job_id)
    job = federation.state().job(job_id)
    assert job.status == "done", job.error
    assert job.attempts >= 2

    state = federation.state()
    revocations = [r for r in state.revocations() if r.owner == "owner-002"]
    assert len(revocations) == 1
    receipts = [e for e in state.audit.entries() if e.kind == "receipt" and e.payload["receipt"]["owner"] == "owner-002"]
    assert len(receipts) == 1
    receipt = verify_receipt(load_public_key(federation.state_dir / "server-signing.pub"), revocations[0].receipt)
    unlearned = ModelStore(federation.state_dir).load(receipt.new_model)
    assert compare_models(unlearned, federation.reference(["owner-000"])) == []


def test_node_dropping_mid_round_recorded(federation: LocalFederation) -> None:
    # A new owner over owner-001's images joins the one owner left, then its SuperNode dies mid-job.
    federation.call("join", "owner-y", "--data", federation.config["data"]["owner-001"])
    job_id = int(federation.lmeraser("server", "train", "--state-dir", str(federation.state_dir))
                 .stdout.split()[2])
    federation.wait_job(job_id, done_rounds=1)
    federation.call("kill", "node-owner-y", "--hard")
    federation.wait_job(job_id)

    job = federation.state().job(job_id)
    assert job.status == "done", job.error
    assert job.result["owners"] == ["owner-000", "owner-y"]
    ledger = job.result["ledger"]
    completed = {len(entry) > 3 and entry[3] for members in ledger.values() for owner, entry in members.items()
                 if owner == "owner-y"}
    full = {len(entry) for members in ledger.values() for owner, entry in members.items() if owner == "owner-000"}
    assert completed and all(isinstance(value, int) and 1 <= value < 3 for value in completed)
    assert full == {3}
    assert federation.state().current_version() == job.result["version"]
