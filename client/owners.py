"""Build owner workers from a job configuration: simulated partitions of one data set, or a
deployed owner's own image folder."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from ..shared.backbone import load_backbone
from ..shared.config import JobConfig
from ..shared.data import load_image_folder
from ..shared.datasets import load_dataset
from ..shared.errors import LmeraserError
from ..shared.partition import owner_id, partition
from .worker import OwnerWorker


def backbone_for(job: JobConfig):
    """Return the job's backbone (cached per process)."""
    return load_backbone(job.backbone, job.checkpoint, job.input_size, job.mean, job.std)


def datasets_for(job: JobConfig):
    """Return the job's ``(train, test)`` splits at the backbone's input size (cached per process)."""
    size = backbone_for(job).input_size
    return load_dataset(job.dataset, size, job.test_fraction, job.seed, job.max_per_class)


@functools.lru_cache(maxsize=1)
def _partitions(job_json: str) -> list:
    job = JobConfig.from_mapping(json.loads(job_json))
    train, _ = datasets_for(job)
    return partition(train.labels, job.partitioner, job.num_owners, job.seed, job.alpha, job.shards_per_owner)


@functools.lru_cache(maxsize=1024)
def _worker(job_json: str, index: int) -> OwnerWorker:
    job = JobConfig.from_mapping(json.loads(job_json))
    torch.set_num_threads(job.threads)
    train, _ = datasets_for(job)
    indices = _partitions(job_json)[index]
    return OwnerWorker(owner_id(index), train.subset(indices), backbone_for(job), job)


def _data_key(job: JobConfig) -> str:
    # Workers depend only on data, backbone and training fields; revocation choices do not matter.
    ignored = {"revoke", "verify", "baselines", "state_dir", "round_timeout"}
    return json.dumps({k: v for k, v in job.to_mapping().items() if k.replace("-", "_") not in ignored},
                      sort_keys=True)


def simulated_worker(job: JobConfig, index: int) -> OwnerWorker:
    """Return the worker of partition ``index`` (owner ``owner-<index>``), cached per process."""
    if not 0 <= index < job.num_owners:
        raise LmeraserError(f"partition-id {index} is outside 0..{job.num_owners - 1}; run as many simulated "
                            f"SuperNodes as num-owners={job.num_owners}")
    return _worker(_data_key(job), index)


def simulated_workers(job: JobConfig) -> dict[str, OwnerWorker]:
    """Return every simulated owner's worker keyed by owner id."""
    return {owner_id(i): simulated_worker(job, i) for i in range(job.num_owners)}


@functools.lru_cache(maxsize=8)
def _folder_worker(job_json: str, owner: str, folder: str) -> OwnerWorker:
    job = JobConfig.from_mapping(json.loads(job_json))
    torch.set_num_threads(job.threads)
    backbone = backbone_for(job)
    classes = job.class_names
    if not classes:
        raise LmeraserError("the job names no classes; a deployed job must set classes (for example "
                            "classes=\"0,1,2,3,4,5,6,7,8,9\") so that every owner indexes labels alike")
    data = load_image_folder(folder, backbone.input_size, classes=classes, allow_missing=True)
    return OwnerWorker(owner, data, backbone, job)


def folder_worker(job: JobConfig, owner: str, data_dir: str | Path, checkpoint: str = "") -> OwnerWorker:
    """Return the worker of a deployed owner whose training images are the ImageFolder tree
    ``data_dir`` (or its ``train/`` sub-folder when there is one), cached per process.

    ``checkpoint`` loads the owner's own copy of the backbone weights instead of the job's; the
    server rejects the owner unless both hash alike.
    """
    if checkpoint:
        job = job.replace(checkpoint=checkpoint)
    folder = Path(data_dir).expanduser()
    if (folder / "train").is_dir():
        folder = folder / "train"
    return _folder_worker(_data_key(job), owner, str(folder.resolve()))
