"""What changes when the API runs in a gevent worker (the default, ``gunicorn_conf.py``).

A gevent worker runs every request of the process on one OS thread: code that computes for long
without yielding stalls all the others. Decoding a large image is such code, so it runs on the
hub's thread pool (Pillow releases the GIL while it decodes); small images, the common case,
decode in place, where the hand-off to a thread would cost more than the decode.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from PIL import Image

T = TypeVar("T")
OFFLOAD_PIXELS = 2_000_000  # above this, a decode costs more than the hand-off to a thread


@cache
def gevent_active() -> bool:
    """Whether gevent has patched ``threading`` (gunicorn's gevent worker does, before the app
    is imported; the answer cannot change afterwards)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency of the API
        return False
    return bool(monkey.is_module_patched("threading"))


def _pixels(data: bytes) -> int:
    """Width × height from the header alone; 0 when unreadable (the decoder will say why)."""
    try:
        with warnings.catch_warnings():  # a bomb warning here is the decoder's to give
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.width * img.height
    except Exception:  # any failure is reported by the real decode
        return 0


def decode_image(decode: Callable[[bytes], T], data: bytes) -> T:
    """``decode(data)``, on gevent's thread pool when under gevent and the image is large."""
    if not gevent_active() or _pixels(data) <= OFFLOAD_PIXELS:
        return decode(data)
    import gevent

    return gevent.get_hub().threadpool.apply(decode, (data,))
