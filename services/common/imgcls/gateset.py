"""The gate set: labelled images that no model is trained or checkpointed on, on which the
lifecycle scores a candidate against the serving version (``imgcls.lifecycle.gate``).

Which split an image belongs to is decided by its **content**, not by a seeded shuffle: the
SHA-256 of the file's bytes, read as a number in [0, 1), falls in the gate share, then the
validation share, else training. An image therefore never changes sides when data is added,
removed or corrected, and two versions trained on different data still never saw one another's
gate images. Users' corrections (``harvest`` names them ``fb-*``) go to the gate set at their own,
larger share: what users corrected is exactly what the next candidate should be judged on.

The ``prepare`` stage writes the set as one ``.npz`` (numpy only: the lifecycle commands read it
in the API's image too): the letterboxed pixels the served model takes, each image's class name,
digest and source path. DVC tracks it as a stage output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .params import UserError

SPLITS = ("train", "val", "gate")
#: harvest files a user's correction as ``data/raw/<label>/fb-<digest>.png``
FEEDBACK_PREFIX = "fb-"


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_of(digest: str, gate: float, val: float) -> str:
    """``gate`` | ``val`` | ``train`` for a file whose SHA-256 is ``digest`` (hex)."""
    u = int(digest[:16], 16) / float(1 << 64)
    if u < gate:
        return "gate"
    return "val" if u < gate + val else "train"


def is_feedback(path: Path) -> bool:
    return Path(path).name.startswith(FEEDBACK_PREFIX)


@dataclass(frozen=True)
class GateSet:
    images: np.ndarray  # N×H×W×3 uint8, letterboxed as the served model takes them
    labels: tuple[str, ...]  # per image: its class name
    digests: tuple[str, ...]  # per image: SHA-256 of the source file
    sources: tuple[str, ...]  # per image: its path under the data folder

    def __post_init__(self) -> None:
        n = len(self.images)
        if not len(self.labels) == len(self.digests) == len(self.sources) == n:
            raise UserError("the gate set's images, labels and digests differ in number")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels)))

    def counts(self) -> dict[str, int]:
        return {c: self.labels.count(c) for c in self.classes}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, images=self.images, labels=np.array(self.labels, dtype=str),
                            digests=np.array(self.digests, dtype=str),
                            sources=np.array(self.sources, dtype=str))  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> GateSet:
        """The set at ``path``; a clear error when it is missing, unreadable or empty."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no gate set at {path}: run `dvc repro prepare` (or `make model`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                images = data["images"]
                fields = [tuple(str(x) for x in data[k]) for k in ("labels", "digests", "sources")]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"the gate set {path} is unreadable: {exc}") from None
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] != 3:
            raise UserError(f"the gate set {path} does not hold N×H×W×3 uint8 images")
        gate = cls(images, *fields)
        if not len(gate):
            raise UserError(f"the gate set {path} is empty: no image fell in the gate share "
                            "(prepare.gate_fraction), add data or raise the share")  # fmt: skip
        return gate

    @classmethod
    def empty(cls, size: int) -> GateSet:
        return cls(np.zeros((0, size, size, 3), np.uint8), (), (), ())
