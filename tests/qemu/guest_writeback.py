"""Write idle pages back, over and over, from inside the guest (mode B with a
backing device), while the memory hog fills the guest: writeback under
memory pressure, the way a user's timer would run it.

Run by the guest's /init like ``guest_query.py`` (the host's venv Python,
chrooted into the 9p view of the host, only the standard library and
``uzram/control.py``): ``python guest_writeback.py CONTROL_SOCK DEVICE
SECONDS``. Every SECONDS it stores ``writeback=idle`` (the pages marked idle
a round ago and not touched since) and then ``idle=all``; a refusal
(EAGAIN while uzramd's pool reserve is low) is printed and the loop goes on.
Lines start with ``uzram-wb:``, which the host does not count as progress
(a hung hog must still be seen as hung). Runs until killed.
"""

from __future__ import annotations

import socket
import sys
import time

from uzram.control import ProtocolError, encode, read_reply


def store(path: str, device: str, attr: str, value: str) -> str:
    """One ``store`` on a fresh connection: "ok" or the error's name."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(600)
        s.connect(path)
        s.sendall(encode({"cmd": "store", "device": device, "attr": attr, "value": value}))
        reply = read_reply(s.makefile("rb"))
    return "ok" if reply.get("ok") else str(reply.get("error", "error"))


def show(path: str, device: str, attr: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(600)
        s.connect(path)
        s.sendall(encode({"cmd": "show", "device": device, "attr": attr}))
        reply = read_reply(s.makefile("rb"))
    return " ".join(str(reply.get("value", reply.get("error", "?"))).split())


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: guest_writeback.py CONTROL_SOCK DEVICE SECONDS", file=sys.stderr)
        return 2
    path, device, every = argv[0], argv[1], float(argv[2])
    n = 0
    while True:
        time.sleep(every)
        n += 1
        try:
            wb = store(path, device, "writeback", "idle")
            idle = store(path, device, "idle", "all")
            print(f"uzram-wb: round {n} writeback={wb} idle={idle} bd_stat {show(path, device, 'bd_stat')}",
                  flush=True)
        except (OSError, ProtocolError) as e:
            print(f"uzram-wb: round {n} failed: {e}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
