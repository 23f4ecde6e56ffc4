"""The labelled gate: is the candidate at least as good as the version that serves, on images
neither was trained on?

Both versions answer the same gate-set images (``imgcls.gateset``) through the very files Triton
serves, each with its variant's runtime (ONNX Runtime; OpenVINO in the variant's precision). The
decision rules (params.yaml ``lifecycle.gate``), in the spirit of TFX Evaluator's validation
against a baseline, but paired, on the same images:

- **non-inferiority** on the classes both versions know: the one-sided lower confidence bound of
  the accuracy difference (paired bootstrap, ``imgcls.stats``) must not fall below ``-margin``;
  the exact McNemar p-value of "the candidate is worse" is reported beside it;
- **no known class drops** more than ``class_margin`` where it has ``min_class_images``;
- **a new class** (the serving version cannot answer it) is scored on its own, against
  ``new_class_min_accuracy``;
- **too little evidence is inconclusive**, not a pass: fewer than ``min_images`` gate images of
  known classes, or a new class with fewer than ``min_class_images``.

A gate set that is missing, empty or shares no class with the serving version is an error
(nothing is decided); a candidate that cannot name one of the gate set's classes contradicts it
and is refused. The report (both accuracies with Wilson intervals, the bound, the p-value, the
per-class deltas, both confusion matrices, the images whose answer changed) is kept beside the
version as ``gate.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..gateset import GateSet
from ..params import UserError
from ..repository import ModelDir, now_iso, write_atomic
from ..runtimes import open_session, predict
from ..stats import Paired, wilson
from ..variants import by_backend
from .params import GateParams

PASS, REFUSE, INCONCLUSIVE = "pass", "refuse", "inconclusive"
REPORT_FILE = "gate.json"
MAX_CHANGED = 200  # images whose answer changed, listed in the report


def runtime_of(model: ModelDir) -> str:
    """The in-process runtime that computes what Triton's backend for this model computes (the
    variant table's)."""
    serving = model.serving_config()
    return by_backend(serving.backend, serving.precision).runtime


def score(model: ModelDir, number: int, gate: GateSet, batch_size: int = 64) -> tuple[str, ...]:
    """Version ``number``'s top-1 class name for every gate image, from its served file."""
    version = model.verify(number)
    dims = tuple(version.input.dims)
    if tuple(gate.images.shape[1:]) != dims:
        raise UserError(f"the gate set holds {list(gate.images.shape[1:])} images but {model.name} "
                        f"takes {list(dims)}: run `dvc repro prepare` with the served size")  # fmt: skip
    session = open_session(model.path / str(number) / "model.onnx", runtime_of(model))
    probs = predict(session, gate.images, batch_size)
    return tuple(version.labels[i] for i in probs.argmax(axis=1))


@dataclass(frozen=True)
class Decision:
    decision: str  # pass | refuse | inconclusive
    reasons: tuple[str, ...]
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.decision == PASS

    def summary(self) -> str:
        known = self.report.get("known") or {}
        if not known.get("images"):
            return f"{self.decision}: {'; '.join(self.reasons)}"
        s, c = known["serving_accuracy"], known["candidate_accuracy"]
        text = (f"{self.decision}: accuracy {c['value']:.4f} [{c['low']:.3f}, {c['high']:.3f}] vs "
                f"{s['value']:.4f} [{s['low']:.3f}, {s['high']:.3f}] on {known['images']} gate "
                f"images; Δ {known['delta']:+.4f}, lower bound {known['delta_lower_bound']:+.4f} "
                f"(margin −{known['margin']:g}), {known['worse']} worse / {known['better']} better, "
                f"McNemar p {known['mcnemar_p']:.3g}")  # fmt: skip
        return text + (f" — {'; '.join(self.reasons)}" if self.reasons else "")


def _interval(ok: np.ndarray, confidence: float) -> dict[str, float]:
    n, k = int(ok.size), int(ok.sum())
    low, high = wilson(k, n, confidence)
    return {"value": k / n if n else 0.0, "low": low, "high": high}


def _confusion(truth: tuple[str, ...], answers: tuple[str, ...]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = {}
    for t, a in zip(truth, answers, strict=True):
        table.setdefault(t, Counter())[a] += 1
    return {t: dict(sorted(c.items())) for t, c in sorted(table.items())}


def judge(
    gate: GateSet,
    serving: tuple[str, ...],
    candidate: tuple[str, ...],
    serving_labels: tuple[str, ...],
    candidate_labels: tuple[str, ...],
    p: GateParams,
) -> Decision:
    """The decision on answers already computed (``score``), one per gate image each."""
    truth = gate.labels
    classes = gate.classes
    if not set(classes) & set(serving_labels):
        raise UserError(f"the gate set's classes ({', '.join(classes)}) share none with the "
                        f"serving version's ({', '.join(serving_labels)}): wrong gate set?")  # fmt: skip
    refuse: list[str] = []
    unsure: list[str] = []
    unknown = sorted(set(classes) - set(candidate_labels))
    if unknown:
        refuse.append(f"its labels contradict the gate set: it cannot answer {', '.join(unknown)}"
                      f" (it knows {', '.join(candidate_labels)})")  # fmt: skip
    known_mask = np.array([t in serving_labels for t in truth])
    t = np.array(truth, dtype=object)
    s_ok = np.array(serving, dtype=object) == t
    c_ok = np.array(candidate, dtype=object) == t
    report: dict[str, Any] = {"gate_set": {"images": len(gate), "classes": gate.counts()}}
    n_known = int(known_mask.sum())
    paired = Paired.from_answers(s_ok[known_mask], c_ok[known_mask])
    bound = paired.delta_lower_bound(p.confidence)
    report["known"] = {
        "images": n_known,
        "serving_accuracy": _interval(s_ok[known_mask], p.confidence),
        "candidate_accuracy": _interval(c_ok[known_mask], p.confidence),
        "delta": paired.delta, "delta_lower_bound": bound, "margin": p.margin,
        "confidence": p.confidence, "worse": paired.worse, "better": paired.better,
        "mcnemar_p": paired.mcnemar_p(),
    }  # fmt: skip
    if n_known < p.min_images:
        unsure.append(f"only {n_known} gate images of classes both versions know "
                      f"(min_images {p.min_images})")  # fmt: skip
    elif bound < -p.margin:
        refuse.append(f"accuracy {paired.delta:+.4f} against the serving version, lower bound "
                      f"{bound:+.4f} below −{p.margin:g} (margin, {p.confidence:g} one-sided; "
                      f"{paired.worse} images worse, {paired.better} better, McNemar p "
                      f"{paired.mcnemar_p():.3g})")  # fmt: skip
    report["per_class"] = {}
    for cls in (c for c in classes if c in serving_labels):
        rows = t == cls
        n = int(rows.sum())
        s_acc, c_acc = float(s_ok[rows].mean()), float(c_ok[rows].mean())
        judged = n >= p.min_class_images
        report["per_class"][cls] = {"images": n, "serving": s_acc, "candidate": c_acc,
                                    "delta": c_acc - s_acc, "judged": judged}  # fmt: skip
        if judged and c_acc - s_acc < -p.class_margin:
            refuse.append(f"class {cls} drops {c_acc - s_acc:+.3f} ({s_acc:.3f} → {c_acc:.3f} on "
                          f"{n} images; class_margin {p.class_margin:g})")  # fmt: skip
    report["new_classes"] = {}
    for cls in (c for c in classes if c not in serving_labels and c in candidate_labels):
        rows = t == cls
        n = int(rows.sum())
        acc = _interval(c_ok[rows], p.confidence)
        report["new_classes"][cls] = {"images": n, "candidate": acc}
        if n < p.min_class_images:
            unsure.append(f"only {n} gate images of the new class {cls} "
                          f"(min_class_images {p.min_class_images})")  # fmt: skip
        elif acc["value"] < p.new_class_min_accuracy:
            refuse.append(f"new class {cls}: accuracy {acc['value']:.3f} on {n} images < "
                          f"new_class_min_accuracy {p.new_class_min_accuracy:g}")  # fmt: skip
    report["confusion"] = {"serving": _confusion(truth, serving),
                           "candidate": _confusion(truth, candidate)}  # fmt: skip
    changed = [i for i in range(len(truth)) if serving[i] != candidate[i]]
    report["changed"] = [{"source": gate.sources[i], "digest": gate.digests[i], "label": truth[i],
                          "serving": serving[i], "candidate": candidate[i]}
                         for i in changed[:MAX_CHANGED]]  # fmt: skip
    report["changed_total"] = len(changed)
    decision = REFUSE if refuse else INCONCLUSIVE if unsure else PASS
    reasons = tuple(refuse or unsure)
    report.update(decision=decision, reasons=list(reasons))
    return Decision(decision, reasons, report)


def run_gate(
    model: ModelDir, serving: int, candidate: int, gate: GateSet, p: GateParams, gate_path: Path
) -> Decision:
    """Score both versions, decide, and keep the report beside the candidate."""
    s_meta, c_meta = model.version(serving), model.version(candidate)
    decision = judge(gate, score(model, serving, gate), score(model, candidate, gate),
                     s_meta.labels, c_meta.labels, p)  # fmt: skip
    decision.report.update(model=model.name, serving=serving, candidate=candidate, at=now_iso(),
                           runtime=runtime_of(model))  # fmt: skip
    decision.report["gate_set"]["path"] = str(gate_path)
    write_atomic(model.path / str(candidate) / REPORT_FILE,
                 json.dumps(decision.report, indent=2) + "\n")  # fmt: skip
    return decision


def last_report(model: ModelDir, candidate: int) -> dict[str, Any] | None:
    path = model.path / str(candidate) / REPORT_FILE
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
