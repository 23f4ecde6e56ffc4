"""The shift suite's pieces on synthetic pictures: what each shift does to an image, that a
neutral severity changes nothing, the report's arithmetic, and the worst cases it shows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgcls.preprocessing import letterbox_image
from model_preparation.shift import (
    SHIFTS,
    Scored,
    border_fill,
    report,
    shifted,
    worst_cases,
    write_curve,
)

NEUTRAL = {"scale": 1.0, "crop": 1.0, "translate": 0.0, "rotate": 0.0, "aspect": 1.0,
           "noise": 0.0, "blur": 0.0, "brightness": 1.0, "contrast": 1.0}  # fmt: skip


def picture(width: int = 120, height: int = 100) -> Image.Image:
    """A bright square centred on a dark noisy background (like the demo's images)."""
    rng = np.random.default_rng(0)
    arr = np.clip(40 + rng.normal(0, 8, (height, width, 3)), 0, 255)
    cy, cx, r = height // 2, width // 2, 25
    arr[cy - r : cy + r, cx - r : cx + r] = 220
    return Image.fromarray(arr.round().astype(np.uint8))


def bright(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=2) > 150


def rng() -> np.random.Generator:
    return np.random.default_rng(1)


def test_every_shift_is_tested_at_a_neutral_severity_and_plotted_by_dvc():
    import yaml

    from tests.builds import REPO

    assert set(NEUTRAL) | {"jpeg"} == set(SHIFTS)
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    curve = next(p["shift"] for p in plots if "shift" in p)
    assert curve["y"]["artifacts/reports/shift.csv"] == list(SHIFTS)


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_a_neutral_severity_gives_exactly_the_clean_model_input(name):
    img = picture()
    clean = letterbox_image(img, (64, 64))
    out = shifted(img, name, NEUTRAL[name], 64, rng())
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out, clean)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_every_shift_at_a_strong_severity_changes_the_input_and_keeps_its_shape(name):
    strong = {"scale": 0.4, "crop": 0.5, "translate": 0.3, "rotate": 45, "aspect": 3.0,
              "noise": 32, "blur": 2, "jpeg": 5, "brightness": 0.3, "contrast": 0.3}[name]  # fmt: skip
    img = picture()
    out = shifted(img, name, strong, 64, rng())
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - letterbox_image(img, (64, 64))).mean() > 1.0


def test_scale_shrinks_the_object_by_the_square_of_the_severity():
    img = picture(100, 100)
    area = bright(shifted(img, "scale", 1.0, 64, rng())).sum()
    for s in (0.75, 0.5):
        ratio = bright(shifted(img, "scale", s, 64, rng())).sum() / area
        assert ratio == pytest.approx(s * s, rel=0.15), (s, ratio)


def test_crop_enlarges_the_object():
    img = picture(100, 100)
    area = bright(shifted(img, "crop", 1.0, 64, rng())).sum()
    assert bright(shifted(img, "crop", 0.7, 64, rng())).sum() / area == pytest.approx(
        1 / 0.49, rel=0.15
    )


def test_translate_moves_the_object_right_and_down():
    img = picture(100, 100)
    ys, xs = np.nonzero(bright(shifted(img, "translate", 0.2, 64, rng())))
    assert xs.mean() == pytest.approx(32 + 0.2 * 64, abs=2)
    assert ys.mean() == pytest.approx(32 + 0.2 * 64, abs=2)


def test_aspect_stretches_sideways_and_the_letterbox_pads_the_rest():
    out = shifted(picture(100, 100), "aspect", 2.0, 64, rng())
    rows = np.flatnonzero(out.reshape(64, -1).max(axis=1) > 0)  # not the black pad
    assert 30 <= len(rows) <= 34  # the picture is half as tall as wide now
    ys, xs = np.nonzero(bright(out))
    assert (xs.max() - xs.min()) == pytest.approx(2 * (ys.max() - ys.min()), rel=0.15)


def test_noise_has_the_asked_spread_at_the_model_resolution():
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    out = shifted(flat, "noise", 16, 64, rng()).astype(float)
    assert out.std() == pytest.approx(16, rel=0.1)
    assert out.mean() == pytest.approx(128, abs=1)


def test_uncovered_canvas_looks_like_the_pictures_border():
    img = picture()
    fill = np.asarray(border_fill(img, (50, 40), rng()), dtype=float)
    assert fill.shape == (40, 50, 3)
    assert fill.mean() == pytest.approx(40, abs=2)
    assert fill.std() == pytest.approx(8, abs=2)
    out = shifted(img, "scale", 0.5, 64, rng()).astype(float)
    assert out[8:12, 8:12].mean() == pytest.approx(40, abs=6)  # no black frame: background


def test_the_same_seed_gives_the_same_pixels():
    img = picture()
    a = shifted(img, "noise", 20, 64, np.random.default_rng([4, 1]))
    b = shifted(img, "noise", 20, 64, np.random.default_rng([4, 1]))
    np.testing.assert_array_equal(a, b)


def _scored(name, severity, answers, confidence=0.9):
    probs = np.full((len(answers), 2), 1 - confidence, np.float32)
    probs[np.arange(len(answers)), answers] = confidence
    images = np.zeros((len(answers), 4, 4, 3), np.uint8)
    return Scored(name, severity, images, {"fp32": probs, "int8": probs})


def test_the_report_gives_each_severity_and_the_mean_over_every_condition():
    labels = np.array([0, 1, 0, 1])
    scored = [_scored("clean", None, [0, 1, 0, 1]), _scored("noise", 8, [0, 1, 0, 0]),
              _scored("noise", 16, [1, 1, 0, 0]), _scored("blur", 1, [1, 0, 1, 0])]  # fmt: skip
    result = report(scored, labels, ["fp32", "int8"])
    assert result["clean"] == {"fp32": 1.0, "int8": 1.0}
    assert result["shifts"] == {"noise": {"8": {"fp32": 0.75, "int8": 0.75},
                                          "16": {"fp32": 0.5, "int8": 0.5}},
                                "blur": {"1": {"fp32": 0.0, "int8": 0.0}}}  # fmt: skip
    assert result["mean"]["fp32"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert result["num_images"] == 4


def test_the_curve_starts_at_the_clean_accuracy_with_one_column_per_shift(tmp_path):
    labels = np.array([0, 1])
    scored = [_scored("clean", None, [0, 1]), _scored("noise", 8, [0, 0]),
              _scored("noise", 16, [1, 0]), _scored("blur", 1, [0, 1])]  # fmt: skip
    write_curve(scored, labels, tmp_path / "c.csv")
    lines = (tmp_path / "c.csv").read_text().splitlines()
    others = [n for n in SHIFTS if n not in ("noise", "blur")]  # columns dvc.yaml's plot names
    assert lines[0] == ",".join(["level", "noise", "blur", *others])
    empty = "," * len(others)
    assert lines[1:] == [f"0,1.0,1.0{empty}", f"1,0.5,1.0{empty}", f"2,0.0,{empty}"]


def test_worst_cases_are_the_most_confident_wrong_answers_at_most_two_per_condition():
    labels = np.array([0, 0, 0, 0])
    scored = [_scored("clean", None, [0, 0, 0, 0]),
              _scored("noise", 8, [1, 1, 1, 0], confidence=0.6),
              _scored("blur", 1, [1, 0, 0, 0], confidence=0.95)]  # fmt: skip
    cases = worst_cases(scored, labels, 5)
    assert [(c[1], c[2]) for c in cases] == [("blur", 1), ("noise", 8), ("noise", 8)]
    assert all(c[3] == 0 and c[4] == 1 for c in cases)
    assert cases[0][5] == pytest.approx(0.95)
    assert worst_cases(scored, labels, 1)[0][1] == "blur"


def test_the_tiny_project_scores_only_the_shifts_its_params_list():
    """The suite's override replaces the shift list (``builds.Replace``) instead of merging into
    it: merged, the other eight defaults came back with three severities each (28 rows, not 4)."""
    import yaml

    from tests.builds import REPO, TINY_PARAMS, Replace, merge

    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    assert params["shift"]["shifts"] == dict(TINY_PARAMS["shift"]["shifts"])
    assert params["shift"]["max_images"] == 400  # the rest of the section still merges
    merged = merge({"a": {"x": 1, "y": 2}}, {"a": {"x": 3}})
    replaced = merge({"a": {"x": 1, "y": 2}}, {"a": Replace(x=3)})
    assert merged == {"a": {"x": 3, "y": 2}} and replaced == {"a": {"x": 3}}
    assert type(replaced["a"]) is dict  # yaml.safe_dump cannot write a dict subclass
