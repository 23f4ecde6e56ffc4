"""What a class name may be: one plain folder name under ``data/raw/`` (the API checks a user's
new class with it, ``harvest`` checks every label with it before it writes a file)."""

from __future__ import annotations

MAX_NAME_BYTES = 255  # a folder name on every common file system


def is_plain_class_name(label: str) -> bool:
    """Not empty, not hidden or ``..``, no path separator or NUL, printable, short enough."""
    return bool(label) and not (
        label in (".", "..")
        or label.startswith(".")
        or any(c in label for c in "/\\\0")
        or len(label.encode("utf-8")) > MAX_NAME_BYTES
        or not label.isprintable()
    )
