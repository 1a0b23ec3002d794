"""Operator commands: ``lmeraser server init|start|train|status``, ``lmeraser audit verify`` and
``lmeraser data split``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..shared.config import JobConfig
from ..shared.errors import LmeraserError


def _job_settings(arguments: argparse.Namespace) -> dict:
    settings = {}
    for item in arguments.set or []:
        key, separator, value = item.partition("=")
        if not separator:
            raise LmeraserError(f"invalid --set {item!r}; expected KEY=VALUE, for example --set rounds=2")
        settings[key.strip()] = value.strip()
    if arguments.classes:
        settings["classes"] = arguments.classes
    settings.setdefault("round-timeout", 300.0)
    return JobConfig.from_mapping(settings).to_mapping()


def command_init(arguments: argparse.Namespace) -> int:
    """Write the server's settings, Flower connection and signing key."""
    from .settings import ServerSettings, initialise

    settings = ServerSettings(state_dir=Path(arguments.state_dir).resolve(), superlink=arguments.superlink,
                              superlink_ca=arguments.superlink_ca, control_address=arguments.control_address,
                              tls_cert=arguments.tls_cert, tls_key=arguments.tls_key, job=_job_settings(arguments),
                              connect_timeout=arguments.connect_timeout)
    public_key = initialise(settings)
    print(f"server state in {settings.state_dir}; owners verify receipts with {public_key}")
    return 0


def command_start(arguments: argparse.Namespace) -> int:
    """Run the control service and job launcher until stopped."""
    from .service import serve
    from .settings import ServerSettings

    return serve(ServerSettings.load(arguments.state_dir))


def command_train(arguments: argparse.Namespace) -> int:
    """Queue a training job on the enrolled owners."""
    from .settings import ServerSettings
    from .state import DONE, FAILED, TRAIN, StateDB

    settings = ServerSettings.load(arguments.state_dir)
    state = StateDB(settings.state_dir)
    job_id = state.add_job(TRAIN, settings.job)
    print(f"training job {job_id} queued for {len(state.owners(status='active'))} enrolled owners")
    if not arguments.wait:
        return 0
    deadline = time.monotonic() + arguments.wait_timeout
    last_printed = None
    while state.job(job_id).status not in (DONE, FAILED):
        if time.monotonic() > deadline:
            raise LmeraserError(f"training job {job_id} not finished within {arguments.wait_timeout:.0f} s; "
                                f"check 'lmeraser server status' and the server's logs")
        job = state.job(job_id)
        progress = (job.status, job.progress.get("done", 0), job.progress.get("total", 0), job.attempts)
        if progress != last_printed:
            rounds = f", round {progress[1]}/{progress[2]} done" if progress[2] else ""
            print(f"training job {job_id}: {job.status}{rounds} (attempt {job.attempts})", flush=True)
            last_printed = progress
        time.sleep(2.0)
    job = state.job(job_id)
    if job.status == FAILED:
        raise LmeraserError(f"training job {job_id} failed: {job.error}")
    print(f"training job {job_id} done: model {job.result['version']}, owners {', '.join(job.result['owners'])}")
    return 0


def command_status(arguments: argparse.Namespace) -> int:
    """Print owners, jobs and the current model version."""
    from .state import StateDB

    state = StateDB(Path(arguments.state_dir))
    report = {
        "current_version": state.current_version(),
        "owners": [{"owner": o.owner, "node": o.node_name, "node_id": o.node_id, "status": o.status}
                   for o in state.owners()],
        "jobs": [{"id": j.id, "kind": j.kind, "status": j.status, "owner": j.owner, "attempts": j.attempts,
                  "progress": j.progress, "error": j.error} for j in state.jobs()],
    }
    print(json.dumps(report, indent=1))
    return 0


def command_audit_verify(arguments: argparse.Namespace) -> int:
    """Check the audit log's hash chain; exit 1 naming the first bad entry."""
    from .audit import verify_database
    from .state import DATABASE_FILE

    path = Path(arguments.state_dir) / DATABASE_FILE
    report = verify_database(path)
    if report.ok:
        print(f"audit log of {path}: {report.entries} entries, chain intact")
        return 0
    print(f"audit log of {path}: BROKEN at entry {report.first_bad}: {report.reason}")
    return 1


def command_data_split(arguments: argparse.Namespace) -> int:
    """Write a data set's owner partitions as image folders for a deployment."""
    from ..shared.export import export_partitions

    job = JobConfig(dataset=arguments.dataset, num_owners=arguments.owners, partitioner=arguments.partitioner,
                    alpha=arguments.alpha, seed=arguments.seed, input_size=arguments.input_size)
    from ..client.owners import datasets_for

    counts = export_partitions(job, arguments.out)
    classes = ",".join(datasets_for(job)[0].classes)
    print(f"wrote {', '.join(f'{name} ({count})' for name, count in counts.items())} under {arguments.out}; "
          f"classes {classes}")
    return 0


def add_server_commands(commands) -> None:
    """Register ``lmeraser server ...``, ``lmeraser audit ...`` and ``lmeraser data ...``."""
    server = commands.add_parser("server", help="run a deployed federation's server")
    actions = server.add_subparsers(dest="action", required=True)

    init = actions.add_parser("init", help="write the server's settings, Flower connection and signing key")
    init.add_argument("--state-dir", default="lmeraser-server", help="state directory (default: %(default)s)")
    init.add_argument("--superlink", default="127.0.0.1:9093",
                      help="SuperLink Control API host:port, as given to flower-superlink --host/--port "
                           "(default: %(default)s)")
    init.add_argument("--superlink-ca", required=True, help="CA certificate of the SuperLink's TLS certificate")
    init.add_argument("--control-address", default="127.0.0.1:9300",
                      help="host:port the owners' control service binds to (default: %(default)s)")
    init.add_argument("--tls-cert", required=True, help="TLS certificate of the control service")
    init.add_argument("--tls-key", required=True, help="TLS private key of the control service")
    init.add_argument("--classes", default="", help="comma-separated class names every owner's folders use")
    init.add_argument("--connect-timeout", type=float, default=120.0,
                      help="seconds a job waits for the owners it needs (default: %(default)s)")
    init.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="job setting, as in 'lmeraser simulate --help' (repeatable), for example rounds=2; "
                           "round-timeout defaults to 300 s here")
    init.set_defaults(handler=command_init)

    start = actions.add_parser("start", help="run the control service and the job launcher")
    start.add_argument("--state-dir", default="lmeraser-server", help="state directory (default: %(default)s)")
    start.set_defaults(handler=command_start)

    train = actions.add_parser("train", help="queue a training job on the enrolled owners")
    train.add_argument("--state-dir", default="lmeraser-server", help="state directory (default: %(default)s)")
    train.add_argument("--wait", action="store_true", help="wait until the job is done")
    train.add_argument("--wait-timeout", type=float, default=3600.0, help="seconds to wait (default: %(default)s)")
    train.set_defaults(handler=command_train)

    status = actions.add_parser("status", help="owners, jobs and the current model version, as JSON")
    status.add_argument("--state-dir", default="lmeraser-server", help="state directory (default: %(default)s)")
    status.set_defaults(handler=command_status)

    audit = commands.add_parser("audit", help="the server's audit log")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    verify = audit_actions.add_parser("verify", help="check the hash chain and name the first bad entry")
    verify.add_argument("--state-dir", default="lmeraser-server", help="state directory (default: %(default)s)")
    verify.set_defaults(handler=command_audit_verify)

    data = commands.add_parser("data", help="prepare owners' image folders")
    data_actions = data.add_subparsers(dest="action", required=True)
    split = data_actions.add_parser("split", help="write a data set's owner partitions as image folders")
    split.add_argument("--out", required=True, help="new folder for owner-000/, owner-001/, ... and test/")
    split.add_argument("--dataset", default="digits", help="data set, as --dataset of simulate (default: digits)")
    split.add_argument("--owners", type=int, default=3, help="number of owners (default: %(default)s)")
    split.add_argument("--partitioner", default="iid", help="iid, dirichlet or shards (default: %(default)s)")
    split.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: %(default)s)")
    split.add_argument("--seed", type=int, default=0, help="partition seed (default: %(default)s)")
    split.add_argument("--input-size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    split.set_defaults(handler=command_data_split)
