"""Under a gevent worker (the default), large images decode off the event loop: unit tests."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from imgcls.gateway import cooperative
from imgcls.preprocessing import ImageError, load_image


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture()
def under_gevent(monkeypatch):
    monkeypatch.setattr(cooperative, "gevent_active", lambda: True)


def _decode_thread(data: bytes) -> tuple[int, np.ndarray]:
    seen = []

    def decode(d: bytes) -> np.ndarray:
        seen.append(threading.get_ident())
        return load_image(d, 16)

    out = cooperative.decode_image(decode, data)
    return seen[0], out


def test_large_images_decode_on_the_thread_pool_small_ones_in_place(under_gevent):
    small, large = _jpeg(640, 480), _jpeg(2000, 1500)  # 0.3 MP and 3 MP
    here = threading.get_ident()
    small_thread, small_out = _decode_thread(small)
    large_thread, large_out = _decode_thread(large)
    assert small_thread == here and large_thread != here
    np.testing.assert_array_equal(large_out, load_image(large, 16))  # same pixels either way
    assert small_out.shape == (16, 16, 3)


def test_without_gevent_everything_decodes_in_place(monkeypatch):
    monkeypatch.setattr(cooperative, "gevent_active", lambda: False)
    assert _decode_thread(_jpeg(2000, 1500))[0] == threading.get_ident()


def test_errors_of_offloaded_and_unreadable_images_reach_the_caller(under_gevent):
    truncated = _jpeg(2000, 1500)[:5000]  # header says 3 MP: offloaded, then fails to decode
    with pytest.raises(ImageError) as err:
        cooperative.decode_image(lambda d: load_image(d, 16), truncated)
    assert err.value.code == "corrupt_image"
    with pytest.raises(ImageError):
        cooperative.decode_image(lambda d: load_image(d, 16), b"not an image")


def test_the_flag_is_false_in_a_plain_process():
    cooperative.gevent_active.cache_clear()
    assert cooperative.gevent_active() is False
