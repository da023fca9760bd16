"""Reading the control protocol's reply stream, and the progress bar."""

import errno
import io

import pytest

from uzram.control import ProtocolError, encode
from uzram.ctl.client import ControlError, read_result as read_reply
from uzram.ctl.progress import ProgressBar, bar_line


def stream(*msgs) -> io.BytesIO:
    return io.BytesIO(b"".join(encode(m) if isinstance(m, dict) else m for m in msgs))


def test_progress_lines_come_before_the_reply():
    seen = []
    f = stream({"progress": {"done": 1, "total": 4, "what": "writeback"}},
               {"progress": {"done": 4, "total": 4, "what": "writeback"}},
               {"ok": True}, {"ok": True, "value": "next"})
    assert read_reply(f, lambda *a: seen.append(a)) == {"ok": True}
    assert seen == [(1, 4, "writeback"), (4, 4, "writeback")]
    assert read_reply(f)["value"] == "next"   # the following reply is left unread


def test_errors_carry_errno_and_strerror():
    f = stream({"progress": {"done": 0, "total": 1, "what": ""}},
               {"ok": False, "errno": errno.EBUSY, "error": "EBUSY", "message": "initialised"})
    with pytest.raises(ControlError) as e:
        read_reply(f)
    assert e.value.errno == errno.EBUSY
    assert e.value.strerror == "Device or resource busy" and e.value.detail == "initialised"


@pytest.mark.parametrize("data", [b"", b'{"ok": true}', b"[1]\n", b"garbage\n"])
def test_protocol_errors(data):
    with pytest.raises(ProtocolError):
        read_reply(io.BytesIO(data))


def test_progress_bar():
    assert bar_line(5, 10, "writeback", 40) == "writeback [#########.........]  50% 5/10"
    assert len(bar_line(3, 7, "wb", 60)) == 60
    assert bar_line(0, 0, "", 30).startswith("[")   # unknown total: an empty bar
    out = io.StringIO()
    bar = ProgressBar(out)
    bar.close()
    assert out.getvalue() == ""                       # nothing drawn, nothing to end
    bar(1, 2, "wb")
    bar(2, 2, "wb")
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("100% 2/2\x1b[K\n")
