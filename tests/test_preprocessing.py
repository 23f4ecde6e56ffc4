"""The single preprocessing function: formats, orientation, letterbox geometry, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.preprocessing import ImageError, ImageTooLarge, letterbox_array, load_image
from tests import images


def test_letterbox_keeps_aspect_ratio_and_pads_black():
    out = load_image(images.encode(images.gradient(80, 40), "PNG"), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # 80x40 → 64x32 centred: rows 0..15 and 48..63 are padding.
    assert out[:16].max() == 0 and out[48:].max() == 0
    assert out[16:48, :28, 0].min() > 200  # red left half
    assert out[16:48, 36:, 2].min() > 200  # blue right half


def test_non_square_target():
    out = load_image(images.jpeg(80, 40), (32, 48))
    assert out.shape == (32, 48, 3)


def test_exif_orientation_is_applied():
    out = load_image(images.exif_rotated_jpeg(), 64)
    # Displayed upright the image is 40 wide x 80 tall: padding left and right, red on top.
    assert out[:, :12].max() < 30 and out[:, 52:].max() < 30
    assert out[:28, 16:48, 0].mean() > 180 and out[36:, 16:48, 2].mean() > 180


@pytest.mark.parametrize(
    "data", images.readable_formats().values(), ids=images.readable_formats().keys()
)
def test_every_pillow_format_becomes_rgb(data):
    out = load_image(data, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.max() > 0


def test_16bit_png_is_scaled_not_clipped():
    out = load_image(images.png_16bit_gray(), 64)
    row = out[32, :, 0].astype(int)  # 64x32 → 64x32 letterboxed at rows 16..47
    assert row[0] < 10 and row[-1] > 245 and np.all(np.diff(row) >= 0)


def test_multiframe_tiff_uses_first_frame():
    out = load_image(images.multiframe_tiff(), 64)
    assert out[16:48, :28, 0].min() > 200 and out[16:48, :, 1].max() < 60


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (images.TEXT_AS_JPG, "not_an_image"),
        (images.truncated_jpeg(), "corrupt_image"),
    ],
)
def test_bad_inputs_raise_with_a_stable_code(data, code):
    with pytest.raises(ImageError) as err:
        load_image(data, 32)
    assert err.value.code == code


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge) as err:
        load_image(images.decompression_bomb(), 32, max_pixels=10_000_000)
    assert err.value.code == "image_too_large"


def test_same_bytes_same_pixels_from_path_and_bytes(tmp_path):
    data = images.jpeg(300, 200)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image(path, 48), load_image(data, 48))


def test_letterbox_array_matches_file_path_for_png():
    img = images.gradient(90, 30)
    arr = np.asarray(img)
    np.testing.assert_array_equal(
        letterbox_array(arr, 48), load_image(images.encode(img, "PNG"), 48)
    )
