"""Command line: ``lmeraser simulate``, ``lmeraser revoke``, ``lmeraser predict``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from ..shared.config import JobConfig
from ..shared.environment import configure_offline_environment, ensure_allocator_tunables
from ..shared.errors import LmeraserError

logger = logging.getLogger("lmeraser")


def _field_help() -> dict[str, str]:
    """Read each field's description from the JobConfig docstring (one source for both)."""
    helps: dict[str, str] = {}
    doc = JobConfig.__doc__ or ""
    for match in re.finditer(r"^    (\w+(?:, \w+)*) : [^\n]*\n((?:        [^\n]*\n?)+)", doc, re.MULTILINE):
        text = " ".join(line.strip() for line in match.group(2).splitlines()).replace("``", "'")
        for name in match.group(1).split(", "):
            helps[name] = text
    return helps


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    helps = _field_help()
    for field in dataclasses.fields(JobConfig):
        option = "--" + field.name.replace("_", "-")
        help_text = f"{helps.get(field.name, '')} (default: {field.default!r})".replace("%", "%%")
        parser.add_argument(option, dest=field.name, default=None, metavar=field.name.upper(), help=help_text)


def _job_from(arguments: argparse.Namespace) -> JobConfig:
    overrides = {field.name: getattr(arguments, field.name) for field in dataclasses.fields(JobConfig)
                 if getattr(arguments, field.name) is not None}
    return JobConfig.from_mapping(overrides)


def _in_process(job: JobConfig):
    from ..client.owners import simulated_workers
    from .transport import InProcessTransport

    return InProcessTransport(simulated_workers(job))


def command_simulate(arguments: argparse.Namespace) -> int:
    """Run the whole job and print the results tables."""
    from .report import format_results

    job = _job_from(arguments)
    started = time.perf_counter()
    if arguments.engine == "flower":
        from .simulation import simulate

        results = simulate(job)
    else:
        from .job import preflight, run_job

        preflight(job)
        results = run_job(job, _in_process(job))

    print()
    print(format_results(results))
    if arguments.results:
        shutil.copyfile(Path(job.state_dir) / "results.json", arguments.results)
    print(f"results: {arguments.results or Path(job.state_dir) / 'results.json'}; "
          f"total wall time {time.perf_counter() - started:.1f} s")
    exact = results.get("verify", {}).get("exact", True)
    return 0 if exact else 3


def _current_model(state_dir: Path):
    from .job import CURRENT_FILE
    from .model import ModelStore

    current = state_dir / CURRENT_FILE
    if not current.exists():
        raise LmeraserError(f"no trained model in state directory {str(state_dir)!r}; run 'lmeraser simulate "
                            f"--state-dir {state_dir}' first")
    version = current.read_text().strip()
    return version, ModelStore(state_dir).load(version)


def command_revoke(arguments: argparse.Namespace) -> int:
    """Revoke one owner from the current model of a simulated federation's state directory."""
    from ..client.owners import backbone_for, datasets_for
    from .federation import Federation
    from .job import CURRENT_FILE, JOB_FILE
    from .model import ModelStore, atomic_write

    state = Path(arguments.state_dir)
    version, model = _current_model(state)
    job = JobConfig.from_mapping(json.loads((state / JOB_FILE).read_text()))
    if arguments.owner in model.revoked:
        print(f"owner {arguments.owner} is already revoked in model version {version[:12]}; nothing to do")
        return 0
    backbone = backbone_for(job)
    train, _ = datasets_for(job)
    federation = Federation(_in_process(job), job, backbone, train.classes)
    updated, report = federation.revoke(model, arguments.owner, parent=version)
    new_version = ModelStore(state).save(updated)
    atomic_write(state / CURRENT_FILE, new_version.encode())
    cost = report.cost
    print(f"revoked {arguments.owner}: retrained {len(report.retrained)} of {report.clusters_after} clusters, "
          f"contacted {cost.owners_contacted} owners, {cost.sample_epochs} samples x epochs "
          f"(full retrain {report.full_retrain.sample_epochs}), {cost.wall_seconds:.1f} s; "
          f"new model version {new_version[:12]}")
    return 0


def command_predict(arguments: argparse.Namespace) -> int:
    """Predict the class of each image with a stored model version."""
    import numpy as np
    import torch

    from ..shared.backbone import load_backbone
    from ..shared.data import _read_image
    from .evaluation import predict
    from .model import ModelStore

    state = Path(arguments.state_dir)
    if arguments.model:
        version, model = arguments.model, ModelStore(state).load(arguments.model)
    else:
        version, model = _current_model(state)
    job = json.loads((state / "job.json").read_text())
    backbone = load_backbone(model.backbone, job.get("checkpoint", ""), model.input_size, job.get("mean", ""),
                             job.get("std", ""))
    images = []
    for path in arguments.images:
        if not Path(path).is_file():
            raise LmeraserError(f"image {path!r} not found; pass the path of an existing image file")
        image = _read_image(Path(path), model.input_size)
        if image is None:
            raise LmeraserError(f"cannot read image {path!r}; pass a JPEG, PNG or other image file")
        images.append(image)
    prediction = predict(model, backbone, torch.stack(images))
    for path, label, cluster in zip(arguments.images, np.asarray(prediction.labels), prediction.clusters):
        print(f"{path}\t{model.classes[int(label)]}\tcluster {cluster[:12] or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``lmeraser`` command."""
    parser = argparse.ArgumentParser(prog="lmeraser", description="Federated visual prompts that can forget.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="train, evaluate, revoke one owner, unlearn and verify")
    _add_job_options(simulate)
    simulate.add_argument("--engine", choices=("flower", "local"), default="flower",
                          help="'flower' runs Flower's Simulation Engine on Ray; 'local' calls the owners "
                               "in this process (same engine, no Flower runtime) (default: flower)")
    simulate.add_argument("--results", default="", help="also copy the JSON results to this file")
    simulate.set_defaults(handler=command_simulate)

    revoke = commands.add_parser("revoke", help="revoke an owner from a simulated federation's current model")
    revoke.add_argument("owner", help="owner id, for example owner-003")
    revoke.add_argument("--state-dir", default="lmeraser-state", help="state directory (default: lmeraser-state)")
    revoke.set_defaults(handler=command_revoke)

    predict = commands.add_parser("predict", help="predict classes of images with a stored model version")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--state-dir", default="lmeraser-state", help="state directory (default: lmeraser-state)")
    predict.add_argument("--model", default="", help="model version id or prefix (default: the current one)")
    predict.set_defaults(handler=command_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmeraser`` command; returns the exit status."""
    configure_offline_environment()
    arguments = build_parser().parse_args(argv)
    if argv is None:
        ensure_allocator_tunables()
    level = arguments.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.root.handlers:
        handler.setLevel(level)  # Flower sets its own logger to DEBUG; keep its records out of ours
    try:
        return arguments.handler(arguments)
    except LmeraserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
