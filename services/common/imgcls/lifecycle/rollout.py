"""``make rollout``: one command takes the candidate from the labelled gate through shadow and
canary steps to promotion, deciding each step on evidence, and rolls back by itself.

    gate (every variant, on the gate set) ─ refuse ──────────────────────► dropped, exit 3
        │ inconclusive ──────────────────────────────────────────────────► left as it is, exit 4
        ▼ pass
    shadow (shadow_percent; 0 skips it) → canary steps (rollout.steps: 10 %, 50 %) → promote, exit 0
        each step: at least min_step_s and min_requests candidate calls, guards read every poll_s
        a guard fails ──────────────────────────────────────────────────► rolled back, exit 3
        Triton or the API gone ─────────────────────────────────────────► rolled back, exit 3
        too little traffic by max_step_s ───────────────────────────────► left at that step, exit 4

A candidate the gate refuses never answers a user (the gate runs before the first step). Every
step and decision is one ``rollout`` line in each model's history (``make status`` shows an
unfinished one). Killed at any point, the repository is consistent: each config names the
serving version and, at most, the candidate at its current step; the next ``make rollout``
starts again from the gate, ``make rollback`` drops the candidate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ..params import Inconclusive, Refused, UserError
from ..repository import ModelDir
from ..triton_control import ControlError
from . import live
from .controller import Controller, _newest, _state

FINAL = ("promoted", "refused", "rolled back")


class Rollout:
    def __init__(self, ctl: Controller, clock=time.monotonic, sleep=time.sleep) -> None:
        self.ctl, self.clock, self.sleep = ctl, clock, sleep

    def log(self, models: Sequence[ModelDir], step: str, detail: str) -> None:
        self.ctl.say(f"rollout: {step}: {detail}")
        for model in models:
            with model.lock():
                model.log("rollout", step=step, detail=detail, pid=os.getpid())

    def run(self, version: int | None = None, names: Sequence[str] = ()) -> None:
        ctl = self.ctl
        models = [m for m in ctl.models(names) if self._candidate_of(m, version) is not None]
        if not models:
            ctl.say("nothing to roll out: no model has a version newer than the one serving")
            return
        plan = {m.name: self._candidate_of(m, version) for m in models}
        self.log(models, "gate", ", ".join(f"{m.name} v{plan[m.name]}" for m in models))
        decisions = ctl.gate(version, [m.name for m in models])
        refused = [d for d in decisions if d.decision == "refuse"]
        unsure = [d for d in decisions if d.decision == "inconclusive"]
        if refused:
            why = "; ".join(f"{d.report['model']}: {'; '.join(d.reasons)}" for d in refused)
            ctl.drop_candidates(models, reason=f"gate: {why}")
            self.log(models, "refused", f"the labelled gate: {why}")
            raise Refused(f"the labelled gate refused the candidate: {why}")
        if unsure:
            why = "; ".join(f"{d.report['model']}: {'; '.join(d.reasons)}" for d in unsure)
            self.log(models, "inconclusive", f"the labelled gate: {why}")
            raise Inconclusive(f"the labelled gate cannot decide: {why} (nothing changed)")
        p = ctl.params
        shadow = [("shadow", p.shadow_percent)] if p.shadow_percent > 0 else []  # 0: no shadow
        steps = shadow + [("canary", s) for s in p.rollout.steps]
        for mode, share in steps:
            try:
                self._step(models, plan, mode, share)
            except (Refused, Inconclusive):
                raise
            except (ControlError, UserError, OSError) as exc:
                self._roll_back(models, f"{mode} {share:g} %: {exc}")
        try:
            ctl.promote(None, force=False, names=[m.name for m in models], gated=True)
        except (ControlError, UserError, OSError) as exc:
            self._roll_back(models, f"promote: {exc}")
        self.log(models, "promoted", ", ".join(f"{m.name} v{plan[m.name]}" for m in models))

    def _candidate_of(self, model: ModelDir, version: int | None) -> int | None:
        state = _state(model)
        number = version or state.candidate or _newest(model, state)
        return None if number == state.serving else number

    def _roll_back(self, models: Sequence[ModelDir], why: str) -> None:
        try:
            self.ctl.drop_candidates(models, reason=why)
        except (UserError, OSError) as exc:
            why += f" (and the rollback is only written, not loaded: {exc})"
        self.log(models, "rolled back", why)
        raise Refused(f"rolled back: {why}")

    def _step(self, models, plan: dict[str, int], mode: str, share: float) -> None:
        ctl, p = self.ctl, self.ctl.params
        for model in models:
            ctl.start_candidate(mode, plan[model.name], share, [model.name])
        self.log(models, mode, f"{share:g} %: holding at least {p.rollout.min_step_s:g} s and "
                               f"{p.guards.min_requests} candidate calls")  # fmt: skip
        started, before = self.clock(), live.read(ctl.api_urls)
        while True:
            self.sleep(p.rollout.poll_s)
            if not ctl.triton.reachable():
                raise ControlError(f"Triton is not reachable at {ctl.triton.base}")
            window = live.delta(live.read(ctl.api_urls), before)
            healths = [live.health(window, m.name, _state(m).serving, plan[m.name], p.guards)
                       for m in models]  # fmt: skip
            failed = [h for h in healths if h.failed]
            if failed:
                why = "; ".join(h.line() for h in failed)
                self._roll_back(models, f"{mode} {share:g} %: {why}")
            elapsed = self.clock() - started
            judged = [h for h in healths if h.judged]
            if elapsed >= p.rollout.min_step_s and judged:
                self.log(models, f"{mode} passed", f"{share:g} % after {elapsed:.0f} s: "
                         + "; ".join(h.line() for h in healths))  # fmt: skip
                return
            if elapsed >= p.rollout.max_step_s:
                why = "; ".join(h.line() for h in healths)
                self.log(models, "inconclusive", f"{mode} {share:g} %: too little traffic after "
                                                 f"{elapsed:.0f} s: {why}")  # fmt: skip
                raise Inconclusive(
                    f"too little traffic to judge the {mode} at {share:g} % within "
                    f"{p.rollout.max_step_s:g} s (max_step_s): {why}; the candidate stays at "
                    "this step (`make rollout` again, or `make rollback`)"
                )
