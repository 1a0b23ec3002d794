"""Shared fixtures: small, fast job configurations and a state-directory snapshot."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from lmeraser.shared.config import JobConfig
from lmeraser.shared.environment import configure_offline_environment

configure_offline_environment()
torch.set_num_threads(2)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--data-dir", default=os.environ.get("LMERASER_DATA_DIR", ""),
                     help="folder with cifar10-jpeg/ and mnist/ for tests on real image sets")


@pytest.fixture
def data_dir(request: pytest.FixtureRequest) -> Path:
    """The real-data folder; tests that need it are skipped when it is not given."""
    value = request.config.getoption("--data-dir")
    if not value or not Path(value).is_dir():
        pytest.skip("needs --data-dir (or LMERASER_DATA_DIR) pointing at the evaluation data")
    return Path(value)


def small_job(tmp_path: Path, **changes) -> JobConfig:
    """A digits job that trains in seconds: 32 px, one round of one epoch, no baselines."""
    settings = dict(num_owners=4, input_size=32, prompt_width=4, rounds=1, local_epochs=1, batch_size=64,
                    summary_k=2, baselines="", state_dir=str(tmp_path / "state"), min_cluster_size=100)
    settings.update(changes)
    return JobConfig(**settings)


def snapshot(folder: Path) -> dict[str, str]:
    """Map every file under ``folder`` to the SHA-256 of its bytes (empty if the folder is absent)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
