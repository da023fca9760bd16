"""Integration tests that boot a Linux guest under QEMU (TCG) and swap through uzram."""
