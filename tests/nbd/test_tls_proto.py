"""STARTTLS and the TLS policy of the sans-I/O handshake, with hand-built bytes."""

from __future__ import annotations

import socket
import struct

import pytest

from uzram.nbd import constants as C
from uzram.nbd.export import StaticRegistry
from uzram.nbd.handshake import Handshake, HandshakeState
from uzram.nbd.proto import ProtocolError
from uzram.nbd.tls import TLSError, TLSSettings, settings

from .memexport import MemExport
from .test_nbd_proto import CFLAGS, GREETING, info_data, meta_data, opt, parse_replies, run_opt


def handshake(tls: str) -> Handshake:
    h = Handshake(StaticRegistry([MemExport(1 << 20, "a", "first")]), tls=tls)
    assert h.data_to_send() == GREETING
    h.receive_data(CFLAGS)
    assert h.state is HandshakeState.OPTIONS
    return h


def start_tls(h: Handshake) -> None:
    assert run_opt(h, C.OPT_STARTTLS) == [(C.REP_ACK, b"")]
    assert h.state is HandshakeState.STARTTLS
    h.tls_established()
    assert h.state is HandshakeState.OPTIONS and h.tls_active


@pytest.mark.parametrize(
    "o,data",
    [
        (C.OPT_LIST, b""),
        (C.OPT_GO, info_data("a")),
        (C.OPT_INFO, info_data("a")),
        (C.OPT_STRUCTURED_REPLY, b""),
        (C.OPT_LIST_META_CONTEXT, meta_data("a", "base:allocation")),
        (C.OPT_EXTENDED_HEADERS, b""),
        (1000, b"xyz"),
    ],
)
def test_require_refuses_options_before_tls(o: int, data: bytes) -> None:
    h = handshake("require")
    replies = run_opt(h, o, data)
    assert [r[0] for r in replies] == [C.REP_ERR_TLS_REQD]
    assert h.state is HandshakeState.OPTIONS and h.result is None
    # and after TLS the same option is served
    start_tls(h)
    if o == C.OPT_GO:
        assert run_opt(h, o, data)[-1][0] == C.REP_ACK
        assert h.state is HandshakeState.TRANSMISSION and h.result is not None
        h.result.export.detach()


def test_require_list_after_tls() -> None:
    h = handshake("require")
    start_tls(h)
    replies = run_opt(h, C.OPT_LIST)
    assert [r[0] for r in replies] == [C.REP_SERVER, C.REP_ACK]


def test_require_export_name_before_tls_closes() -> None:
    h = handshake("require")
    with pytest.raises(ProtocolError):
        h.receive_data(opt(C.OPT_EXPORT_NAME, b"a"))
    assert h.result is None


def test_require_abort_before_tls() -> None:
    h = handshake("require")
    assert run_opt(h, C.OPT_ABORT) == [(C.REP_ACK, b"")]
    assert h.state is HandshakeState.CLOSED


def test_on_serves_plaintext_and_offers_starttls() -> None:
    h = handshake("on")
    assert [r[0] for r in run_opt(h, C.OPT_LIST)] == [C.REP_SERVER, C.REP_ACK]
    start_tls(h)
    assert run_opt(h, C.OPT_GO, info_data("a"))[-1][0] == C.REP_ACK
    assert h.result is not None
    h.result.export.detach()


def test_on_export_name_in_plaintext() -> None:
    h = handshake("on")
    h.receive_data(opt(C.OPT_EXPORT_NAME, b"a"))
    assert h.state is HandshakeState.TRANSMISSION
    assert h.result is not None
    h.result.export.detach()


def test_starttls_when_off_is_policy() -> None:
    h = handshake("off")
    replies = run_opt(h, C.OPT_STARTTLS)
    assert [r[0] for r in replies] == [C.REP_ERR_POLICY]
    assert h.state is HandshakeState.OPTIONS and not h.tls_active


@pytest.mark.parametrize("mode", ["on", "require"])
def test_starttls_twice_is_invalid(mode: str) -> None:
    h = handshake(mode)
    start_tls(h)
    assert [r[0] for r in run_opt(h, C.OPT_STARTTLS)] == [C.REP_ERR_INVALID]
    assert h.state is HandshakeState.OPTIONS


@pytest.mark.parametrize("mode", ["off", "on", "require"])
def test_starttls_with_data_is_invalid(mode: str) -> None:
    h = handshake(mode)
    assert [r[0] for r in run_opt(h, C.OPT_STARTTLS, b"x")] == [C.REP_ERR_INVALID]
    assert h.state is HandshakeState.OPTIONS


def test_plaintext_after_starttls_is_dropped() -> None:
    """Bytes pipelined after STARTTLS (before the TLS handshake) are never acted on."""
    h = handshake("require")
    with pytest.raises(ProtocolError):
        h.receive_data(opt(C.OPT_STARTTLS) + opt(C.OPT_GO, info_data("a")))
    assert h.result is None
    h2 = handshake("on")
    h2.receive_data(opt(C.OPT_STARTTLS))
    with pytest.raises(ProtocolError):
        h2.receive_data(opt(C.OPT_LIST))


def test_plaintext_state_is_forgotten_after_tls() -> None:
    h = handshake("on")
    assert run_opt(h, C.OPT_STRUCTURED_REPLY) == [(C.REP_ACK, b"")]
    assert run_opt(h, C.OPT_SET_META_CONTEXT, meta_data("a", "base:allocation"))[-1][0] == C.REP_ACK
    start_tls(h)
    assert not h.structured_replies
    h.receive_data(opt(C.OPT_GO, info_data("a")))
    assert h.result is not None
    assert not h.result.structured_replies and h.result.meta_context_id is None
    h.result.export.detach()


def test_tls_established_outside_starttls() -> None:
    h = handshake("on")
    with pytest.raises(RuntimeError):
        h.tls_established()


def test_bad_mode() -> None:
    with pytest.raises(ValueError):
        Handshake(StaticRegistry([]), tls="maybe")


def test_require_reply_bytes() -> None:
    """The exact bytes of an ERR_TLS_REQD reply to LIST."""
    h = handshake("require")
    h.receive_data(opt(C.OPT_LIST))
    out = h.data_to_send()
    magic, o, rtype, length = struct.unpack_from(">QIII", out)
    assert (magic, o, rtype) == (C.OPT_REPLY_MAGIC, C.OPT_LIST, 0x80000005)
    assert len(out) == 20 + length and parse_replies(out)[0][2].startswith(b"TLS is required")


# --- settings resolution -----------------------------------------------------------


def test_settings_defaults() -> None:
    s = settings(None, None)
    assert s.mode == "off" and not s.explicit
    with pytest.raises(TLSError, match="--tls-certificates DIR.*--tls off"):
        s.check_tcp()
    settings("off", None).check_tcp()  # explicit: plaintext TCP allowed


def test_settings_need_certificates(tmp_path: object) -> None:
    for mode in ("on", "require"):
        with pytest.raises(TLSError, match="--tls-certificates"):
            settings(mode, None)
    with pytest.raises(TLSError, match="--tls-certificates"):
        settings(None, None, verify_peer=True)
    with pytest.raises(TLSError, match="server-cert.pem"):
        settings("on", str(tmp_path))
    with pytest.raises(TLSError):
        settings("sometimes", None)


def test_unix_never_requires() -> None:
    s = TLSSettings("require", None, True)
    assert s.mode_for(socket.AF_UNIX) == "on"
    assert s.mode_for(socket.AF_INET) == "require"
    assert s.mode_for(socket.AF_INET6) == "require"
