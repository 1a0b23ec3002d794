"""Owners that stop replying mid-training, and jobs that resume from a checkpoint.

The engine runs here with in-process owners. A transport wrapper withholds one owner's replies
from a given training round on, as the Grid transport does when a SuperNode dies and the round
timeout passes.
"""

from __future__ import annotations

import pytest

from lmeraser.client.owners import backbone_for, datasets_for, simulated_workers
from lmeraser.server.deployment import FileCheckpoint
from lmeraser.server.federation import Federation, OwnerTaskError
from lmeraser.server.job import compare_models
from lmeraser.server.transport import InProcessTransport
from lmeraser.shared import protocol
from lmeraser.shared.errors import LmeraserError

from conftest import small_job

DROPPED = "owner-001"
REVOKED = "owner-002"
DROP_ROUND = 1  # the dropped owner completes round 0 only


class DroppingTransport(InProcessTransport):
    """In-process owners where ``owner`` stops replying from training round ``from_round`` on."""

    def __init__(self, workers, owner: str, from_round: int) -> None:
        super().__init__(workers)
        self.owner = owner
        self.from_round = from_round
        self.training_rounds = 0

    def send(self, tasks):
        replies = super().send(tasks)
        if tasks and next(iter(tasks.values())).kind == protocol.TRAIN:
            if self.training_rounds >= self.from_round:
                replies.pop(self.owner, None)
            self.training_rounds += 1
        return replies


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    job = small_job(tmp_path_factory.mktemp("dropout"), num_owners=4, partitioner="iid", summary_k=1,
                    min_cluster_size=2000, warmup_rounds=1, rounds=2, round_timeout=30.0)
    workers = simulated_workers(job)
    train, _ = datasets_for(job)
    return job, workers, backbone_for(job), train.classes


def _federation(setting, transport) -> Federation:
    job, _, backbone, classes = setting
    return Federation(transport, job, backbone, classes, progress=False)


def test_dropped_owner_recorded_in_ledger(setting) -> None:
    _, workers, _, _ = setting
    model, _ = _federation(setting, DroppingTransport(workers, DROPPED, DROP_ROUND)).fit(sorted(workers))

    assert model.ledger.rounds_completed(DROPPED) == DROP_ROUND
    assert model.ledger.rounds_completed("owner-000") == -1
    assert DROPPED in model.ledger.owners()


def test_dropped_owner_changes_the_model(setting) -> None:
    _, workers, _, _ = setting
    dropped, _ = _federation(setting, DroppingTransport(workers, DROPPED, DROP_ROUND)).fit(sorted(workers))
    complete, _ = _federation(setting, InProcessTransport(workers)).fit(sorted(workers))
    assert compare_models(dropped, complete) != []


def test_revocation_replays_dropout(setting) -> None:
    _, workers, _, _ = setting
    original, _ = _federation(setting, DroppingTransport(workers, DROPPED, DROP_ROUND)).fit(sorted(workers))
    unlearned, report = _federation(setting, InProcessTransport(workers)).revoke(original, REVOKED)
    remaining = [o for o in sorted(workers) if o != REVOKED]
    reference, _ = _federation(setting, DroppingTransport(workers, DROPPED, DROP_ROUND)).fit(remaining)

    assert report.retrained
    assert unlearned.ledger.rounds_completed(DROPPED) == DROP_ROUND
    assert compare_models(unlearned, reference) == []


def test_missing_reply_without_timeout_fails(setting) -> None:
    job, workers, backbone, classes = setting
    strict = Federation(DroppingTransport(workers, DROPPED, 0), job.replace(round_timeout=0.0), backbone, classes,
                        progress=False)
    with pytest.raises(OwnerTaskError, match=f"no reply from owners \\['{DROPPED}'\\]"):
        strict.fit(sorted(workers))


def test_checkpoint_resume_same_tensors(setting, tmp_path) -> None:
    _, workers, _, _ = setting
    complete, _ = _federation(setting, InProcessTransport(workers)).fit(sorted(workers))

    # A run that dies after its first training round, then a new run with the same checkpoint.
    class Crash(Exception):
        pass

    def crash_after_first(description: str, done: int, total: int) -> None:
        if done == 1:
            raise Crash

    first = _federation(setting, InProcessTransport(workers))
    first.checkpoint = FileCheckpoint(tmp_path / "job")
    first.on_round = crash_after_first
    with pytest.raises(Crash):
        first.fit(sorted(workers))

    rounds_seen = []
    second = _federation(setting, InProcessTransport(workers))
    second.checkpoint = FileCheckpoint(tmp_path / "job")
    second.on_round = lambda description, done, total: rounds_seen.append(done)
    resumed, _ = second.fit(sorted(workers))

    assert rounds_seen == [2, 3]
    assert compare_models(resumed, complete) == []


def test_corrupt_checkpoint_rejected(setting, tmp_path) -> None:
    _, workers, _, _ = setting
    federation = _federation(setting, InProcessTransport(workers))
    federation.checkpoint = FileCheckpoint(tmp_path / "job")
    federation.fit(sorted(workers))
    tensors = tmp_path / "job" / "checkpoint.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))

    again = _federation(setting, InProcessTransport(workers))
    again.checkpoint = FileCheckpoint(tmp_path / "job")
    with pytest.raises(LmeraserError, match="does not match its recorded hash"):
        again.fit(sorted(workers))
    assert tensors.read_bytes() == bytes(data)
