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
from pathlib import Path
from typing import Any

MAX_LINE = 1 << 20  # requests and replies are small; anything longer is refused


def runtime_dir() -> Path:
    """``/run/uzram`` for root, else ``$XDG_RUNTIME_DIR/uzram`` (or a /tmp fallback)."""
    if os.geteuid() == 0:
        return Path("/run/uzram")
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "uzram"
    return Path(f"/tmp/uzram-{os.geteuid()}")


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
