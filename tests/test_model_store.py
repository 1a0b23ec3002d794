"""Model versions: content-addressed, round-trip exactly, refuse corrupt files; predict uses them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lmeraser.client.owners import backbone_for, datasets_for, simulated_workers
from lmeraser.server.cli import main
from lmeraser.server.federation import Federation
from lmeraser.server.job import compare_models
from lmeraser.server.model import ModelStore, version_id
from lmeraser.server.transport import InProcessTransport
from lmeraser.shared.errors import LmeraserError

from conftest import small_job


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    job = small_job(tmp_path_factory.mktemp("store"), warmup_rounds=1)
    workers = simulated_workers(job)
    train, _ = datasets_for(job)
    federation = Federation(InProcessTransport(workers), job, backbone_for(job), train.classes, progress=False)
    model, _ = federation.fit(sorted(workers))
    return job, model


def test_round_trip_is_exact(trained, tmp_path) -> None:
    _, model = trained
    store = ModelStore(tmp_path)
    version = store.save(model)
    loaded = store.load(version[:10])
    assert version == version_id(model) == version_id(loaded)
    assert compare_models(loaded, model) == []
    assert loaded.routing == model.routing


def test_corrupt_tensor_file_rejected(trained, tmp_path) -> None:
    _, model = trained
    store = ModelStore(tmp_path)
    version = store.save(model)
    path = tmp_path / "models" / f"{version}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LmeraserError, match=f"model version {version[:12]} is corrupt"):
        store.load(version)


def test_unknown_version_rejected(tmp_path) -> None:
    with pytest.raises(LmeraserError, match="model version 'abc' not found"):
        ModelStore(tmp_path).load("abc")


def _serving_state(tmp_path, job, model):
    """Write a state directory whose current version is ``model``, as a simulate run leaves it."""
    state = tmp_path / "state"
    version = ModelStore(state).save(model)
    (state / "current").write_text(version)
    (state / "job.json").write_text(json.dumps(job.to_mapping()))
    return state


def test_predict_command_routes_images(trained, tmp_path, capsys) -> None:
    job, model = trained
    state = _serving_state(tmp_path, job, model)
    _, test = datasets_for(job)
    paths = []
    for index in range(3):
        path = tmp_path / f"digit{index}.png"
        Image.fromarray(test.images[index].permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))

    assert main(["predict", "--state-dir", str(state), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, paths):
        name, label, cluster = line.split("\t")
        assert name == path
        assert label in model.classes
        assert cluster.split()[1] in {c.key[:12] for c in model.served_clusters}


def test_predict_missing_file(trained, tmp_path, capsys) -> None:
    job, model = trained
    state = _serving_state(tmp_path, job, model)
    assert main(["predict", "--state-dir", str(state), str(tmp_path / "absent.png")]) == 2
    assert "absent.png' not found" in capsys.readouterr().err


def test_predict_rejects_non_image(trained, tmp_path, capsys) -> None:
    job, model = trained
    state = _serving_state(tmp_path, job, model)
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    assert main(["predict", "--state-dir", str(state), str(bogus)]) == 2
    assert "cannot read image" in capsys.readouterr().err
