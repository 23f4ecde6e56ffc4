"""The lifecycle's commands over one model repository and one Triton: status, canary, shadow,
promote, rollback, gate (``rollout.py`` drives them in order by itself).

Each command applies to every model of the repository (the FP32 model and its INT8 and BF16
siblings are published together; ``--model`` picks some), under the model's lock: it renders
config.pbtxt for the new state, replaces it in one rename and asks Triton (EXPLICIT mode, admin
key) to load it. Triton loads and warms up the new versions and swaps them in only once they are
ready, so no request meets a half-loaded model; if a load fails, the old config goes back and is
loaded again, and the command fails with Triton's reason. Every change and decision is one line
of the model's ``history.jsonl`` (versioned with the repository by ``model.dvc``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..contract import MODEL_REPOSITORY
from ..dvc import available as dvc_available
from ..dvc import dvc
from ..gateset import GateSet
from ..model_records import Lifecycle
from ..params import Refused, UserError, load_settings
from ..repository import ModelDir, RepositoryError, model_dirs
from ..triton_control import ControlError, TritonControl
from . import live
from .gate import Decision, last_report, run_gate
from .params import LifecycleParams

GATE_SET = Path("artifacts/gate.npz")  # the prepare stage's (model_preparation.common.GATE_SET)


class Controller:
    """The lifecycle commands over one repository and one Triton."""

    def __init__(
        self,
        repository: Path,
        triton: TritonControl,
        api_urls: Sequence[str] = (),
        params: LifecycleParams | None = None,
        say: Callable[[str], None] = print,
        gate_set: Path = GATE_SET,
    ) -> None:
        self.repository = Path(repository)
        self.triton = triton
        self.api_urls = list(api_urls)
        self._params = params
        self.say = say
        self.gate_path = Path(gate_set)

    @property
    def params(self) -> LifecycleParams:
        if self._params is None:
            self._params = load_settings(LifecycleParams, "lifecycle")
        return self._params

    def models(self, names: Sequence[str] = ()) -> list[ModelDir]:
        found = {m.name: m for m in model_dirs(self.repository)}
        if not found:
            raise RepositoryError(f"no published model in {self.repository}/ (run `make model`)")
        unknown = [n for n in names if n not in found]
        if unknown:
            raise RepositoryError(
                f"no model {', '.join(unknown)} in {self.repository}/ (there is: {', '.join(found)})"
            )
        return [found[n] for n in names] if names else list(found.values())

    # -- status -----------------------------------------------------------------------------
    def status(self, names: Sequence[str] = ()) -> None:
        self.say(self._describe_gate_set())
        for model in self.models(names):
            state = _state(model)
            ready = self._ready(model.name)
            self.say(f"{model.name}: {describe_state(state)}")
            for number in model.versions():
                v = model.version(number)
                role = _role(state, number)
                acc = "–" if v.accuracy is None else f"{v.accuracy:.4f}"
                triton = "" if ready is None else (" READY" if number in ready else "")
                self.say(
                    f"  {number:>3}  {role:<10} accuracy {acc:<7} {len(v.labels)} classes "
                    f"({', '.join(v.labels)})  {v.published_at}{triton}"
                )
            newest = state.candidate or _newest(model, state)
            report = last_report(model, newest) if newest else None
            if report and report.get("serving") == state.serving:
                gate = Decision(report["decision"], tuple(report["reasons"]), report)
                self.say(f"  gate ({newest} vs {state.serving}): {gate.summary()}")
            step = _last_rollout_event(model)
            if step:
                self.say(f"  rollout: {step}")
            if state.candidate is not None and self.api_urls:
                try:
                    self.say(f"  live: {self._describe_live(model.name, state)}")
                except ControlError as exc:
                    self.say(f"  live: unknown ({exc})")

    def _describe_gate_set(self) -> str:
        try:
            gate = GateSet.load(self.gate_path)
        except UserError as exc:
            return f"gate set: none usable ({exc})"
        counts = ", ".join(f"{c} {n}" for c, n in gate.counts().items())
        return f"gate set: {len(gate)} images, {len(gate.classes)} classes ({counts})"

    def _describe_live(self, model: str, state: Lifecycle) -> str:
        window = live.read(self.api_urls)
        health = live.health(window, model, state.serving, state.candidate, self.params.guards)
        return health.line() + " (since the APIs started)"

    # -- candidates -------------------------------------------------------------------------
    def start_candidate(
        self, mode: str, version: int | None, percent: float | None, names: Sequence[str] = ()
    ) -> list[tuple[ModelDir, Lifecycle]]:
        share = self.params.canary_percent if percent is None else percent
        if mode == "shadow" and percent is None:
            share = self.params.shadow_percent
        if not 0 <= share <= 100:
            raise RepositoryError(f"--percent must be within 0–100, not {share:g}")
        changes = []
        for model in self.models(names):
            state = _state(model)
            number = version if version is not None else _newest(model, state)
            if number is None:  # nothing new for this model: the others may have a candidate
                self.say(f"{model.name}: no version newer than {state.serving}; left as it is")
                continue
            if number == state.serving:
                raise RepositoryError(f"{model.name} version {number} already serves")
            model.check_version(number)
            target = replace(state, candidate=number, mode=mode, percent=share)
            if target == state:
                self.say(f"{model.name}: version {number} is already the {mode} candidate at "
                         f"{share:g} %: nothing to do")  # fmt: skip
                continue
            changes.append((model, target))
        if not changes and not any(_state(m).candidate for m in self.models(names)):
            raise RepositoryError(
                "no model has a version newer than the one serving: publish one with "
                "`make model`, or name a version"
            )
        if changes:
            self._apply(changes, event=mode)
        for model, state in changes:
            what = (
                f"get its answer (version {state.serving} answers the rest)"
                if mode == "canary"
                else f"are also sent to it (users get version {state.serving}'s answers)"
            )
            self.say(
                f"{model.name}: version {state.candidate} is the {mode} candidate: {share:g} % of "
                f"requests {what}"
            )
        return changes

    # -- the labelled gate ------------------------------------------------------------------
    def gate(self, version: int | None = None, names: Sequence[str] = ()) -> list[Decision]:
        """Each model's candidate (or ``version``, or its newest) against its serving version
        on the gate set; reports kept beside the candidates. Changes nothing else."""
        gate_set = GateSet.load(self.gate_path)
        decisions = []
        for model in self.models(names):
            state = _state(model)
            number = version or state.candidate or _newest(model, state)
            if number is None or number == state.serving:
                self.say(f"{model.name}: no candidate to judge (version {state.serving} serves)")
                continue
            model.check_version(number)
            decision = run_gate(model, state.serving, number, gate_set, self.params.gate,
                                self.gate_path)  # fmt: skip
            with model.lock():
                model.log("gate", candidate=number, serving=state.serving,
                          decision=decision.decision, reasons=list(decision.reasons))  # fmt: skip
            self.say(f"{model.name} v{number} vs v{state.serving}: {decision.summary()}")
            decisions.append(decision)
        return decisions

    # -- promote and rollback ---------------------------------------------------------------
    def promote(
        self, version: int | None, force: bool, names: Sequence[str] = (), gated: bool = False
    ) -> None:
        """The candidate (or ``version``) serves everything, if the labelled gate passes it
        (``force``: whatever the gate says; ``gated``: it passed already, in this roll-out).
        A version that already serves is a no-op."""
        targets = []
        for model in self.models(names):
            state = _state(model)
            number = version if version is not None else state.candidate
            if number is None:
                raise RepositoryError(
                    f"{model.name} has no candidate: start one with `canary` or `shadow`, or name "
                    "the version to promote"
                )
            if number == state.serving:
                self.say(f"{model.name}: version {number} already serves: nothing to do")
                continue
            model.check_version(number)
            targets.append((model, state, number))
        if not targets:
            return
        refusals = [] if force or gated else self._gate_refusals(targets)
        if refusals:
            raise Refused(
                "promotion refused, nothing changed:\n  " + "\n  ".join(refusals)
                + "\n(--force promotes anyway)"
            )  # fmt: skip
        changes = [(m, Lifecycle(serving=n, previous=s.serving)) for m, s, n in targets]
        self._apply(changes, event="promote", forced=force)
        for model, state in changes:
            self.say(
                f"{model.name}: version {state.serving} serves all traffic "
                f"(was {state.previous}; `rollback` returns to it)"
            )

    def _gate_refusals(self, targets: list[tuple[ModelDir, Lifecycle, int]]) -> list[str]:
        try:
            gate_set = GateSet.load(self.gate_path)
        except UserError as exc:
            return [f"no labelled evidence: {exc}"]
        out = []
        for model, state, number in targets:
            d = run_gate(model, state.serving, number, gate_set, self.params.gate, self.gate_path)
            if not d.passed:
                out.append(f"{model.name} v{number}: gate {d.decision}: {'; '.join(d.reasons)}")
        return out

    def rollback(self, to: int | None, names: Sequence[str] = (), reason: str = "") -> None:
        changes = []
        for model in self.models(names):
            state = _state(model)
            if to is not None:
                if to == state.serving and state.candidate is None:
                    self.say(f"{model.name}: version {to} already serves: nothing to do")
                    continue
                target = Lifecycle(serving=to, previous=state.serving)
            elif state.candidate is not None:
                target = Lifecycle(serving=state.serving, previous=state.previous)
            elif state.previous is not None:
                target = Lifecycle(serving=state.previous)
            else:
                raise RepositoryError(
                    f"{model.name}: nothing to roll back to (no candidate, and no version served "
                    "before this one); name one with --to"
                )
            model.check_version(target.serving)
            changes.append((model, target, state))
        if not changes:
            return
        extra = {"reason": reason} if reason else {}
        self._apply([(m, t) for m, t, _ in changes], event="rollback", **extra)
        for model, target, before in changes:
            if to is None and before.candidate is not None:
                self.say(
                    f"{model.name}: candidate {before.candidate} dropped; version "
                    f"{target.serving} serves all traffic"
                )
            else:
                self.say(
                    f"{model.name}: version {target.serving} serves all traffic "
                    f"(was {before.serving})"
                )

    def drop_candidates(self, models: Sequence[ModelDir], reason: str) -> None:
        """Each model's candidate (if it has one) dropped; what serves stays."""
        changes = []
        for model in models:
            state = _state(model)
            if state.candidate is not None:
                changes.append((model, Lifecycle(serving=state.serving, previous=state.previous)))
        if changes:
            self._apply(changes, event="rollback", reason=reason)
            for model, state in changes:
                self.say(f"{model.name}: candidate dropped; version {state.serving} serves all "
                         "traffic")  # fmt: skip

    # -- applying ---------------------------------------------------------------------------
    def _apply(self, changes: list[tuple[ModelDir, Lifecycle]], event: str, **extra) -> None:
        """All or nothing: each model's config is replaced and loaded; if one load fails, the
        models already changed get their old config back (and it is loaded again)."""
        reachable = self.triton.reachable()
        if not reachable:
            self.say(
                f"warning: Triton is not reachable at {self.triton.base}: the change is written "
                "to the repository and applies when Triton next starts"
            )
        done: list[tuple[ModelDir, str]] = []
        try:
            for model, state in changes:
                with model.lock():
                    old = model.write_config(state)
                    done.append((model, old))
                    if reachable:
                        self._load(model, state)
                    model.log(event, **_fields(state), **extra)
        except (UserError, OSError) as exc:
            for model, old in reversed(done):
                with model.lock():
                    model.restore_config(old)
                    if reachable:
                        try:
                            self.triton.load(model.name)
                        except ControlError as again:
                            self.say(f"warning: reloading {model.name}'s old config: {again}")
            raise RepositoryError(f"{event} failed, the previous state is back: {exc}") from exc
        self.commit_dvc()

    def _load(self, model: ModelDir, state: Lifecycle) -> None:
        try:
            self.triton.load(model.name)
        except ControlError as exc:
            raise ControlError(f"Triton could not load {model.name}: {exc}") from None
        missing = set(state.loaded) - self.triton.ready_versions(model.name)
        if missing:
            raise ControlError(f"{model.name}: version(s) {sorted(missing)} are not READY")

    def _ready(self, model: str) -> set[int] | None:
        try:
            return self.triton.ready_versions(model)
        except ControlError:
            return None

    def commit_dvc(self) -> None:
        """Record what serves in model.dvc, when this is the project's own repository."""
        if self.repository.resolve() != MODEL_REPOSITORY.resolve():
            return
        if not Path("model.dvc").is_file() or not dvc_available():
            return
        cmd, env = dvc("commit", "-q", "-f", "model.dvc")
        done = subprocess.run(cmd, check=False, env=env)
        if done.returncode == 0:
            self.say("model.dvc updated: `git commit model.dvc` records what serves")


def _state(model: ModelDir) -> Lifecycle:
    state = model.state()
    if state is None:
        raise RepositoryError(f"{model.name} has no serving version yet (run `make model`)")
    return state


def _newest(model: ModelDir, state: Lifecycle) -> int | None:
    newer = [v for v in model.versions() if v > state.serving]
    return newer[-1] if newer else None


def _role(state: Lifecycle, number: int) -> str:
    if number == state.serving:
        return "serving"
    if number == state.candidate:
        return state.mode
    return "previous" if number == state.previous else ""


def describe_state(state: Lifecycle) -> str:
    text = f"version {state.serving} serves"
    if state.candidate is not None:
        verb = "answers" if state.mode == "canary" else "shadows"
        text += f"; candidate {state.candidate} {verb} {state.percent:g} % of requests"
    return text


def _last_rollout_event(model: ModelDir) -> str:
    """The last roll-out line of the model's history, when the roll-out did not finish: still
    running, or interrupted (its process is gone), and what to do then."""
    for event in reversed(model.history()):
        if event.get("event") == "rollout":
            if event.get("step") in ("promoted", "refused", "rolled back"):
                return ""
            line = f"{event.get('at', '')} {event.get('step', '')}: {event.get('detail', '')}"
            if event.get("step") == "inconclusive":
                return line + " (`make rollout` tries again, `make rollback` drops the candidate)"
            if _alive(event.get("pid")):
                return line + f" (running, pid {event['pid']})"
            return line + (" — interrupted: the serving version serves; `make rollout` starts "
                           "again from the gate, `make rollback` drops the candidate")  # fmt: skip
        if event.get("event") in ("promote", "rollback", "publish"):
            return ""
    return ""


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fields(state: Lifecycle) -> dict:
    return {
        k: v
        for k, v in vars(state).items()
        if v not in (None, "") and not (k == "percent" and state.candidate is None)
    }
