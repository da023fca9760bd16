"""Unit tests of the sans-I/O core with hand-built byte sequences."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uzram.nbd import constants as C
from uzram.nbd.export import StaticRegistry
from uzram.nbd.handshake import Handshake, HandshakeState, transmission_flags
from uzram.nbd.proto import (
    ProtocolError,
    Transmission,
    block_status_chunk,
    done_chunk,
    error_chunk,
    hole_chunk,
    read_chunk_header,
    simple_reply,
    wire_error,
)

from .memexport import MemExport

GREETING = struct.pack(">QQH", C.NBDMAGIC, C.IHAVEOPT, 3)
CFLAGS = struct.pack(">I", 3)


def opt(o: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", C.IHAVEOPT, o, len(data)) + data


def info_data(name: str, *infos: int) -> bytes:
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(f">H{len(infos)}H", len(infos), *infos)


def meta_data(name: str, *queries: str) -> bytes:
    n = name.encode()
    out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q.encode())) + q.encode()
    return out


def parse_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    while data:
        magic, o, rtype, length = struct.unpack_from(">QIII", data)
        assert magic == C.OPT_REPLY_MAGIC
        out.append((o, rtype, data[20 : 20 + length]))
        data = data[20 + length :]
    return out


@pytest.fixture
def exports() -> list[MemExport]:
    return [MemExport(1 << 20, "a", "first"), MemExport(4096, "b", "", read_only=True)]


@pytest.fixture
def hs(exports: list[MemExport]) -> Handshake:
    h = Handshake(StaticRegistry(list(exports)))
    assert h.data_to_send() == GREETING
    h.receive_data(CFLAGS)
    assert h.state is HandshakeState.OPTIONS
    return h


def run_opt(h: Handshake, o: int, data: bytes = b"") -> list[tuple[int, bytes]]:
    h.receive_data(opt(o, data))
    replies = parse_replies(h.data_to_send())
    assert all(r[0] == o for r in replies)
    return [(r[1], r[2]) for r in replies]


# --- handshake -------------------------------------------------------------------


def test_greeting_and_client_flags(exports: list[MemExport]) -> None:
    h = Handshake(StaticRegistry(list(exports)))
    assert h.state is HandshakeState.CLIENT_FLAGS
    assert h.data_to_send() == GREETING
    h.receive_data(b"\0\0")
    assert h.state is HandshakeState.CLIENT_FLAGS
    h.receive_data(b"\0\1")
    assert h.state is HandshakeState.OPTIONS and h.client_flags == 1


@pytest.mark.parametrize("flags", [4, 1 << 31, 0x7])
def test_unknown_client_flags_drop(exports: list[MemExport], flags: int) -> None:
    h = Handshake(StaticRegistry(list(exports)))
    with pytest.raises(ProtocolError):
        h.receive_data(struct.pack(">I", flags))


@pytest.mark.parametrize("cflags,pad", [(3, 0), (1, 124), (0, 124)])
def test_export_name(exports: list[MemExport], cflags: int, pad: int) -> None:
    h = Handshake(StaticRegistry(list(exports)))
    h.data_to_send()
    h.receive_data(struct.pack(">I", cflags) + opt(C.OPT_EXPORT_NAME, b"a"))
    out = h.data_to_send()
    assert len(out) == 10 + pad
    size, tflags = struct.unpack_from(">QH", out)
    assert size == 1 << 20 and tflags == transmission_flags(False)
    assert out[10:] == bytes(pad)
    assert h.state is HandshakeState.TRANSMISSION
    assert h.result is not None and h.result.export is exports[0] and not h.result.structured_replies
    assert exports[0].attached == 1


def test_export_name_default_and_trailing(hs: Handshake, exports: list[MemExport]) -> None:
    hs.receive_data(opt(C.OPT_EXPORT_NAME) + b"REQ")
    assert hs.result is not None and hs.result.export is exports[0] and hs.result.name == ""
    assert hs.trailing_data() == b"REQ"


def test_export_name_unknown_drops(hs: Handshake) -> None:
    with pytest.raises(ProtocolError):
        hs.receive_data(opt(C.OPT_EXPORT_NAME, b"nope"))


def test_export_name_refused_drops(hs: Handshake, exports: list[MemExport]) -> None:
    exports[0].refuse_attach = errno.EBUSY
    with pytest.raises(ProtocolError):
        hs.receive_data(opt(C.OPT_EXPORT_NAME, b"a"))
    assert exports[0].attached == 0


def test_go_replies(hs: Handshake, exports: list[MemExport]) -> None:
    replies = run_opt(hs, C.OPT_GO, info_data("", C.INFO_BLOCK_SIZE, C.INFO_NAME, C.INFO_DESCRIPTION, 77))
    assert [r[0] for r in replies] == [C.REP_INFO] * 4 + [C.REP_ACK]
    assert replies[0][1] == struct.pack(">HQH", C.INFO_EXPORT, 1 << 20, transmission_flags(False))
    assert replies[1][1] == struct.pack(">HIII", C.INFO_BLOCK_SIZE, 1, 4096, 64 << 20)
    assert replies[2][1] == struct.pack(">H", C.INFO_NAME) + b"a"
    assert replies[3][1] == struct.pack(">H", C.INFO_DESCRIPTION) + b"first"
    assert hs.state is HandshakeState.TRANSMISSION and exports[0].attached == 1


def test_go_without_infos_and_read_only(hs: Handshake, exports: list[MemExport]) -> None:
    replies = run_opt(hs, C.OPT_GO, info_data("b", C.INFO_DESCRIPTION))
    # INFO_EXPORT always, BLOCK_SIZE always; an empty description is not sent
    assert [r[0] for r in replies] == [C.REP_INFO, C.REP_INFO, C.REP_ACK]
    _, size, tflags = struct.unpack(">HQH", replies[0][1])
    assert size == 4096
    assert tflags & C.FLAG_READ_ONLY and not tflags & (C.FLAG_SEND_TRIM | C.FLAG_SEND_WRITE_ZEROES)
    assert not tflags & C.FLAG_ROTATIONAL


def test_info_does_not_attach(hs: Handshake, exports: list[MemExport]) -> None:
    replies = run_opt(hs, C.OPT_INFO, info_data("a"))
    assert replies[-1][0] == C.REP_ACK
    assert hs.state is HandshakeState.OPTIONS and exports[0].attach_calls == 0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0\0\0",
        struct.pack(">IH", 0, 0)[:5],
        struct.pack(">I", 10) + b"ab" + struct.pack(">H", 0),  # name longer than the option
        info_data("a")[:-2] + struct.pack(">H", 2),  # claims 2 infos, carries none
        info_data("a", 1) + b"x",  # trailing garbage
    ],
)
@pytest.mark.parametrize("o", [C.OPT_GO, C.OPT_INFO])
def test_info_go_malformed(hs: Handshake, o: int, data: bytes) -> None:
    replies = run_opt(hs, o, data)
    assert replies == [(C.REP_ERR_INVALID, replies[0][1])]
    assert hs.state is HandshakeState.OPTIONS


def test_go_unknown_export(hs: Handshake) -> None:
    replies = run_opt(hs, C.OPT_GO, info_data("zzz"))
    assert replies[0][0] == C.REP_ERR_UNKNOWN and b"zzz" in replies[0][1]
    assert hs.state is HandshakeState.OPTIONS


def test_go_bad_utf8(hs: Handshake) -> None:
    data = struct.pack(">I", 2) + b"\xff\xfe" + struct.pack(">H", 0)
    assert run_opt(hs, C.OPT_GO, data)[0][0] == C.REP_ERR_INVALID


@pytest.mark.parametrize(
    "err,rep",
    [
        (errno.EBUSY, C.REP_ERR_UNKNOWN),
        (errno.ENODEV, C.REP_ERR_UNKNOWN),
        (errno.ESHUTDOWN, C.REP_ERR_SHUTDOWN),
        (errno.EPERM, C.REP_ERR_POLICY),
    ],
)
def test_go_attach_refused(hs: Handshake, exports: list[MemExport], err: int, rep: int) -> None:
    exports[0].refuse_attach = err
    assert run_opt(hs, C.OPT_GO, info_data("a"))[0][0] == rep
    assert hs.state is HandshakeState.OPTIONS and hs.result is None
    exports[0].refuse_attach = None
    assert run_opt(hs, C.OPT_GO, info_data("a"))[-1][0] == C.REP_ACK


def test_list(hs: Handshake) -> None:
    replies = run_opt(hs, C.OPT_LIST)
    assert replies == [
        (C.REP_SERVER, struct.pack(">I", 1) + b"a" + b"first"),
        (C.REP_SERVER, struct.pack(">I", 1) + b"b"),
        (C.REP_ACK, b""),
    ]
    assert run_opt(hs, C.OPT_LIST, b"x")[0][0] == C.REP_ERR_INVALID


def test_abort(hs: Handshake) -> None:
    assert run_opt(hs, C.OPT_ABORT) == [(C.REP_ACK, b"")]
    assert hs.state is HandshakeState.CLOSED
    hs.receive_data(opt(C.OPT_LIST))  # ignored after ABORT
    assert hs.data_to_send() == b""


def test_structured_reply(hs: Handshake) -> None:
    assert run_opt(hs, C.OPT_STRUCTURED_REPLY, b"x")[0][0] == C.REP_ERR_INVALID
    assert not hs.structured_replies
    assert run_opt(hs, C.OPT_STRUCTURED_REPLY) == [(C.REP_ACK, b"")]
    assert run_opt(hs, C.OPT_STRUCTURED_REPLY) == [(C.REP_ACK, b"")]
    run_opt(hs, C.OPT_GO, info_data(""))
    assert hs.result is not None and hs.result.structured_replies and hs.result.meta_context_id is None


@pytest.mark.parametrize("o", [C.OPT_LIST_META_CONTEXT, C.OPT_SET_META_CONTEXT])
def test_meta_context_needs_structured_replies(hs: Handshake, o: int) -> None:
    assert run_opt(hs, o, meta_data("", "base:allocation"))[0][0] == C.REP_ERR_INVALID


def test_list_meta_context(hs: Handshake) -> None:
    run_opt(hs, C.OPT_STRUCTURED_REPLY)
    ctx = (C.REP_META_CONTEXT, struct.pack(">I", 0) + b"base:allocation")
    assert run_opt(hs, C.OPT_LIST_META_CONTEXT, meta_data("")) == [ctx, (C.REP_ACK, b"")]
    assert run_opt(hs, C.OPT_LIST_META_CONTEXT, meta_data("a", "base:")) == [ctx, (C.REP_ACK, b"")]
    assert run_opt(hs, C.OPT_LIST_META_CONTEXT, meta_data("a", "x-foo:bar")) == [(C.REP_ACK, b"")]
    assert run_opt(hs, C.OPT_LIST_META_CONTEXT, meta_data("nope"))[0][0] == C.REP_ERR_UNKNOWN
    assert run_opt(hs, C.OPT_LIST_META_CONTEXT, meta_data("a")[:-1])[0][0] == C.REP_ERR_INVALID
    assert run_opt(hs, C.OPT_LIST_META_CONTEXT, meta_data("a", "q") + b"z")[0][0] == C.REP_ERR_INVALID
    bad_count = meta_data("a")[:-4] + struct.pack(">I", 3)
    assert run_opt(hs, C.OPT_LIST_META_CONTEXT, bad_count)[0][0] == C.REP_ERR_INVALID


def test_set_meta_context_then_go(hs: Handshake) -> None:
    run_opt(hs, C.OPT_STRUCTURED_REPLY)
    assert run_opt(hs, C.OPT_SET_META_CONTEXT, meta_data("", "x-other:thing", "base:allocation")) == [
        (C.REP_META_CONTEXT, struct.pack(">I", 1) + b"base:allocation"),
        (C.REP_ACK, b""),
    ]
    run_opt(hs, C.OPT_GO, info_data(""))
    assert hs.result is not None and hs.result.meta_context_id == 1


def test_set_meta_context_cleared_or_other_export(hs: Handshake) -> None:
    run_opt(hs, C.OPT_STRUCTURED_REPLY)
    run_opt(hs, C.OPT_SET_META_CONTEXT, meta_data("a", "base:allocation"))
    assert run_opt(hs, C.OPT_SET_META_CONTEXT, meta_data("a")) == [(C.REP_ACK, b"")]  # selects nothing
    run_opt(hs, C.OPT_SET_META_CONTEXT, meta_data("b", "base:allocation"))
    run_opt(hs, C.OPT_GO, info_data("a"))  # a different export than the contexts were set for
    assert hs.result is not None and hs.result.meta_context_id is None


def test_starttls_policy(hs: Handshake) -> None:
    assert run_opt(hs, C.OPT_STARTTLS)[0][0] == C.REP_ERR_POLICY
    assert run_opt(hs, C.OPT_STARTTLS, b"x")[0][0] == C.REP_ERR_INVALID


@pytest.mark.parametrize("o", [C.OPT_EXTENDED_HEADERS, C.OPT_PEEK_EXPORT, 0x7654321, 0])
def test_unsupported_options_consume_payload(hs: Handshake, o: int) -> None:
    assert run_opt(hs, o, b"1234")[0][0] == C.REP_ERR_UNSUP
    assert run_opt(hs, C.OPT_LIST)[-1][0] == C.REP_ACK  # stream still in sync


def test_option_length_cap(hs: Handshake) -> None:
    with pytest.raises(ProtocolError):
        hs.receive_data(struct.pack(">QII", C.IHAVEOPT, C.OPT_GO, 65537))


def test_option_count_cap(exports: list[MemExport]) -> None:
    h = Handshake(StaticRegistry(list(exports)), max_options=3)
    h.receive_data(CFLAGS + opt(C.OPT_LIST) * 3)
    with pytest.raises(ProtocolError):
        h.receive_data(opt(C.OPT_LIST))


def test_bad_option_magic(hs: Handshake) -> None:
    with pytest.raises(ProtocolError):
        hs.receive_data(struct.pack(">QII", 0x1234, C.OPT_LIST, 0))


def test_byte_at_a_time_equals_all_at_once(exports: list[MemExport]) -> None:
    stream = (
        CFLAGS
        + opt(C.OPT_STRUCTURED_REPLY)
        + opt(C.OPT_LIST)
        + opt(99, b"xyz")
        + opt(C.OPT_SET_META_CONTEXT, meta_data("", "base:allocation"))
        + opt(C.OPT_INFO, info_data("b", C.INFO_NAME))
        + opt(C.OPT_GO, info_data("", C.INFO_BLOCK_SIZE))
    )
    whole = Handshake(StaticRegistry(list(exports)))
    whole.receive_data(stream)
    one = Handshake(
        StaticRegistry([MemExport(1 << 20, "a", "first"), MemExport(4096, "b", "", read_only=True)])
    )
    out = b""
    for i in range(len(stream)):
        one.receive_data(stream[i : i + 1])
        out += one.data_to_send()
    assert out == whole.data_to_send()
    assert one.state is whole.state is HandshakeState.TRANSMISSION
    assert one.result is not None and one.result.meta_context_id == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_handshake_fuzz_only_protocol_errors(data: bytes) -> None:
    h = Handshake(StaticRegistry([MemExport(8192, "a")]))
    try:
        h.receive_data(CFLAGS + struct.pack(">Q", C.IHAVEOPT) + data)
    except ProtocolError:
        pass


# --- transmission ------------------------------------------------------------------

SIZE = 1 << 20


def make_tx(*, read_only: bool = False, structured: bool = False, meta: bool = False) -> Transmission:
    exp = MemExport(SIZE, "a", read_only=read_only)
    h = Handshake(StaticRegistry([exp]))
    h.receive_data(CFLAGS)
    if structured:
        h.receive_data(opt(C.OPT_STRUCTURED_REPLY))
        if meta:
            h.receive_data(opt(C.OPT_SET_META_CONTEXT, meta_data("", "base:allocation")))
    h.receive_data(opt(C.OPT_GO, info_data("")))
    assert h.result is not None
    return Transmission(h.result)


def req(
    cmd: int, offset: int = 0, length: int = 0, flags: int = 0, cookie: int = 7, magic: int = C.REQUEST_MAGIC
) -> bytes:
    return struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length)


def check(tx: Transmission, cmd: int, offset: int = 0, length: int = 0, flags: int = 0) -> int:
    r = tx.parse(req(cmd, offset, length, flags), 0, 28)
    assert r is not None and r[:5] == (cmd, flags, 7, offset, length)
    return r[5]


def test_parse_incomplete_and_offsets() -> None:
    tx = make_tx()
    buf = b"xx" + req(C.CMD_READ, 4096, 512, cookie=0xDEADBEEF00000001)
    assert tx.parse(buf, 2, len(buf) - 1) is None
    assert tx.parse(buf, 2, len(buf)) == (C.CMD_READ, 0, 0xDEADBEEF00000001, 4096, 512, 0)


def test_bad_magic_is_fatal() -> None:
    with pytest.raises(ProtocolError):
        make_tx().parse(req(C.CMD_READ, 0, 512, magic=0x12345678), 0, 28)


@pytest.mark.parametrize(
    "cmd,offset,length,flags,err",
    [
        (C.CMD_READ, 0, 4096, 0, 0),
        (C.CMD_READ, 0, 4096, C.CMD_FLAG_FUA, 0),
        (C.CMD_WRITE, SIZE - 1, 1, C.CMD_FLAG_FUA, 0),
        (C.CMD_READ, SIZE - 1, 2, 0, C.EINVAL),
        (C.CMD_READ, SIZE, 1, 0, C.EINVAL),
        (C.CMD_READ, 2**64 - 1, 2, 0, C.EINVAL),  # offset+length overflows u64
        (C.CMD_TRIM, SIZE, 4096, 0, C.EINVAL),
        (C.CMD_CACHE, SIZE, 4096, 0, C.EINVAL),
        (C.CMD_WRITE, SIZE - 512, 1024, 0, C.ENOSPC),
        (C.CMD_WRITE_ZEROES, 2**64 - 512, 1024, 0, C.ENOSPC),
        (C.CMD_READ, 0, 0, 0, C.EINVAL),
        (C.CMD_WRITE, 0, 0, 0, C.EINVAL),
        (C.CMD_TRIM, 0, 0, 0, C.EINVAL),
        (C.CMD_WRITE_ZEROES, 0, 0, 0, C.EINVAL),
        (99, 0, 0, 0, C.EINVAL),
        (8, 0, 4096, 0, C.EINVAL),
        (C.CMD_READ, 0, 512, 1 << 5, C.EINVAL),  # unknown flag bit
        (C.CMD_READ, 0, 512, 1 << 15, C.EINVAL),
        (C.CMD_WRITE, 0, 512, C.CMD_FLAG_NO_HOLE, C.EINVAL),
        (C.CMD_WRITE_ZEROES, 0, 512, C.CMD_FLAG_NO_HOLE | C.CMD_FLAG_FUA, 0),
        (C.CMD_WRITE_ZEROES, 0, 512, C.CMD_FLAG_FAST_ZERO, 0),
        (C.CMD_WRITE, 0, 512, C.CMD_FLAG_FAST_ZERO, C.EINVAL),
        (C.CMD_READ, 0, 512, C.CMD_FLAG_DF, C.EINVAL),
        (C.CMD_READ, 0, 512, C.CMD_FLAG_REQ_ONE, C.EINVAL),
        (C.CMD_FLUSH, 0, 0, 0, 0),
        (C.CMD_FLUSH, 0, 0, C.CMD_FLAG_FUA, 0),
        (C.CMD_FLUSH, 1, 0, 0, C.EINVAL),
        (C.CMD_FLUSH, 0, 1, 0, C.EINVAL),
        (C.CMD_TRIM, 0, 4096, C.CMD_FLAG_FUA, 0),
        (C.CMD_CACHE, 0, 4096, 0, 0),
        (C.CMD_BLOCK_STATUS, 0, 4096, 0, C.EINVAL),  # no meta context negotiated
        (C.CMD_DISC, 0, 0, 0, 0),
    ],
)
def test_validation(cmd: int, offset: int, length: int, flags: int, err: int) -> None:
    assert check(make_tx(), cmd, offset, length, flags) == err


def test_large_requests() -> None:
    tx = make_tx()
    tx.size = 1 << 40
    assert check(tx, C.CMD_READ, 0, 64 << 20) == 0
    assert check(tx, C.CMD_READ, 0, (64 << 20) + 1) == C.EINVAL
    assert check(tx, C.CMD_WRITE, 0, 72 << 20) == C.EINVAL  # payload still follows
    assert check(tx, C.CMD_TRIM, 0, 0xFFFFFFFF) == 0
    assert check(tx, C.CMD_WRITE_ZEROES, 0, 0xFFFFFFFF) == 0
    with pytest.raises(ProtocolError):
        tx.parse(req(C.CMD_WRITE, 0, (128 << 20) + 1), 0, 28)


def test_read_only_validation() -> None:
    tx = make_tx(read_only=True)
    assert check(tx, C.CMD_WRITE, 0, 512) == C.EPERM
    assert check(tx, C.CMD_WRITE, SIZE, 512) == C.EPERM  # EPERM before range, as nbdkit
    assert check(tx, C.CMD_TRIM, 0, 512) == C.EPERM
    assert check(tx, C.CMD_WRITE_ZEROES, 0, 512) == C.EPERM
    assert check(tx, C.CMD_READ, 0, 512) == 0
    assert check(tx, C.CMD_READ, 0, 512, C.CMD_FLAG_FUA) == C.EINVAL  # FUA not advertised
    assert check(tx, C.CMD_FLUSH) == 0


def test_block_status_validation() -> None:
    tx = make_tx(structured=True, meta=True)
    assert check(tx, C.CMD_BLOCK_STATUS, 0, 4096) == 0
    assert check(tx, C.CMD_BLOCK_STATUS, 0, 4096, C.CMD_FLAG_REQ_ONE) == 0
    assert check(tx, C.CMD_BLOCK_STATUS, SIZE, 1) == C.EINVAL
    assert check(tx, C.CMD_BLOCK_STATUS, 0, 0) == C.EINVAL
    assert check(make_tx(structured=True), C.CMD_BLOCK_STATUS, 0, 4096) == C.EINVAL


def test_fast_zero_needs_advertising() -> None:
    exp = MemExport(SIZE, "a")
    h = Handshake(StaticRegistry([exp]), fast_zero=False)
    h.receive_data(CFLAGS + opt(C.OPT_GO, info_data("")))
    assert h.result is not None
    tx = Transmission(h.result)
    assert not tx.flags & C.FLAG_SEND_FAST_ZERO
    assert check(tx, C.CMD_WRITE_ZEROES, 0, 512, C.CMD_FLAG_FAST_ZERO) == C.EINVAL


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_validation_never_raises(flags: int, cmd: int, offset: int, length: int) -> None:
    tx = make_tx(structured=True, meta=True)
    try:
        r = tx.parse(req(cmd, offset, length, flags), 0, 28)
    except ProtocolError:
        assert cmd == C.CMD_WRITE and length > C.MAX_SKIP_PAYLOAD
        return
    assert r is not None
    err = r[5]
    assert err in (0, C.EINVAL, C.ENOSPC, C.EPERM)
    if err == 0 and cmd != C.CMD_DISC:
        assert cmd <= C.CMD_BLOCK_STATUS and not flags & ~0x1F
        if cmd != C.CMD_FLUSH:
            assert 0 < length and offset + length <= SIZE


# --- reply encoders ---------------------------------------------------------------


def test_simple_and_read_replies() -> None:
    assert simple_reply(0x0102030405060708, 22) == struct.pack(
        ">IIQ", C.SIMPLE_REPLY_MAGIC, 22, 0x0102030405060708
    )
    tx = make_tx()
    assert tx.read_header(5, 4096, 512) == simple_reply(5)
    assert tx.error_reply(5, C.CMD_READ, C.EIO) == simple_reply(5, C.EIO)
    sr = make_tx(structured=True)
    assert sr.read_header(5, 4096, 512) == read_chunk_header(5, 4096, 512)
    assert read_chunk_header(5, 4096, 512) == struct.pack(
        ">IHHQIQ", C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE, C.REPLY_TYPE_OFFSET_DATA, 5, 520, 4096
    )
    # READ errors are structured once SR is on; WRITE errors may stay simple
    assert sr.error_reply(5, C.CMD_READ, C.EIO) == error_chunk(5, C.EIO)
    assert sr.error_reply(5, C.CMD_WRITE, C.EIO) == simple_reply(5, C.EIO)


def test_hole_and_done_chunks() -> None:
    assert hole_chunk(3, 8192, 4096, done=False) == struct.pack(
        ">IHHQIQI", C.STRUCTURED_REPLY_MAGIC, 0, C.REPLY_TYPE_OFFSET_HOLE, 3, 12, 8192, 4096
    )
    assert hole_chunk(3, 0, 1, done=True)[4:6] == struct.pack(">H", C.REPLY_FLAG_DONE)
    assert done_chunk(3) == struct.pack(
        ">IHHQI", C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE, C.REPLY_TYPE_NONE, 3, 0
    )


def test_error_chunk() -> None:
    assert (
        error_chunk(9, C.EIO, "oops")
        == struct.pack(
            ">IHHQIIH", C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE, C.REPLY_TYPE_ERROR, 9, 10, C.EIO, 4
        )
        + b"oops"
    )


def _extents(chunk: bytes) -> tuple[int, list[tuple[int, int]]]:
    magic, flags, rtype, cookie, length = struct.unpack_from(">IHHQI", chunk)
    assert magic == C.STRUCTURED_REPLY_MAGIC and flags == C.REPLY_FLAG_DONE
    assert rtype == C.REPLY_TYPE_BLOCK_STATUS and length == len(chunk) - 20
    body = chunk[20:]
    ctx = struct.unpack_from(">I", body)[0]
    vals = struct.unpack_from(f">{(len(body) - 4) // 4}I", body, 4)
    return ctx, list(zip(vals[::2], vals[1::2]))


def test_block_status_chunk() -> None:
    ext = [(4096, 0), (4096, 0), (8192, 3), (100000, 0)]
    assert _extents(block_status_chunk(1, 1, ext, 20000, False)) == (1, [(8192, 0), (8192, 3), (3616, 0)])
    assert _extents(block_status_chunk(1, 1, ext, 20000, True)) == (1, [(8192, 0)])
    assert _extents(block_status_chunk(1, 1, [(1 << 40, 7)], 4096, True)) == (1, [(4096, 3)])
    with pytest.raises(ValueError):
        block_status_chunk(1, 1, [], 4096, False)


def test_wire_errors() -> None:
    assert wire_error(errno.EPERM) == C.EPERM
    assert wire_error(errno.EROFS) == C.EPERM
    assert wire_error(errno.EIO) == C.EIO
    assert wire_error(errno.ENOMEM) == C.ENOMEM
    assert wire_error(errno.EINVAL) == C.EINVAL
    assert wire_error(errno.ENOSPC) == C.ENOSPC
    assert wire_error(errno.EDQUOT) == C.ENOSPC
    assert wire_error(errno.EFBIG) == C.ENOSPC
    assert wire_error(errno.ESHUTDOWN) == C.ESHUTDOWN
    assert wire_error(errno.ENOTSUP, C.CMD_FLAG_FAST_ZERO) == C.ENOTSUP
    assert wire_error(errno.ENOTSUP) == C.EINVAL
    assert wire_error(errno.EOVERFLOW) == C.EINVAL
    assert wire_error(errno.EBADF) == C.EIO
    assert wire_error(errno.ENODEV) == C.EIO
    assert wire_error(None) == C.EIO
