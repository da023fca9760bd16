"""uzram: Linux zram emulated in userspace, served over NBD."""

__version__ = "0.1.0"
