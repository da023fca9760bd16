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
=============  ==========================================  ====================

Errors carry the errno the kernel's sysfs would give.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

MAX_LINE = 1 << 20  # requests and replies are small; anything longer is refused


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


def raise_for(reply: dict[str, Any]) -> dict[str, Any]:
    """Return a successful reply, or raise its error as OSError."""
    if reply.get("ok"):
        return reply
    code = int(reply.get("errno", errno.EIO))
    raise OSError(code, reply.get("message") or os.strerror(code))
