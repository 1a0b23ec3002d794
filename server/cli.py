"""Command line: ``lmeraser simulate``, ``lmeraser revoke`` and ``lmeraser predict``, plus the
deployment's ``server``, ``owner``, ``audit`` and ``data`` commands."""

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
from ..client.cli import add_owner_commands
from ..shared.config import JobConfig
from ..shared.environment import configure_offline_environment, ensure_allocator_tunables
from ..shared.errors import LmeraserError
from .cli_server import add_server_commands

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

    from .state import DATABASE_FILE, StateDB

    current = state_dir / CURRENT_FILE
    if (state_dir / DATABASE_FILE).exists():
        version = StateDB(state_dir).current_version()  # a deployed server publishes in its database
        if not version:
            raise LmeraserError(f"the server in {str(state_dir)!r} has not published a model yet; train with "
                                f"'lmeraser server train --state-dir {state_dir}'")
    elif current.exists():
        version = current.read_text().strip()
    else:
        raise LmeraserError(f"no trained model in state directory {str(state_dir)!r}; run 'lmeraser simulate "
                            f"--state-dir {state_dir}' first")
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


def _revoked_owners(state: Path) -> set[str]:
    """Owners revoked in a state directory: by a deployed server's database, or by the current
    model of a simulation."""
    from .state import DATABASE_FILE, StateDB

    revoked: set[str] = set()
    if (state / DATABASE_FILE).exists():
        revoked |= {owner.owner for owner in StateDB(state).owners(status="revoked")}
    else:
        revoked |= set(_current_model(state)[1].revoked)
    return revoked


def _check_image_path(path: str) -> None:
    if Path(path).is_dir():
        raise LmeraserError(f"{path!r} is a folder; pass its image files, for example {path.rstrip('/')}/*.png")
    if not Path(path).is_file():
        raise LmeraserError(f"image {path!r} not found; pass the path of an existing image file")


def _read_images(paths: list[str], size: int):
    import torch

    from ..shared.data import _read_image

    images = []
    for path in paths:
        _check_image_path(path)
        image = _read_image(Path(path), size)
        if image is None:
            raise LmeraserError(f"cannot read image {path!r}; pass a JPEG, PNG or other image file")
        images.append(image)
    return torch.stack(images)


def _predict_remote(arguments: argparse.Namespace) -> int:
    from ..client.control_client import ControlClient

    from PIL import Image, UnidentifiedImageError

    for path in arguments.images:
        _check_image_path(path)
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise LmeraserError(f"cannot read image {path!r} ({error}); pass a JPEG, PNG or other image file") from None
    with ControlClient(arguments.server, Path(arguments.ca)) as client:
        reply = client.predict([Path(path).read_bytes() for path in arguments.images], model=arguments.model)
    for path, result in zip(arguments.images, reply["predictions"]):
        label = result["class"] if not result["withdrawn"] else "WITHDRAWN"
        print(f"{path}\t{label}\tcluster {result['cluster'][:12] or '-'}\t{result['message']}".rstrip())
    return 0


def command_predict(arguments: argparse.Namespace) -> int:
    """Predict the class of each image with a stored model version, never using a cluster that a
    revoked owner contributed to."""
    from ..shared.backbone import load_backbone
    from .evaluation import predict_serving
    from .model import ModelStore
    from .settings import SETTINGS_FILE

    if arguments.server:
        if not arguments.ca:
            raise LmeraserError("--server needs --ca, the CA certificate of the server's TLS certificate")
        return _predict_remote(arguments)
    state = Path(arguments.state_dir)
    if arguments.model:
        version, model = arguments.model, ModelStore(state).load(arguments.model)
    else:
        version, model = _current_model(state)
    if (state / SETTINGS_FILE).exists():
        job = json.loads((state / SETTINGS_FILE).read_text())["job"]
    else:
        job = json.loads((state / "job.json").read_text())
    backbone = load_backbone(model.backbone, job.get("checkpoint", ""), model.input_size, job.get("mean", ""),
                             job.get("std", ""))
    revoked = _revoked_owners(state)
    withdrawn = {key for key, members in model.ledger.entries.items() if revoked & set(members)}
    predictions = predict_serving(model, backbone, _read_images(arguments.images, model.input_size), withdrawn)
    for path, prediction in zip(arguments.images, predictions):
        if prediction.withdrawn:
            print(f"{path}\tWITHDRAWN\tcluster {prediction.cluster[:12]}\ta revoked owner trained this cluster; "
                  f"use the model version published after its unlearning")
        else:
            print(f"{path}\t{model.classes[prediction.label]}\tcluster {prediction.cluster[:12] or '-'}")
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
    predict.add_argument("--server", default="", help="ask a deployed server's control service (host:port) "
                                                      "instead of reading --state-dir")
    predict.add_argument("--ca", default="", help="CA certificate of the control service's TLS certificate")
    predict.set_defaults(handler=command_predict)

    add_server_commands(commands)
    add_owner_commands(commands)
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
