"""The zram device model: pure and synchronous (no trio, no sockets)."""

from .device import ZramDevice

__all__ = ["ZramDevice"]
