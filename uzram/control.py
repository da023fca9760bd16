"""The control protocol shared by uzramd and uzramctl, and their default paths.

Newline-delimited JSON over a UNIX stream socket. A client sends one request
object per line; the daemon answers each with zero or more progress lines
(``{"progress": {"done": N, "total": M, "what": "..."}}``) and then exactly one
final line: ``{"ok": true, ...}`` or ``{"ok": false, "errno": N, "error":
"EBUSY", "message": "..."}``.

Requests (``"cmd"`` selects one):

=============  ==========================================  ====================
cmd            fields                                      reply fields
=============  ==========================================  ====================
``devices``    –                                           ``devices``: names
``status``     –                                           ``devices``: list of
                                                           {name, clients,
                                                           attrs: {name: text}}
``attrs``      ``device``                                  ``attrs``: {name:
                                                           mode}
``show``       ``device``, ``attr``                        ``value``: text
``store``      ``device``, ``attr``, ``value``,            –
               ``progress`` (bool, optional)
``hot_add``    –                                           ``value``: "N\\n"
``hot_remove`` ``value``: the id as text                   –
``debug``      ``device``, ``name`` (``block_state`` or     ``value``: text
               ``classes``: zram's and zsmalloc's debugfs)
``version``    –                                           ``version``
``metrics``    –                                           ``value``: text
``hardening``  –                                           ``hardening``: the
                                                           memory measures in
                                                           force and the pool
                                                           reserves' state
=============  ==========================================  ====================

While a pool reserve runs low (memory pressure), requests for work that
allocates (``store`` of ``compact``, ``recompress``, ``idle``, ``disksize``;
``hot_add``) fail with EAGAIN; ``hardening`` reports ``low_reserve``.

Errors carry the errno the kernel's sysfs would give.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

MAX_LINE = 1 << 20  # requests and replies are small; anything longer is refused

Progress = Callable[[int, int, str], None]
"""Receives ``(done, total, what)`` of each progress line before a reply."""

# Exact names only: ASCII digits, no leading zeros, no surrounding space or
# newline, at most 9 digits (int() of a huge digit string would raise).
_DEVICE_NAME = re.compile(r"(/dev/)?zram(0|[1-9][0-9]{0,8})", re.ASCII)


def device_id(name: str, *, dev_prefix: bool = True) -> int | None:
    """The id of a device name: ``zram3`` -> 3, and ``/dev/zram3`` -> 3 too
    unless ``dev_prefix`` is false (NBD export names are exactly ``zramN``).
    Anything else (``zram03``, ``zram3\\n``, non-ASCII digits) is None."""
    m = _DEVICE_NAME.fullmatch(name)
    if m is None or (m.group(1) and not dev_prefix):
        return None
    return int(m.group(2))


def runtime_dir() -> Path:
    """``/run/uzram`` for root, else ``$XDG_RUNTIME_DIR/uzram`` (or
    ``/tmp/uzram-$UID`` without XDG_RUNTIME_DIR; see ``prepare_socket_dir``)."""
    if os.geteuid() == 0:
        return Path("/run/uzram")
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "uzram"
    return Path(f"/tmp/uzram-{os.geteuid()}")


def prepare_socket_dir(path: Path) -> None:
    """Create the directory for uzramd's sockets and state (mode 0700), or
    check an existing one: another user must not be able to put sockets there.

    The runtime directory itself (``runtime_dir()``) must be owned by this
    user and writable by no one else. Any other directory (an explicit
    ``--listen``/``--control`` path's) must be owned by this user or root and
    not group/other-writable unless sticky (as /tmp). Refusal is EPERM, with
    what to do in the message.
    """
    path = Path(path)
    strict = path == runtime_dir()
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True)
    uid = os.geteuid()
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) and not strict:
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory")
    owner_ok = st.st_uid == uid if strict else st.st_uid in (uid, 0)
    shared = st.st_mode & 0o022 and (strict or not st.st_mode & stat.S_ISVTX)
    if not owner_ok or shared:
        why = (f"owned by uid {st.st_uid}, not {uid}" if not owner_ok
               else f"mode {stat.S_IMODE(st.st_mode):04o} lets other users write in it")
        fix = (f"remove it (rm -r {path}) or set XDG_RUNTIME_DIR" if strict
               else f"use a directory of your own (chmod 700 {path} if it is)")
        raise OSError(errno.EPERM, f"{path}: {why}; another user could replace uzramd's sockets: {fix}")


def default_control_path() -> Path:
    env = os.environ.get("UZRAM_CONTROL")
    return Path(env) if env else runtime_dir() / "control.sock"


def default_nbd_path() -> Path:
    return runtime_dir() / "nbd.sock"


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("a message must be a JSON object")
    return obj


def error_reply(e: OSError) -> dict[str, Any]:
    code = e.errno or errno.EIO
    return {"ok": False, "errno": code, "error": errno.errorcode.get(code, str(code)),
            "message": e.strerror or os.strerror(code)}


def reply_errno(reply: dict[str, Any]) -> int:
    """The errno of a failed reply (EIO if it carries none that is valid)."""
    code = reply.get("errno")
    return code if isinstance(code, int) and code > 0 else errno.EIO


class ProtocolError(Exception):
    """The daemon hung up or sent something that is not the control protocol."""


def read_reply(f: BinaryIO, progress: Progress | None = None, limit: int = MAX_LINE) -> dict[str, Any]:
    """Read lines up to a request's final reply and return it, successful or
    not; the progress lines before it go to ``progress``. Lines longer than
    ``limit`` bytes (-1: no limit) are refused. Raises ProtocolError if the
    daemon hung up or sent something else."""
    while True:
        line = f.readline(limit + 1 if limit >= 0 else -1)
        if not line:
            raise ProtocolError("uzramd closed the connection")
        if not line.endswith(b"\n"):
            raise ProtocolError("reply line too long or truncated")
        try:
            reply = decode(line)
        except ValueError as e:
            raise ProtocolError(f"bad reply from uzramd: {e}") from None
        if "progress" not in reply:
            return reply
        p = reply["progress"]
        if progress is not None and isinstance(p, dict):
            progress(int(p.get("done", 0)), int(p.get("total", 0)), str(p.get("what", "")))
