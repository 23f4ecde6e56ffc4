"""Stage ``shift``: held-out accuracy of the served ONNX models (FP32 and INT8) under natural
shifts, each at a few severities — the ImageNet-C question asked of this project's own data.

The shifts start from the held-out **files** (the paths the prepare stage recorded in the
validation TFRecords), so they work on any dataset, not only the demo's:

- geometric shifts change the file's picture before the one preprocessing path letterboxes it
  (``imgcls.preprocessing``): ``scale`` (the picture shrunk on a canvas of its own size: the
  object smaller), ``crop`` (its centre only: the object larger, perhaps cut), ``translate``
  (moved off-centre), ``rotate`` and ``aspect`` (stretched sideways: the letterbox keeps the new
  ratio, as it would for a wide photo). Uncovered canvas is filled with the picture's own
  border: its mean colour and noise, so no artificial frame tells the model something changed;
- pixel shifts act at the model's resolution, on the picture before its padding (as the camera
  would, so a severity means the same on every dataset): ``noise`` (Gaussian, σ in pixel units),
  ``blur`` (Gaussian radius in pixels), ``jpeg`` (quality), ``brightness`` and ``contrast``
  (factors, 1 = unchanged).

Unshifted, the same path gives exactly the pixels the model was evaluated on, so the ``clean``
row equals the evaluate stage's accuracy on the same images. The report gives the accuracy of
each model per shift and severity and their mean (the suite's one number), a curve per shift
(``dvc plots``), and a contact sheet of the worst cases: the most confident wrong answers, a
picture a person looks at rather than reads.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from imgcls.preprocessing import ImageError, decode_image, fitted_size, letterbox_image

from .common import (
    INT8_MODEL,
    ONNX_MODEL,
    PREPARED,
    SHIFT_CURVE,
    SHIFT_PLOT,
    SHIFT_REPORT,
    SHIFT_WORST,
    PipelineError,
    Prepared,
    load_settings,
    run_cli,
    write_json,
)
from .onnx_utils import predict, session

Transform = Callable[[Image.Image, float, np.random.Generator], Image.Image]


@dataclass(frozen=True)
class Shift:
    """One named shift: what it does to a picture at a severity, and the severities allowed."""

    apply: Transform
    low: float  # allowed severities: low ≤ s ≤ high (``open_low``: low excluded)
    high: float
    pixels: bool  # True: at the model's resolution; False: on the file's picture
    unit: str
    open_low: bool = False

    def check(self, name: str, value: float) -> None:
        below = value <= self.low if self.open_low else value < self.low
        if below or value > self.high:  # (value as written: -4 reads -4, not -4.0)
            bound = "above" if self.open_low else "from"
            raise PipelineError(f"shift.shifts.{name}: {value!r} is out of range; a severity is "
                                f"{bound} {self.low:g} up to {self.high:g} ({self.unit})")  # fmt: skip


def border_fill(img: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A canvas of ``size`` (w, h) that looks like the picture's border: its mean colour with its
    spread as Gaussian noise."""
    arr = np.asarray(img, dtype=np.float32)
    edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    mean, std = edge.mean(axis=0), edge.std(axis=0)
    noise = rng.normal(0.0, 1.0, (size[1], size[0], 3)) * std
    return Image.fromarray(np.clip(mean + noise, 0, 255).round().astype(np.uint8))


def _scale(img: Image.Image, s: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    canvas = border_fill(img, img.size, rng)
    canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    return canvas


def _crop(img: Image.Image, c: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w * c)), max(1, round(h * c))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def _translate(img: Image.Image, t: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    canvas = border_fill(img, img.size, rng)
    canvas.paste(img, (round(w * t), round(h * t)))  # right and down; the rest falls off
    return canvas


def _rotate(img: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    mask = Image.new("L", img.size, 255).rotate(degrees, Image.Resampling.BILINEAR)
    turned = img.rotate(degrees, Image.Resampling.BILINEAR)
    canvas = border_fill(img, img.size, rng)
    canvas.paste(turned, mask=mask)
    return canvas


def _aspect(img: Image.Image, r: float, rng: np.random.Generator) -> Image.Image:
    return img.resize((max(1, round(img.width * r)), img.height), Image.Resampling.BILINEAR)


def _noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


def _blur(img: Image.Image, radius: float, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def _jpeg(img: Image.Image, quality: float, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _brightness(img: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(factor)


def _contrast(img: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(factor)


SHIFTS: dict[str, Shift] = {  # name → the shift; params.yaml ``shift.shifts`` picks among them
    "scale": Shift(_scale, 0.0, 1.0, False, "the picture's share of its side", open_low=True),
    "crop": Shift(_crop, 0.0, 1.0, False, "the centre's share of each side", open_low=True),
    "translate": Shift(_translate, 0.0, 0.9, False, "share of each side moved"),
    "rotate": Shift(_rotate, -180.0, 180.0, False, "degrees"),
    "aspect": Shift(_aspect, 0.0, 8.0, False, "width stretch factor", open_low=True),
    "noise": Shift(_noise, 0.0, 255.0, True, "σ in pixel units"),
    "blur": Shift(_blur, 0.0, 32.0, True, "radius in pixels"),
    "jpeg": Shift(_jpeg, 1.0, 100.0, True, "quality"),
    "brightness": Shift(_brightness, 0.0, 8.0, True, "factor, 1 = unchanged"),
    "contrast": Shift(_contrast, 0.0, 8.0, True, "factor, 1 = unchanged"),
}


@dataclass(frozen=True)
class ShiftParams:
    """params.yaml ``shift``."""

    shifts: dict  # name → severities, mildest first
    max_images: int  # held-out images scored (a seeded sample when there are more)
    worst_cases: int  # panels in the contact sheet
    batch_size: int  # ONNX Runtime scoring, as the evaluate stage's
    seed: int  # the sample's and the noise's

    def __post_init__(self) -> None:
        if not self.shifts:
            raise PipelineError("shift.shifts: name at least one shift: "
                                f"{', '.join(SHIFTS)}")  # fmt: skip
        for name, severities in self.shifts.items():
            if name not in SHIFTS:
                raise PipelineError(f"shift.shifts: unknown shift {name!r}; known: "
                                    f"{', '.join(SHIFTS)}")  # fmt: skip
            if not isinstance(severities, list) or not severities:
                raise PipelineError(f"shift.shifts.{name}: expected a list of severities, got "
                                    f"{severities!r}")  # fmt: skip
            for value in severities:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise PipelineError(f"shift.shifts.{name}: {value!r} is not a number")
                SHIFTS[name].check(name, value)
        if min(self.max_images, self.batch_size) < 1 or self.worst_cases < 0:
            raise PipelineError("shift: max_images and batch_size must be at least 1, "
                                "worst_cases at least 0")  # fmt: skip


def shifted(img: Image.Image, name: str, severity: float, size: int,
            rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """The model input for ``img`` under one shift: ``size``² uint8 pixels, letterboxed by the
    project's preprocessing."""
    shift = SHIFTS[name]
    if not shift.pixels:
        return letterbox_image(shift.apply(img, severity, rng), (size, size))
    fitted = img.resize(fitted_size(img, (size, size)), Image.Resampling.BILINEAR)
    return letterbox_image(shift.apply(fitted, severity, rng), (size, size))


def load_picture(path: Path, size: int) -> Image.Image:
    """A held-out file as the RGB picture the preprocessing letterboxes (``decode_image``)."""
    try:
        return decode_image(path, size)
    except (OSError, ImageError) as exc:
        raise PipelineError(f"{path}: the held-out file cannot be read again ({exc}): run "
                            "`dvc repro prepare` for the current data/raw") from exc  # fmt: skip


def sample_sources(prepared: Path, max_images: int, seed: int) -> list[tuple[Path, int]]:
    """The held-out (path, label) pairs scored: all of them, or a seeded sample in file order."""
    from .records import read_sources

    sources = read_sources(prepared, "val")
    if len(sources) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(sources), max_images, False))
        sources = [sources[i] for i in keep]
    return sources


@dataclass
class Scored:
    """One condition's answers: (model → probabilities), for the same images in order."""

    name: str
    severity: float | None
    images: np.ndarray
    probs: dict[str, np.ndarray]

    def accuracy(self, model: str, labels: np.ndarray) -> float:
        return float((self.probs[model].argmax(axis=1) == labels).mean())


def score_conditions(
    pictures: list[Image.Image],
    labels: np.ndarray,
    sessions: dict,
    size: int,
    params: ShiftParams,
    log: bool = True,
) -> list[Scored]:
    """The clean condition, then every shift at every severity, scored by every model (a line
    each when ``log``)."""
    clean = np.stack([letterbox_image(p, (size, size)) for p in pictures])
    conditions: list[tuple[str, float | None, np.ndarray]] = [("clean", None, clean)]
    for k, (name, severities) in enumerate(params.shifts.items()):
        for level, severity in enumerate(severities):
            rngs = (np.random.default_rng([params.seed, k, level, i]) for i in range(len(pictures)))
            batch = np.stack([shifted(p, name, float(severity), size, rng)
                              for p, rng in zip(pictures, rngs, strict=True)])  # fmt: skip
            conditions.append((name, float(severity), batch))
    out = []
    for name, severity, images in conditions:
        probs = {m: predict(s, images, params.batch_size) for m, s in sessions.items()}
        out.append(Scored(name, severity, images, probs))
        if not log:
            continue
        line = " ".join(f"{m}={out[-1].accuracy(m, labels):.4f}" for m in sessions)
        print(f"shift: {name}{'' if severity is None else f' {severity:g}'} {line}", flush=True)
    return out


def report(scored: list[Scored], labels: np.ndarray, models: list[str]) -> dict:
    """The DVC metric: clean accuracy, each shift's per severity, and the mean over shifts."""
    shifts: dict[str, dict] = {}
    for s in scored[1:]:
        shifts.setdefault(s.name, {})[f"{s.severity:g}"] = {
            m: s.accuracy(m, labels) for m in models
        }
    mean = {m: float(np.mean([s.accuracy(m, labels) for s in scored[1:]])) for m in models}
    return {
        "num_images": len(labels),
        "clean": {m: scored[0].accuracy(m, labels) for m in models},
        "mean": mean,
        "shifts": shifts,
    }


def write_curve(scored: list[Scored], labels: np.ndarray, path: Path) -> None:
    """``level`` (1 = mildest) and one FP32 accuracy column per shift, for ``dvc plots``; level
    0 is the clean accuracy, where every curve starts. Every known shift has its column (empty
    when not configured): dvc.yaml's plot names them all."""
    names = list(dict.fromkeys(s.name for s in scored[1:]))
    levels = max(sum(s.name == n for s in scored[1:]) for n in names)
    rows = [{"level": 0, **{n: scored[0].accuracy("fp32", labels) for n in names}}]
    for level in range(levels):
        row: dict = {"level": level + 1}
        for n in names:
            hits = [s for s in scored[1:] if s.name == n]
            row[n] = hits[level].accuracy("fp32", labels) if level < len(hits) else ""
        rows.append(row)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["level", *names, *(n for n in SHIFTS
                                                                    if n not in names)],
                                restval="")  # fmt: skip
        writer.writeheader()
        writer.writerows(rows)


def plot(result: dict, path: Path) -> None:
    """One panel per shift: accuracy against severity, FP32 solid and INT8 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["shifts"])
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        severities = list(result["shifts"][name])
        for model, style in (("fp32", "-"), ("int8", "--")):
            if model in result["clean"]:
                ys = [result["shifts"][name][s][model] for s in severities]
                ax.plot(range(len(ys)), ys, style, marker="o", label=model.upper())
        ax.axhline(result["clean"]["fp32"], color="grey", lw=0.8, ls=":")
        ax.set_xticks(range(len(severities)), severities, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name} ({SHIFTS[name].unit})", fontsize=8)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Held-out accuracy under shift (clean FP32 {result['clean']['fp32']:.3f}, "
                 f"dotted; mean under shift {result['mean']['fp32']:.3f})", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def worst_cases(scored: list[Scored], labels: np.ndarray, count: int) -> list[tuple]:
    """Up to ``count`` (image, title) of the FP32 model's most confident wrong answers under
    shift, at most two per shift and severity so one shift does not fill the sheet."""
    found = []
    for s in scored[1:]:
        probs = s.probs["fp32"]
        wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
        confidence = probs[wrong].max(axis=1) if len(wrong) else np.zeros(0)
        for i in wrong[np.argsort(-confidence)][:2]:
            found.append((float(probs[i].max()), s, int(i)))
    found.sort(key=lambda f: -f[0])
    return [(s.images[i], s.name, s.severity, int(labels[i]), int(s.probs["fp32"][i].argmax()),
             conf) for conf, s, i in found[:count]]  # fmt: skip


def contact_sheet(cases: list[tuple], names: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(6, len(cases)))
    rows = max(1, -(-len(cases) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, shift, severity, actual, answer, conf) in zip(axes.flat, cases, strict=False):
        ax.imshow(image)
        ax.set_title(f"{shift} {severity:g}\n{names[actual]} → {names[answer]} "
                     f"({conf:.2f})", fontsize=7)  # fmt: skip
    if not cases:
        axes[0][0].text(0.5, 0.5, "no wrong answer under any shift", ha="center")
    fig.suptitle("Most confident wrong answers under shift (FP32): truth → answer", fontsize=9)
    fig.tight_layout(h_pad=1.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shift_suite(sessions: dict, prepared: Path, params: ShiftParams, log: bool = True) -> tuple:
    """(report, the scored conditions, the labels) for the held-out files; ``sessions``: name →
    anything ``predict`` runs (an ONNX Runtime session, or ``KerasSession`` for a search trial)."""
    meta = Prepared.read(prepared)
    sources = sample_sources(prepared, params.max_images, params.seed)
    if not sources:
        raise PipelineError("the validation split is empty: nothing to shift")
    pictures = [load_picture(path, meta.image_size) for path, _ in sources]
    labels = np.asarray([label for _, label in sources], dtype=np.int64)
    scored = score_conditions(pictures, labels, sessions, meta.image_size, params, log)
    return report(scored, labels, list(sessions)), scored, labels


class KerasSession:
    """A Keras model behind the two calls ``predict`` makes of an ONNX Runtime session, so a
    model still in memory (a search trial's) meets the shift suite without an export."""

    def __init__(self, model) -> None:
        self.model = model

    def get_inputs(self) -> list:
        return [SimpleNamespace(name=self.model.inputs[0].name)]

    def run(self, _outputs, feed: dict) -> list[np.ndarray]:
        (images,) = feed.values()
        return [np.asarray(self.model(images, training=False), dtype=np.float32)]


def main() -> None:
    params = load_settings(ShiftParams, "shift")
    models = {"fp32": session(ONNX_MODEL), "int8": session(INT8_MODEL)}
    result, scored, labels = shift_suite(models, PREPARED, params)
    write_json(SHIFT_REPORT, result)
    write_curve(scored, labels, SHIFT_CURVE)
    plot(result, SHIFT_PLOT)
    contact_sheet(worst_cases(scored, labels, params.worst_cases), Prepared.read().labels,
                  SHIFT_WORST)  # fmt: skip
    clean, mean = result["clean"], result["mean"]
    print(
        f"shift: {result['num_images']} held-out images; clean FP32 {clean['fp32']:.4f} / INT8 "
        f"{clean['int8']:.4f}, mean under shift FP32 {mean['fp32']:.4f} / INT8 "
        f"{mean['int8']:.4f}; {SHIFT_REPORT}, {SHIFT_PLOT}, worst cases in {SHIFT_WORST}"
    )


if __name__ == "__main__":
    run_cli(main)
