#!/usr/bin/env python3
"""Create a certificate authority and a TLS server certificate for the SuperLink and the control service.

Writes ``ca.crt``/``ca.key`` (the authority; keep ``ca.key`` offline in production) and
``server.pem``/``server.key`` signed by it, valid for the given DNS names and IP addresses.
Owners need only ``ca.crt``. An existing authority in the output folder is reused, so new
server certificates stay trusted by owners who already hold ``ca.crt``.

Example::

    python deploy/make_certs.py --out certs --dns localhost --ip 127.0.0.1
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` atomically; private keys get mode 0600."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if private:
        os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_or_create_authority(out: Path, common_name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Return the authority in ``out``, creating ``ca.key`` and ``ca.crt`` when absent."""
    key_path, cert_path = out / "ca.key", out / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA384())
    )
    _write(key_path, _key_bytes(key), private=True)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate


def issue_server_certificate(out: Path, authority_key, authority: x509.Certificate, dns_names: list[str],
                             ip_addresses: list[str], days: int) -> None:
    """Write ``server.key`` and ``server.pem`` for ``dns_names`` and ``ip_addresses``, signed by the authority."""
    if not dns_names and not ip_addresses:
        raise SystemExit("error: give at least one --dns or --ip for the server certificate")
    try:
        addresses = [ipaddress.ip_address(value) for value in ip_addresses]
    except ValueError as error:
        raise SystemExit(f"error: {error}; --ip takes an address such as 127.0.0.1") from None

    key = ec.generate_private_key(ec.SECP384R1())
    names = [x509.DNSName(name) for name in dns_names] + [x509.IPAddress(address) for address in addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns_names or ip_addresses)[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(authority.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(authority_key, hashes.SHA384())
    )
    _write(out / "server.key", _key_bytes(key), private=True)
    _write(out / "server.pem", certificate.public_bytes(serialization.Encoding.PEM))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("certs"), help="output folder (default: certs)")
    parser.add_argument("--dns", action="append", default=None,
                        help="DNS name the server is reached by; repeatable (default: localhost)")
    parser.add_argument("--ip", action="append", default=None,
                        help="IP address the server is reached by; repeatable (default: 127.0.0.1)")
    parser.add_argument("--ca-name", default="lmeraser federation CA", help="common name of a new authority")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    arguments = parser.parse_args(argv)

    dns_names = arguments.dns if arguments.dns is not None else ["localhost"]
    ip_addresses = arguments.ip if arguments.ip is not None else ["127.0.0.1"]
    arguments.out.mkdir(parents=True, exist_ok=True)
    authority_key, authority = load_or_create_authority(arguments.out, arguments.ca_name, arguments.days)
    issue_server_certificate(arguments.out, authority_key, authority, dns_names, ip_addresses, arguments.days)
    print(f"wrote {arguments.out}/ca.crt, server.pem and server.key for {', '.join(dns_names + ip_addresses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
