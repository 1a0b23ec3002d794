"""Which nodes a deployed job admits: enrolled, active owners on their own enrolled nodes."""

from __future__ import annotations

import time

import pytest

from lmeraser.server.deployment import DeployedTransport
from lmeraser.server.state import StateDB
from lmeraser.shared.config import JobConfig
from lmeraser.shared.protocol import Reply


@pytest.fixture
def transport(tmp_path) -> DeployedTransport:
    state = StateDB(tmp_path)
    state.add_owner("clinic-a", "a-key", "node-a", "11", time.time())
    state.add_owner("clinic-b", "b-key", "node-b", "12", time.time())
    state.accept_revocation("clinic-b", {"nonce": "n1"}, "f" * 64, [], JobConfig().to_mapping())
    return DeployedTransport(grid=None, job=JobConfig(classes="0,1"), state=state, backbone_sha256="abc")


def test_admits_enrolled_owner(transport: DeployedTransport) -> None:
    assert transport._rejection("clinic-a", "node-a", Reply(config={"owner": "clinic-a"})) == ""


def test_rejects_unknown_owner(transport: DeployedTransport) -> None:
    reason = transport._rejection("clinic-z", "node-z", Reply(config={"owner": "clinic-z"}))
    assert "not enrolled" in reason
    assert "clinic-z" in reason


def test_rejects_revoked_owner(transport: DeployedTransport) -> None:
    reason = transport._rejection("clinic-b", "node-b", Reply(config={"owner": "clinic-b"}))
    assert "was revoked" in reason
    assert "may not rejoin" in reason


def test_rejects_node_claiming_other_owner(transport: DeployedTransport) -> None:
    reason = transport._rejection("clinic-a", "node-b", Reply(config={"owner": "clinic-a"}))
    assert "claims owner 'clinic-a'" in reason
    assert "node-a" in reason


def test_rejects_node_reporting_error(transport: DeployedTransport) -> None:
    reply = Reply(config={"owner": "clinic-a"}, error="owner clinic-a's backbone differs")
    assert transport._rejection("clinic-a", "node-a", reply) == "owner clinic-a's backbone differs"
