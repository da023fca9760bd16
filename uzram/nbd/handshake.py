"""Sans-I/O NBD handshake (fixed newstyle), in the manner of h11.

No sockets and no trio here: bytes go in, bytes come out.  Feed
:class:`Handshake` what the client sent with :meth:`Handshake.receive_data`,
send what :meth:`Handshake.data_to_send` returns, and watch
:attr:`Handshake.state`: ``TRANSMISSION`` (with :attr:`Handshake.result`) or
``CLOSED``.  Fatal violations raise :class:`~.proto.ProtocolError`: drop the
connection.  It consults the export registry and, on a successful
GO/EXPORT_NAME, has attached the export: whoever runs it must call
``result.export.detach()`` later.

Its ``tls`` policy (``off``, ``on``, ``require``) governs STARTTLS: after an
accepted STARTTLS the state is ``STARTTLS``; the transport sends the queued
ACK, runs the TLS handshake and calls :meth:`Handshake.tls_established`.
"""

from __future__ import annotations

import enum
import errno
import struct
from typing import Final

from . import constants as C
from .export import BlockExport, ExportRegistry
from .proto import Negotiated, ProtocolError

__all__ = ["Handshake", "HandshakeState", "transmission_flags"]

_GREETING = struct.pack(">QQH", C.NBDMAGIC, C.IHAVEOPT, C.FLAG_FIXED_NEWSTYLE | C.FLAG_NO_ZEROES)
_OPT_HDR = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPT_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_KNOWN_CLIENT_FLAGS = C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES
_TLS_MODES: Final = ("off", "on", "require")
_BEFORE_TLS: Final = frozenset({C.OPT_STARTTLS, C.OPT_ABORT})
"""Options served before TLS is up under ``require``."""
_META_ID: Final = 1
"""Context id given to base:allocation by SET_META_CONTEXT."""


class HandshakeState(enum.Enum):
    CLIENT_FLAGS = "client flags"  # greeting queued, waiting for the 32-bit client flags
    OPTIONS = "options"
    STARTTLS = "starting TLS"  # ACK queued: send it, run the TLS handshake, call tls_established()
    TRANSMISSION = "transmission"  # GO / EXPORT_NAME succeeded: see Handshake.result
    CLOSED = "closed"  # ABORT (its ACK is queued); close after sending


def transmission_flags(read_only: bool, *, fast_zero: bool = True) -> int:
    """Flags advertised for an export (never ROTATIONAL, never DF)."""
    f = C.FLAG_HAS_FLAGS | C.FLAG_SEND_FLUSH | C.FLAG_SEND_CACHE | C.FLAG_CAN_MULTI_CONN
    if read_only:
        return f | C.FLAG_READ_ONLY
    f |= C.FLAG_SEND_FUA | C.FLAG_SEND_TRIM | C.FLAG_SEND_WRITE_ZEROES
    if fast_zero:
        f |= C.FLAG_SEND_FAST_ZERO
    return f


class _OptionError(Exception):
    def __init__(self, reply: int, message: str) -> None:
        super().__init__(message)
        self.reply = reply
        self.message = message


def _attach_error(err: int | None) -> int:
    if err == errno.ESHUTDOWN:
        return C.REP_ERR_SHUTDOWN
    if err in (errno.EPERM, errno.EACCES, errno.EROFS):
        return C.REP_ERR_POLICY
    return C.REP_ERR_UNKNOWN


class Handshake:
    """Server side of fixed-newstyle option haggling."""

    def __init__(
        self,
        registry: ExportRegistry,
        *,
        max_options: int = C.MAX_OPTIONS,
        max_option_length: int = C.MAX_OPTION_LENGTH,
        block_sizes: tuple[int, int, int] = (C.MIN_BLOCK_SIZE, C.PREFERRED_BLOCK_SIZE, C.MAX_PAYLOAD),
        fast_zero: bool = True,
        tls: str = "off",
    ) -> None:
        if tls not in _TLS_MODES:
            raise ValueError(f"bad TLS mode {tls!r}")
        self._registry = registry
        self.tls = tls
        self.tls_active = False
        self._max_options = max_options
        self._max_option_length = max_option_length
        self._block_sizes = block_sizes
        self._fast_zero = fast_zero
        self._in = bytearray()
        self._out = bytearray(_GREETING)
        self.state = HandshakeState.CLIENT_FLAGS
        self.result: Negotiated | None = None
        self.client_flags = 0
        self.structured_replies = False
        self.options_seen = 0
        self._meta_name: str | None = None  # export name base:allocation was set for

    # --- I/O-facing API ---------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def trailing_data(self) -> bytes:
        """Bytes received after the end of negotiation (early transmission traffic)."""
        return bytes(self._in)

    def receive_data(self, data: bytes) -> None:
        """Consume client bytes; process every complete option they finish."""
        if data and self.state is HandshakeState.STARTTLS:
            raise ProtocolError("plaintext data after STARTTLS")
        self._in += data
        while self._step():
            pass

    # --- state machine --------------------------------------------------------

    def _step(self) -> bool:
        buf = self._in
        if self.state is HandshakeState.CLIENT_FLAGS:
            if len(buf) < 4:
                return False
            (flags,) = _U32.unpack_from(buf, 0)
            del buf[:4]
            if flags & ~_KNOWN_CLIENT_FLAGS:
                raise ProtocolError(f"unknown client flags 0x{flags:x}")
            self.client_flags = flags
            self.state = HandshakeState.OPTIONS
            return True
        if self.state is not HandshakeState.OPTIONS or len(buf) < _OPT_HDR.size:
            return False
        magic, opt, length = _OPT_HDR.unpack_from(buf, 0)
        if magic != C.IHAVEOPT:
            raise ProtocolError(f"bad option magic 0x{magic:x}")
        if length > self._max_option_length:
            raise ProtocolError(f"option {opt} length {length} too large")
        if len(buf) < _OPT_HDR.size + length:
            return False
        data = bytes(buf[_OPT_HDR.size : _OPT_HDR.size + length])
        del buf[: _OPT_HDR.size + length]
        self.options_seen += 1
        if self.options_seen > self._max_options:
            raise ProtocolError("too many options")
        try:
            self._option(opt, data)
        except _OptionError as e:
            self._reply(opt, e.reply, e.message.encode())
        return self._may_continue()

    def _may_continue(self) -> bool:
        """After an option: whether to go on with the next one."""
        if self.state is HandshakeState.STARTTLS and self._in:
            # bytes sent after STARTTLS but before the TLS handshake could be
            # injected by anyone on the path: never act on them
            raise ProtocolError("data after STARTTLS before the TLS handshake")
        return self.state is HandshakeState.OPTIONS

    def tls_established(self) -> None:
        """The transport finished the TLS handshake: haggling resumes, encrypted.

        What was negotiated in plaintext is forgotten, as the spec asks."""
        if self.state is not HandshakeState.STARTTLS:
            raise RuntimeError("tls_established() outside the STARTTLS state")
        self.tls_active = True
        self.structured_replies = False
        self._meta_name = None
        self.state = HandshakeState.OPTIONS
        self.receive_data(b"")

    def _reply(self, opt: int, rtype: int, data: bytes = b"") -> None:
        self._out += _OPT_REPLY.pack(C.OPT_REPLY_MAGIC, opt, rtype, len(data))
        self._out += data

    def _option(self, opt: int, data: bytes) -> None:
        if self.tls == "require" and not self.tls_active and opt not in _BEFORE_TLS:
            if opt == C.OPT_EXPORT_NAME:  # it has no error reply: hang up
                raise ProtocolError("EXPORT_NAME before TLS while TLS is required")
            raise _OptionError(C.REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first")
        if opt == C.OPT_GO or opt == C.OPT_INFO:
            self._opt_info_go(opt, data)
        elif opt == C.OPT_EXPORT_NAME:
            self._opt_export_name(data)
        elif opt == C.OPT_ABORT:
            self._reply(opt, C.REP_ACK)
            self.state = HandshakeState.CLOSED
        elif opt == C.OPT_LIST:
            if data:
                raise _OptionError(C.REP_ERR_INVALID, "LIST takes no data")
            for name, desc in self._registry.list():
                n = name.encode()
                self._reply(opt, C.REP_SERVER, _U32.pack(len(n)) + n + desc.encode())
            self._reply(opt, C.REP_ACK)
        elif opt == C.OPT_STRUCTURED_REPLY:
            if data:
                raise _OptionError(C.REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
            self.structured_replies = True
            self._reply(opt, C.REP_ACK)
        elif opt == C.OPT_LIST_META_CONTEXT or opt == C.OPT_SET_META_CONTEXT:
            self._opt_meta_context(opt, data)
        elif opt == C.OPT_STARTTLS:
            self._opt_starttls(data)
        else:  # EXTENDED_HEADERS, PEEK_EXPORT and anything unknown
            raise _OptionError(C.REP_ERR_UNSUP, f"option {opt} not supported")

    def _opt_starttls(self, data: bytes) -> None:
        if data:
            raise _OptionError(C.REP_ERR_INVALID, "STARTTLS takes no data")
        if self.tls == "off":
            raise _OptionError(C.REP_ERR_POLICY, "TLS is not configured on this server")
        if self.tls_active:
            raise _OptionError(C.REP_ERR_INVALID, "TLS is already active")
        self._reply(C.OPT_STARTTLS, C.REP_ACK)
        self.state = HandshakeState.STARTTLS

    def _lookup(self, raw: bytes) -> tuple[str, BlockExport]:
        if len(raw) > C.MAX_STRING:
            raise _OptionError(C.REP_ERR_TOO_BIG, "export name too long")
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise _OptionError(C.REP_ERR_INVALID, "export name is not UTF-8") from None
        export = self._registry.lookup(name)
        if export is None:
            raise _OptionError(C.REP_ERR_UNKNOWN, f"unknown export {name!r}")
        return name, export

    def _flags_for(self, export: BlockExport) -> int:
        return transmission_flags(export.read_only, fast_zero=self._fast_zero)

    def _finish(self, name: str, export: BlockExport, size: int, tflags: int) -> None:
        meta = _META_ID if (self._meta_name is not None and self._meta_name == name) else None
        self.result = Negotiated(
            export=export,
            name=name,
            size=size,
            transmission_flags=tflags,
            structured_replies=self.structured_replies,
            meta_context_id=meta if self.structured_replies else None,
            no_zeroes=bool(self.client_flags & C.FLAG_C_NO_ZEROES),
        )
        self.state = HandshakeState.TRANSMISSION

    def _opt_info_go(self, opt: int, data: bytes) -> None:
        if len(data) < 6:
            raise _OptionError(C.REP_ERR_INVALID, "short INFO/GO request")
        (namelen,) = _U32.unpack_from(data, 0)
        if namelen > len(data) - 6:
            raise _OptionError(C.REP_ERR_INVALID, "bad export name length")
        (ninfo,) = _U16.unpack_from(data, 4 + namelen)
        if len(data) != 6 + namelen + 2 * ninfo:
            raise _OptionError(C.REP_ERR_INVALID, "bad information request count")
        infos = set(struct.unpack_from(f">{ninfo}H", data, 6 + namelen))
        name, export = self._lookup(data[4 : 4 + namelen])
        if opt == C.OPT_GO:
            try:
                export.attach()
            except OSError as e:
                raise _OptionError(
                    _attach_error(e.errno), f"export {name!r} unavailable: {e.strerror or e}"
                ) from None
        try:
            size = export.size()
            tflags = self._flags_for(export)
            replies = [struct.pack(">HQH", C.INFO_EXPORT, size, tflags)]
            replies.append(struct.pack(">HIII", C.INFO_BLOCK_SIZE, *self._block_sizes))
            if C.INFO_NAME in infos:
                replies.append(_U16.pack(C.INFO_NAME) + export.name.encode())
            if C.INFO_DESCRIPTION in infos and export.description:
                replies.append(_U16.pack(C.INFO_DESCRIPTION) + export.description.encode())
        except BaseException:
            if opt == C.OPT_GO:
                export.detach()
            raise
        for r in replies:
            self._reply(opt, C.REP_INFO, r)
        self._reply(opt, C.REP_ACK)
        if opt == C.OPT_GO:
            self._finish(name, export, size, tflags)

    def _opt_export_name(self, data: bytes) -> None:
        try:
            name, export = self._lookup(data)
        except _OptionError as e:
            raise ProtocolError(f"EXPORT_NAME: {e.message}") from None
        try:
            export.attach()
        except OSError as e:
            raise ProtocolError(f"EXPORT_NAME: export {name!r} unavailable: {e}") from None
        try:
            size = export.size()
            tflags = self._flags_for(export)
        except BaseException:
            export.detach()
            raise
        self._out += struct.pack(">QH", size, tflags)
        if not self.client_flags & C.FLAG_C_NO_ZEROES:
            self._out += bytes(124)
        self._finish(name, export, size, tflags)

    def _opt_meta_context(self, opt: int, data: bytes) -> None:
        if not self.structured_replies:
            raise _OptionError(C.REP_ERR_INVALID, "structured replies not negotiated")
        bad = _OptionError(C.REP_ERR_INVALID, "malformed meta context request")
        if len(data) < 8:
            raise bad
        (namelen,) = _U32.unpack_from(data, 0)
        if namelen > len(data) - 8:
            raise bad
        raw_name = data[4 : 4 + namelen]
        pos = 4 + namelen
        (nq,) = _U32.unpack_from(data, pos)
        pos += 4
        queries: list[str] = []
        for _ in range(nq):
            if pos + 4 > len(data):
                raise bad
            (qlen,) = _U32.unpack_from(data, pos)
            pos += 4
            if qlen > len(data) - pos:
                raise bad
            if qlen > C.MAX_STRING:
                raise _OptionError(C.REP_ERR_TOO_BIG, "query too long")
            try:
                queries.append(data[pos : pos + qlen].decode())
            except UnicodeDecodeError:
                raise bad from None
            pos += qlen
        if pos != len(data):
            raise bad
        name, _export = self._lookup(raw_name)
        if opt == C.OPT_LIST_META_CONTEXT:
            found = not queries or any(q in ("base:", C.META_BASE_ALLOCATION) for q in queries)
            ctx_id = 0
        else:
            found = C.META_BASE_ALLOCATION in queries
            ctx_id = _META_ID
            self._meta_name = name if found else None
        if found:
            self._reply(opt, C.REP_META_CONTEXT, _U32.pack(ctx_id) + C.META_BASE_ALLOCATION.encode())
        self._reply(opt, C.REP_ACK)
