"""Print uzram attributes from inside the guest (mode B), one console line each.

Run by the guest's /init with the host's venv Python, chrooted into the
read-only 9p view of the host, with the repository on PYTHONPATH (it needs
only the standard library, ``uzram/control.py`` and ``tests/daemon.py``):
``python guest_query.py CONTROL_SOCK DEVICE LABEL ATTR...``. Prints
``UZRAM-SERVER: LABEL ATTR v1 v2 ...`` per attribute (``hardening``: the
counters of ``HARDENING`` from that reply); exit status 1 if the daemon
cannot be asked.
"""

from __future__ import annotations

import io
import socket
import sys

from tests.daemon import raise_for
from uzram.control import ProtocolError, encode, read_reply


def show(sock: socket.socket, reader: io.BufferedReader, device: str, attr: str) -> str:
    """One ``show`` request; progress lines are skipped."""
    sock.sendall(encode({"cmd": "show", "device": device, "attr": attr}))
    return str(raise_for(read_reply(reader))["value"])


# the hardening reply's counters printed as its "attribute" (integers, in this order)
HARDENING = ("dedup_shares", "dedup_pages", "refused_writes", "low_reserve_episodes", "pressure_compactions",
             "feeds", "feeds_reclaim_io")


def hardening(sock: socket.socket, reader: io.BufferedReader) -> str:
    sock.sendall(encode({"cmd": "hardening"}))
    state = raise_for(read_reply(reader))["hardening"]
    return " ".join(str(int(state.get(k, 0))) for k in HARDENING)


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: guest_query.py CONTROL_SOCK DEVICE LABEL ATTR...", file=sys.stderr)
        return 2
    path, device, label, *attrs = argv
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(path)
            reader = s.makefile("rb")
            for attr in attrs:
                value = hardening(s, reader) if attr == "hardening" else show(s, reader, device, attr)
                print(f"UZRAM-SERVER: {label} {attr} {' '.join(value.split())}")
    except (OSError, ValueError, ProtocolError) as e:
        print(f"UZRAM-SERVER: {label} error {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
