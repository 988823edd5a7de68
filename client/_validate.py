"""The one check that config values run in ``__post_init__``."""

from __future__ import annotations

__all__ = ["check"]


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)
