"""Test certificates made with openssl: a CA, a server and a client certificate.

Layouts (nbdkit's for the server; libnbd's and qemu's for clients):

- ``server/``: ca-cert.pem, server-cert.pem, server-key.pem
- ``client/``: ca-cert.pem, client-cert.pem, client-key.pem (signed by the CA)
- ``anon/``: ca-cert.pem only (a client without a certificate)
- ``rogue/``: ca-cert.pem, plus client-cert.pem/client-key.pem signed by
  another CA
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
_SERVER_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
)
_CLIENT_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)


@dataclass(frozen=True)
class Certs:
    server: Path
    client: Path
    anon: Path
    rogue: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
    path.chmod(0o600)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert, ext = d / f"{name}-key.pem", d / f"{name}-cert.pem", d / f"{name}.ext"
    _key(key)
    ext.write_text(_CA_EXT)
    _openssl("req", "-x509", "-new", "-key", key, "-subj", f"/CN={name}", "-days", "2",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", cert)
    return cert, key


def _signed(d: Path, name: str, ext_text: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert, ext = (d / f"{name}-key.pem", d / f"{name}.csr", d / f"{name}-cert.pem",
                           d / f"{name}.ext")
    _key(key)
    ext.write_text(ext_text)
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", cert)
    return cert, key


def make_certs(root: Path) -> Certs:
    work = root / "work"
    work.mkdir(parents=True)
    ca = _ca(work, "ca")
    other = _ca(work, "other-ca")
    server = _signed(work, "server", _SERVER_EXT, ca)
    client = _signed(work, "client", _CLIENT_EXT, ca)
    rogue = _signed(work, "rogue", _CLIENT_EXT, other)
    dirs = Certs(root / "server", root / "client", root / "anon", root / "rogue")
    for d in (dirs.server, dirs.client, dirs.anon, dirs.rogue):
        d.mkdir(mode=0o700)
        shutil.copy(ca[0], d / "ca-cert.pem")
    shutil.copy(server[0], dirs.server / "server-cert.pem")
    shutil.copy(server[1], dirs.server / "server-key.pem")
    shutil.copy(client[0], dirs.client / "client-cert.pem")
    shutil.copy(client[1], dirs.client / "client-key.pem")
    shutil.copy(rogue[0], dirs.rogue / "client-cert.pem")
    shutil.copy(rogue[1], dirs.rogue / "client-key.pem")
    return dirs
