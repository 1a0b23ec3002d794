"""Every bad input gets a clear error (value and fix) and leaves the state directory unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lmeraser.client.owners import backbone_for, datasets_for, simulated_workers
from lmeraser.client.worker import OwnerWorker
from lmeraser.server.cli import main
from lmeraser.server.evaluation import evaluate
from lmeraser.server.federation import Federation
from lmeraser.server.transport import InProcessTransport
from lmeraser.shared.errors import LmeraserError

from conftest import small_job, snapshot

FAST = ["--engine", "local", "--input-size", "32", "--prompt-width", "4", "--rounds", "1", "--local-epochs", "1",
        "--num-owners", "4", "--baselines", "", "--batch-size", "64"]


@pytest.fixture
def state(tmp_path):
    """A state directory that already contains files, so changes to it would show."""
    folder = tmp_path / "state"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "previous.json").write_text('{"version": "previous"}')
    (folder / "results.json").write_text("{}")
    return folder


def _fails(capsys, state, *arguments: str) -> str:
    before = snapshot(state)
    status = main(["simulate", *FAST, "--state-dir", str(state), *arguments])
    error = capsys.readouterr().err
    assert status == 2
    assert snapshot(state) == before
    return error


def _image_tree(root, classes=("cat", "dog"), per_class=3):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (60 * index, 0, 200)).save(root / name / f"{i}.png")
    return root


def test_missing_folder(capsys, state, tmp_path) -> None:
    error = _fails(capsys, state, "--dataset", f"folder:{tmp_path / 'absent'}")
    assert "image folder" in error
    assert "absent" in error
    assert "not found" in error


def test_empty_folder(capsys, state, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    error = _fails(capsys, state, "--dataset", f"folder:{tmp_path / 'empty'}")
    assert "has no class folders" in error


def test_class_folder_without_images(capsys, state, tmp_path) -> None:
    root = _image_tree(tmp_path / "images")
    (root / "bird").mkdir()
    error = _fails(capsys, state, "--dataset", f"folder:{root}")
    assert "class folder" in error
    assert "bird" in error
    assert "no readable images" in error


def test_corrupt_image_skipped_and_counted(tmp_path) -> None:
    root = _image_tree(tmp_path / "images", per_class=6)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    train, test = datasets_for(small_job(tmp_path, dataset=f"folder:{root}", test_fraction=0.5))
    assert len(train) + len(test) == 12
    assert "cat/broken.jpg" in train.skipped


def test_more_owners_than_samples(capsys, state) -> None:
    error = _fails(capsys, state, "--num-owners", "5000")
    assert "num-owners=5000 exceeds the 1257 training samples" in error


def test_owner_with_zero_samples(capsys, state) -> None:
    error = _fails(capsys, state, "--num-owners", "1000", "--partitioner", "dirichlet", "--alpha", "0.01")
    assert "fewer than 1 samples" in error
    assert "larger alpha" in error


def test_worker_without_samples(tmp_path) -> None:
    job = small_job(tmp_path)
    train, _ = datasets_for(job)
    with pytest.raises(LmeraserError, match="owner owner-007 has zero training samples"):
        OwnerWorker("owner-007", train.subset(np.zeros(0, dtype=np.int64)), backbone_for(job), job)


def test_unknown_owner_to_revoke(capsys, state) -> None:
    error = _fails(capsys, state, "--revoke", "owner-999")
    assert "unknown owner to revoke 'owner-999'" in error
    assert "owner-000 to owner-003" in error


def test_invalid_timm_name(capsys, state) -> None:
    error = _fails(capsys, state, "--backbone", "no_such_net")
    assert "unknown timm model 'no_such_net'" in error


def test_checkpoint_for_other_architecture(capsys, state, tmp_path) -> None:
    import timm
    import torch

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    error = _fails(capsys, state, "--checkpoint", str(path))
    assert "does not match the architecture 'tf_efficientnet_lite0'" in error


def test_invalid_option_value(capsys, state) -> None:
    error = _fails(capsys, state, "--rounds", "0")
    assert "invalid rounds=0: expected an integer >= 1" in error


# ----------------------------------------------------------------------------- revocation


@pytest.fixture(scope="module")
def trained_state(tmp_path_factory):
    """A state directory after a full (fast) simulate run that revoked owner-000."""
    folder = tmp_path_factory.mktemp("trained") / "state"
    assert main(["simulate", *FAST, "--state-dir", str(folder)]) == 0
    return folder


def test_revoke_unknown_owner_keeps_state(capsys, trained_state) -> None:
    before = snapshot(trained_state)
    assert main(["revoke", "owner-999", "--state-dir", str(trained_state)]) == 2
    error = capsys.readouterr().err
    assert "unknown owner 'owner-999'" in error
    assert "owner-001" in error
    assert "already revoked: owner-000" in error
    assert snapshot(trained_state) == before


def test_revoke_twice_is_a_noop(capsys, trained_state) -> None:
    before = snapshot(trained_state)
    assert main(["revoke", "owner-000", "--state-dir", str(trained_state)]) == 0
    assert "owner-000 is already revoked" in capsys.readouterr().out
    assert snapshot(trained_state) == before


def test_revoke_without_trained_model(capsys, tmp_path) -> None:
    assert main(["revoke", "owner-001", "--state-dir", str(tmp_path / "nothing")]) == 2
    assert "no trained model in state directory" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_second_owner_revoked_from_state(capsys, trained_state) -> None:
    assert main(["revoke", "owner-001", "--state-dir", str(trained_state)]) == 0
    assert "revoked owner-001" in capsys.readouterr().out
    results = json.loads((trained_state / "results.json").read_text())
    assert results["revocation"]["owner"] == "owner-000"


def test_cluster_left_without_members_dropped(tmp_path) -> None:
    job = small_job(tmp_path, num_owners=6, partitioner="shards", shards_per_owner=1, summary_k=1,
                    min_cluster_size=10)
    workers = simulated_workers(job)
    train, test = datasets_for(job)
    federation = Federation(InProcessTransport(workers), job, backbone_for(job), train.classes, progress=False)
    model, _ = federation.fit(sorted(workers))
    alone = [c.key for c in model.served_clusters if model.ledger.members(c.key) == ["owner-000"]]
    assert alone, "owner-000 shares every cluster; the scenario needs a cluster of its own"

    unlearned, report = federation.revoke(model, "owner-000")
    assert report.dropped == alone
    assert all(key not in unlearned.parameters for key in alone)
    assert evaluate(unlearned, backbone_for(job), test)["accuracy"] > 0.0
