"""NBD protocol layer: a sans-I/O core (handshake, proto), a trio transport
(server, with channel, negotiate, ring and dispatch) and the block-export
interface it serves (export).  Knows nothing of zram."""

from .export import BlockExport, ExportRegistry, StaticRegistry
from .server import NBDServer, ServerConfig, serve_connection, serve_listener

__all__ = [
    "BlockExport",
    "ExportRegistry",
    "NBDServer",
    "ServerConfig",
    "StaticRegistry",
    "serve_connection",
    "serve_listener",
]
