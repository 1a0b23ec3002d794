"""Owner commands: ``lmeraser owner keygen|enrol|revoke|status|receipt|verify-receipt``.

An owner has two keys: an Ed25519 identity key that signs enrolment and revocation requests,
and an EC P-384 node key that authenticates the owner's SuperNode to the SuperLink.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..shared.errors import LmeraserError


def _write_node_key(path: Path, force: bool) -> None:
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_path = path.with_name(path.name + ".pub")
    if not force and (path.exists() or public_path.exists()):
        raise LmeraserError(f"node key {str(path)!r} already exists; pass --force to replace it or choose "
                            f"another --node-key path")
    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    path.write_bytes(private)
    os.chmod(path, 0o600)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                          serialization.PublicFormat.OpenSSH) + b"\n")


def command_keygen(arguments: argparse.Namespace) -> int:
    """Create the owner's identity key and SuperNode key."""
    from ..shared.identity import fingerprint, generate_key

    key = generate_key(Path(arguments.key), force=arguments.force)
    print(f"identity key {arguments.key} (public {Path(arguments.key).with_suffix('.pub')}), "
          f"fingerprint {fingerprint(key.public_key())}")
    if arguments.node_key:
        _write_node_key(Path(arguments.node_key), arguments.force)
        print(f"node key {arguments.node_key} (public {arguments.node_key}.pub) for flower-supernode "
              f"--auth-supernode-private-key")
    return 0


def _client(arguments: argparse.Namespace):
    from .control_client import ControlClient

    return ControlClient(arguments.server, Path(arguments.ca), timeout=arguments.timeout)


def command_enrol(arguments: argparse.Namespace) -> int:
    """Enrol the owner's identity key and register its SuperNode key with the server."""
    from ..shared.identity import EnrolmentRequest, load_private_key

    node_key_path = Path(arguments.node_key)
    if not node_key_path.is_file():
        raise LmeraserError(f"node public key {str(node_key_path)!r} not found; create it with 'lmeraser owner "
                            f"keygen --node-key PATH' and pass PATH.pub")
    request = EnrolmentRequest.create(arguments.owner, load_private_key(Path(arguments.key)),
                                      arguments.node_name or arguments.owner, node_key_path.read_text())
    with _client(arguments) as client:
        reply = client.enrol(request.to_json())
    print(f"enrolled owner {reply['owner']} (key {reply['fingerprint']}); SuperNode registered as node "
          f"{reply['node_id']}")
    return 0


def _verify_and_save(document: dict, arguments: argparse.Namespace, owner: str, request_hash: str = "") -> None:
    from ..server.receipts import verify_receipt
    from ..shared.identity import load_public_key

    receipt = verify_receipt(load_public_key(Path(arguments.server_key)), document, owner=owner,
                             request_hash=request_hash or None)
    print(f"receipt verified with server key {receipt.server_key}: retrained {len(receipt.clusters_retrained)} "
          f"clusters, dropped {len(receipt.clusters_dropped)} (no member left), "
          f"contacted {len(receipt.owners_contacted)} owners, {receipt.sample_epochs} samples x epochs, "
          f"model {receipt.old_model[:12] or '-'} -> {receipt.new_model[:12] or '-'}")
    if arguments.out:
        Path(arguments.out).write_text(json.dumps(document, indent=1, sort_keys=True))
        print(f"receipt saved to {arguments.out}")


def command_revoke(arguments: argparse.Namespace) -> int:
    """Sign and send a revocation request; with ``--wait``, wait for the receipt and verify it."""
    from ..shared.identity import RevocationRequest, load_private_key

    if arguments.wait and not arguments.server_key:
        raise LmeraserError("--wait verifies the receipt, so it needs --server-key (the server's "
                            "server-signing.pub)")
    request = RevocationRequest.create(arguments.owner, load_private_key(Path(arguments.key)))
    with _client(arguments) as client:
        reply = client.revoke(request.to_json())
        withdrawn = len(reply["withdrawn_clusters"])
        print(f"revocation of {arguments.owner} {reply['status']}: request {reply['request_hash']}; "
              f"{withdrawn} cluster{'s' if withdrawn != 1 else ''} withdrawn from serving at acceptance")
        if not arguments.wait:
            return 0
        deadline = time.monotonic() + arguments.wait_timeout
        while reply.get("receipt") is None:
            if time.monotonic() > deadline:
                raise LmeraserError(f"no receipt within {arguments.wait_timeout:.0f} s; check later with "
                                    f"'lmeraser owner receipt'")
            time.sleep(2.0)
            status = client.status(owner=arguments.owner)
            if status["status"] == "failed":
                raise LmeraserError(f"the unlearning job failed: {status['error']}")
            reply["receipt"] = client.receipt(owner=arguments.owner) if status["status"] == "done" else None
    _verify_and_save(reply["receipt"], arguments, arguments.owner, reply["request_hash"])
    return 0


def command_status(arguments: argparse.Namespace) -> int:
    """Print the state of the owner's revocation."""
    with _client(arguments) as client:
        status = client.status(owner=arguments.owner)
    progress = status["progress"]
    line = f"revocation of {status['owner']}: {status['status']}"
    if progress["total"]:
        line += f", {progress['phase']} {progress['done']}/{progress['total']} rounds"
    if status["error"]:
        line += f", last error: {status['error']}"
    print(line)
    return 0


def command_receipt(arguments: argparse.Namespace) -> int:
    """Fetch the owner's receipt and verify it with the server's public key."""
    with _client(arguments) as client:
        document = client.receipt(owner=arguments.owner)
    _verify_and_save(document, arguments, arguments.owner)
    return 0


def command_verify_receipt(arguments: argparse.Namespace) -> int:
    """Verify a saved receipt offline."""
    path = Path(arguments.receipt)
    if not path.is_file():
        raise LmeraserError(f"receipt file {str(path)!r} not found; save one with 'lmeraser owner receipt --out'")
    arguments.out = ""
    try:
        document = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise LmeraserError(f"receipt file {str(path)!r} is not valid JSON ({error}); pass the file saved by "
                            f"'lmeraser owner receipt --out'") from None
    _verify_and_save(document, arguments, arguments.owner or None)
    return 0


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:9300", help="control service host:port (default: %(default)s)")
    parser.add_argument("--ca", required=True, help="CA certificate that signed the server's TLS certificate")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)")


def add_owner_commands(commands) -> None:
    """Register ``lmeraser owner ...`` on the main parser's sub-commands."""
    owner = commands.add_parser("owner", help="a data owner's keys, enrolment, revocation and receipts")
    actions = owner.add_subparsers(dest="action", required=True)

    keygen = actions.add_parser("keygen", help="create an identity key (and a SuperNode key)")
    keygen.add_argument("--key", default="owner.key", help="identity key file to create (default: %(default)s)")
    keygen.add_argument("--node-key", default="", help="also create this SuperNode key (EC P-384, OpenSSH)")
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.set_defaults(handler=command_keygen)

    enrol = actions.add_parser("enrol", help="enrol the identity key and register the SuperNode key")
    enrol.add_argument("--owner", required=True, help="owner id, for example hospital-a")
    enrol.add_argument("--key", default="owner.key", help="identity key file (default: %(default)s)")
    enrol.add_argument("--node-key", required=True, help="SuperNode public key file (the .pub of --node-key)")
    enrol.add_argument("--node-name", default="", help="SuperNode name (default: the owner id)")
    _connection_options(enrol)
    enrol.set_defaults(handler=command_enrol)

    revoke = actions.add_parser("revoke", help="withdraw from the federation and get a signed receipt")
    revoke.add_argument("--owner", required=True, help="owner id")
    revoke.add_argument("--key", default="owner.key", help="identity key file (default: %(default)s)")
    revoke.add_argument("--wait", action="store_true", help="wait for the receipt and verify it")
    revoke.add_argument("--wait-timeout", type=float, default=1800.0, help="seconds to wait (default: %(default)s)")
    revoke.add_argument("--server-key", default="", help="server's public signing key, to verify the receipt")
    revoke.add_argument("--out", default="", help="save the verified receipt to this file")
    _connection_options(revoke)
    revoke.set_defaults(handler=command_revoke)

    status = actions.add_parser("status", help="state of the owner's revocation")
    status.add_argument("--owner", required=True, help="owner id")
    _connection_options(status)
    status.set_defaults(handler=command_status)

    receipt = actions.add_parser("receipt", help="fetch and verify the owner's receipt")
    receipt.add_argument("--owner", required=True, help="owner id")
    receipt.add_argument("--server-key", required=True, help="server's public signing key (server-signing.pub)")
    receipt.add_argument("--out", default="", help="save the verified receipt to this file")
    _connection_options(receipt)
    receipt.set_defaults(handler=command_receipt)

    verify = actions.add_parser("verify-receipt", help="verify a saved receipt offline")
    verify.add_argument("receipt", help="receipt file")
    verify.add_argument("--server-key", required=True, help="server's public signing key")
    verify.add_argument("--owner", default="", help="also check that the receipt names this owner")
    verify.set_defaults(handler=command_verify_receipt)

