#!/usr/bin/env python3
"""Start and stop a whole local federation on 127.0.0.1: SuperLink, lmeraser server and owners.

Every process gets its own ports and a PID file under ``RUN/pids``, and logs under ``RUN/logs``.
The SuperLink runs with TLS, SuperNode authentication and a persistent database. Each owner has
an identity key, a SuperNode key registered through enrolment, and its own image folder.

Examples::

    python deploy/federation.py start --run local-run --owners 3      # digits split three ways
    python deploy/federation.py train --run local-run                 # train and wait
    python deploy/federation.py stop --run local-run

Other commands restart single pieces (``superlink``, ``server``, ``node NAME``) and stop them
(``kill NAME``), which is how the fault tests drive it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
DEFAULT_BASE_PORT = 29100


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment.update({"FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
                        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    environment["PATH"] = str(BIN) + os.pathsep + environment.get("PATH", "")
    return environment


class Layout:
    """Paths and ports of one local federation (``RUN/federation.json`` stores its choices)."""

    def __init__(self, run: Path) -> None:
        self.run = run.resolve()
        self.certs = self.run / "certs"
        self.pids = self.run / "pids"
        self.logs = self.run / "logs"
        self.server = self.run / "server"
        self.owners = self.run / "owners"
        self.config_path = self.run / "federation.json"

    def config(self) -> dict:
        if not self.config_path.exists():
            raise SystemExit(f"error: no federation in {self.run}; run 'federation.py start --run {self.run}' first")
        return json.loads(self.config_path.read_text())

    def ports(self) -> dict[str, int]:
        base = self.config()["base_port"]
        return {"control_api": base, "fleet": base + 1, "server": base + 2, "first_node": base + 10}


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _planned_ports(base: int, owners: int) -> list[int]:
    return [base, base + 1, base + 2] + [base + 10 + index for index in range(owners)]


def _wait_port(port: int, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise SystemExit(f"error: {name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see its log")


def _spawn(layout: Layout, name: str, command: list[str]) -> int:
    """Start ``command`` detached, with its PID in ``pids/NAME.pid`` and output in ``logs/NAME.log``.

    A process still running under that name is stopped first, so that its PID file is never
    overwritten while it runs (``stop`` could not find it otherwise).
    """
    kill(layout, name)
    layout.pids.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    environment = _environment()
    environment["FLWR_HOME"] = str(layout.run / "flwr-home")  # apps the SuperLink and SuperNodes install
    with open(layout.logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                   cwd=layout.run, start_new_session=True)
    (layout.pids / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def _lmeraser(*arguments: str) -> str:
    completed = subprocess.run([str(BIN / "lmeraser"), *arguments], capture_output=True, text=True,
                               env=_environment())
    if completed.returncode != 0:
        raise SystemExit(f"error: lmeraser {arguments[0]} {arguments[1]} failed: "
                         f"{completed.stderr.strip() or completed.stdout.strip()}")
    return completed.stdout.strip()


def kill(layout: Layout, name: str, signal_number: int = signal.SIGTERM, timeout: float = 20.0) -> bool:
    """Stop the process of ``pids/NAME.pid`` and its process group; return whether one ran."""
    pid_file = layout.pids / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal_number)
    except ProcessLookupError:
        pid_file.unlink()
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def start_superlink(layout: Layout) -> None:
    """Start the SuperLink: TLS, SuperNode authentication, a database file, everything on 127.0.0.1."""
    ports = layout.ports()
    _spawn(layout, "superlink", [
        str(BIN / "flower-superlink"),
        "--ssl-ca-certfile", str(layout.certs / "ca.crt"), "--ssl-certfile", str(layout.certs / "server.pem"),
        "--ssl-keyfile", str(layout.certs / "server.key"), "--enable-supernode-auth",
        "--database", str(layout.run / "superlink.db"),
        "--fleet-api-type", "grpc-rere", "--fleet-api-address", f"127.0.0.1:{ports['fleet']}",
        "--host", "127.0.0.1", "--port", str(ports["control_api"]),
        "--disable-runtime-dependency-installation",
    ])
    _wait_port(ports["control_api"], "the SuperLink")
    _wait_port(ports["fleet"], "the SuperLink's Fleet API")


def start_server(layout: Layout) -> None:
    """Start the lmeraser server (control service and job launcher)."""
    _spawn(layout, "server", [str(BIN / "lmeraser"), "--log-level", "INFO", "server", "start",
                              "--state-dir", str(layout.server)])
    _wait_port(layout.ports()["server"], "the lmeraser server")


def start_node(layout: Layout, owner: str) -> None:
    """Start the SuperNode of ``owner`` over its image folder."""
    config = layout.config()
    index = config["owners"].index(owner)
    folder = layout.owners / owner
    node_config = f'owner-id="{owner}" data-dir="{config["data"][owner]}"'
    if config.get("checkpoints", {}).get(owner):
        node_config += f' backbone-checkpoint="{config["checkpoints"][owner]}"'
    _spawn(layout, f"node-{owner}", [
        str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{layout.ports()['fleet']}",
        "--root-certificates", str(layout.certs / "ca.crt"),
        "--auth-supernode-private-key", str(folder / "node.key"),
        "--node-config", node_config, "--port", str(layout.ports()["first_node"] + index),
    ])


def add_owner(layout: Layout, owner: str) -> None:
    """Create an owner's keys and enrol them (which registers its SuperNode key)."""
    folder = layout.owners / owner
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "owner.key").exists():
        _lmeraser("owner", "keygen", "--key", str(folder / "owner.key"), "--node-key", str(folder / "node.key"))
    _lmeraser("owner", "enrol", "--owner", owner, "--key", str(folder / "owner.key"),
              "--node-key", str(folder / "node.key.pub"), "--server", f"127.0.0.1:{layout.ports()['server']}",
              "--ca", str(layout.certs / "ca.crt"))


def command_start(arguments: argparse.Namespace) -> int:
    layout = Layout(Path(arguments.run))
    if layout.config_path.exists():
        raise SystemExit(f"error: {layout.run} already contains a federation; stop it and choose a new --run folder")
    busy = [port for port in _planned_ports(arguments.base_port, arguments.owners) if _in_use(port)]
    if busy:
        raise SystemExit(f"error: ports {busy} on 127.0.0.1 are in use (another federation?); stop it or pass "
                         f"--base-port with a free range")
    layout.run.mkdir(parents=True, exist_ok=True)

    data = Path(arguments.data).resolve() if arguments.data else layout.run / "data"
    if not arguments.data:
        _lmeraser("data", "split", "--out", str(data), "--owners", str(arguments.owners),
                  "--partitioner", arguments.partitioner, "--seed", str(arguments.seed))
    owners = sorted(p.name for p in data.iterdir() if p.is_dir() and p.name != "test")[:arguments.owners]
    classes = arguments.classes or ",".join(sorted({c.name for o in owners for c in (data / o).iterdir() if c.is_dir()}))
    config = {"base_port": arguments.base_port, "owners": owners, "data": {o: str(data / o) for o in owners},
              "test": str(data / "test") if (data / "test").is_dir() else "", "classes": classes}
    layout.config_path.write_text(json.dumps(config, indent=1))

    subprocess.run([sys.executable, str(Path(__file__).with_name("make_certs.py")), "--out", str(layout.certs)],
                   check=True, capture_output=True)
    start_superlink(layout)
    ports = layout.ports()
    settings = [item for pair in (arguments.set or []) for item in ("--set", pair)]
    _lmeraser("server", "init", "--state-dir", str(layout.server), "--superlink", f"127.0.0.1:{ports['control_api']}",
              "--superlink-ca", str(layout.certs / "ca.crt"), "--control-address", f"127.0.0.1:{ports['server']}",
              "--tls-cert", str(layout.certs / "server.pem"), "--tls-key", str(layout.certs / "server.key"),
              "--classes", classes, *settings)
    start_server(layout)
    for owner in owners:
        add_owner(layout, owner)
        start_node(layout, owner)
    print(f"federation running in {layout.run}: SuperLink 127.0.0.1:{ports['fleet']} (Fleet API, gRPC with TLS), "
          f"control service 127.0.0.1:{ports['server']}, owners {', '.join(owners)}")
    return 0


def command_join(arguments: argparse.Namespace) -> int:
    layout = Layout(Path(arguments.run))
    config = layout.config()
    if arguments.name in config["owners"]:
        raise SystemExit(f"error: owner {arguments.name} already belongs to the federation; choose another name")
    config["owners"].append(arguments.name)
    config["data"][arguments.name] = str(Path(arguments.data).resolve())
    if arguments.backbone_checkpoint:
        config.setdefault("checkpoints", {})[arguments.name] = str(Path(arguments.backbone_checkpoint).resolve())
    layout.config_path.write_text(json.dumps(config, indent=1))
    add_owner(layout, arguments.name)
    start_node(layout, arguments.name)
    print(f"owner {arguments.name} enrolled and its SuperNode started")
    return 0


def command_stop(arguments: argparse.Namespace) -> int:
    layout = Layout(Path(arguments.run))
    names = sorted(p.stem for p in layout.pids.glob("*.pid")) if layout.pids.exists() else []
    order = [n for n in names if n.startswith("node-")] + [n for n in ("server", "superlink") if n in names]
    for name in order:
        kill(layout, name)
    # The SuperLink starts each job's ServerApp itself; stop one left behind by a killed SuperLink.
    serverapp = layout.server / "serverapp.pid"
    if serverapp.exists():
        pid = serverapp.read_text().strip()
        command = Path(f"/proc/{pid}/cmdline")
        # Signal the PID only while it still is a ServerApp: a PID can be reused once its process ends.
        if pid.isdigit() and command.exists() and b"flwr-serverapp" in command.read_bytes():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    print(f"stopped {', '.join(order) or 'nothing'}")
    return 0


def command_train(arguments: argparse.Namespace) -> int:
    layout = Layout(Path(arguments.run))
    # Inherit the terminal, so that the progress lines appear as the rounds finish.
    return subprocess.run([str(BIN / "lmeraser"), "server", "train", "--state-dir", str(layout.server), "--wait"],
                          env=_environment()).returncode


def command_piece(arguments: argparse.Namespace) -> int:
    layout = Layout(Path(arguments.run))
    if arguments.command == "superlink":
        start_superlink(layout)
    elif arguments.command == "server":
        start_server(layout)
    elif arguments.command == "node":
        start_node(layout, arguments.name)
    elif arguments.command == "kill":
        number = signal.SIGKILL if arguments.hard else signal.SIGTERM
        print("stopped" if kill(layout, arguments.name, number) else f"{arguments.name} was not running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start SuperLink, server and owners' SuperNodes")
    start.add_argument("--run", required=True, help="new folder for keys, state, PID files and logs")
    start.add_argument("--owners", type=int, default=3, help="number of owners (default: %(default)s)")
    start.add_argument("--data", default="", help="folder of owner image folders (default: digits split)")
    start.add_argument("--partitioner", default="iid", help="partitioner of the digits split (default: iid)")
    start.add_argument("--seed", type=int, default=0, help="seed of the digits split (default: 0)")
    start.add_argument("--classes", default="", help="class names (default: the folders' class folders)")
    start.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                       help="first of the ports used on 127.0.0.1 (default: %(default)s)")
    start.add_argument("--set", action="append", metavar="KEY=VALUE", help="job setting for 'lmeraser server init'")
    start.set_defaults(handler=command_start)

    for name, text in (("stop", "stop every process of the federation"), ("train", "train and wait"),
                       ("superlink", "start the SuperLink again"), ("server", "start the lmeraser server again")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--run", required=True, help="the federation's folder")
        sub.set_defaults(handler={"stop": command_stop, "train": command_train}.get(name, command_piece))
    node = commands.add_parser("node", help="start an owner's SuperNode again")
    node.add_argument("name", help="owner id")
    node.add_argument("--run", required=True, help="the federation's folder")
    node.set_defaults(handler=command_piece)
    join = commands.add_parser("join", help="enrol one more owner and start its SuperNode")
    join.add_argument("name", help="owner id")
    join.add_argument("--run", required=True, help="the federation's folder")
    join.add_argument("--data", required=True, help="the owner's image folder")
    join.add_argument("--backbone-checkpoint", default="", help="the owner's own backbone weights")
    join.set_defaults(handler=command_join)
    stop_one = commands.add_parser("kill", help="stop one process: superlink, server or node-OWNER")
    stop_one.add_argument("name", help="process name (its PID file's name)")
    stop_one.add_argument("--run", required=True, help="the federation's folder")
    stop_one.add_argument("--hard", action="store_true", help="SIGKILL instead of SIGTERM")
    stop_one.set_defaults(handler=command_piece)

    arguments = parser.parse_args(argv)
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
