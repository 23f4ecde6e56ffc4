"""Change the served model safely, one command each (``make canary``, ``make promote``…):

    python -m imgcls.lifecycle status                    versions, what serves, live agreement
    python -m imgcls.lifecycle canary  [N] [--percent P] P % of requests answered by version N
    python -m imgcls.lifecycle shadow  [N] [--percent P] P % also sent to N; users get the
                                                         serving version's answer
    python -m imgcls.lifecycle promote [N] [--force]     N (default: the candidate) serves all
                                                         traffic, if it passes the gate
    python -m imgcls.lifecycle rollback [--to N]         drop the candidate; without one, serve
                                                         the version that served before

N defaults to the newest version on disk. Each command applies to every model of the repository
(the FP32 model and its INT8 sibling are published together; ``--model`` picks one), under the
model's lock: it renders config.pbtxt for the new state, replaces it in one rename and asks
Triton (EXPLICIT mode, admin key) to load it. Triton loads and warms up the new versions and swaps
them in only once they are ready, so no request meets a half-loaded model; if a load fails, the
old config goes back and is loaded again, and the command fails with Triton's reason. Settings:
params.yaml ``lifecycle``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .contract import LOCAL_ADMIN_KEY_FILE, MODEL_REPOSITORY
from .dvc import available as dvc_available
from .dvc import dvc
from .params import UserError, load_settings, run_cli
from .repository import MODES, Lifecycle, ModelDir, RepositoryError, model_dirs
from .triton_control import ControlError, TritonControl, admin_key

COMPARISONS = "api_candidate_comparisons_total"


@dataclass(frozen=True)
class LifecycleParams:
    """params.yaml ``lifecycle``: the promotion gate and the defaults of canary and shadow."""

    on_publish: str  # what `make model` does with a new version: shadow | canary | none
    canary_percent: float
    shadow_percent: float
    min_accuracy: float  # the candidate's held-out accuracy (version.json)…
    max_accuracy_drop: float  # …and no more than this below the serving version's
    min_agreement: float  # live top-1 agreement with the serving version (API metrics)…
    min_comparisons: int  # …over at least this many compared answers

    def __post_init__(self) -> None:
        if self.on_publish not in (*MODES, "none"):
            raise UserError(
                f"lifecycle on_publish must be shadow, canary or none, not {self.on_publish!r}"
            )
        for name in ("canary_percent", "shadow_percent"):
            if not 0 <= getattr(self, name) <= 100:
                raise UserError(f"lifecycle {name} must be within 0–100")


@dataclass(frozen=True)
class Live:
    """Answers the API compared between the serving version and the candidate."""

    agree: int = 0
    disagree: int = 0
    new_label: int = 0  # the candidate named a class the serving version does not have

    @property
    def compared(self) -> int:
        return self.agree + self.disagree

    @property
    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None


def live_comparisons(api_urls: Sequence[str], model: str, serving: int, candidate: int) -> Live:
    """Sum of the comparison counters of every API given (one per replica)."""
    counts = {"agree": 0.0, "disagree": 0.0, "new_label": 0.0}
    for url in api_urls:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except OSError as exc:
            raise ControlError(f"the API's metrics are not reachable at {url}: {exc}") from None
        for labels, value in re.findall(rf"^{COMPARISONS}{{([^}}]*)}} (\S+)$", text, re.M):
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if (found.get("model"), found.get("serving"), found.get("candidate")) == (
                model,
                str(serving),
                str(candidate),
            ):
                counts[found.get("outcome", "")] = counts.get(found.get("outcome", ""), 0) + float(
                    value
                )
    return Live(int(counts["agree"]), int(counts["disagree"]), int(counts["new_label"]))


class Controller:
    """The lifecycle commands over one repository and one Triton."""

    def __init__(
        self,
        repository: Path,
        triton: TritonControl,
        api_urls: Sequence[str] = (),
        params: LifecycleParams | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.repository = Path(repository)
        self.triton = triton
        self.api_urls = list(api_urls)
        self._params = params
        self.say = say

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

    # -- commands -------------------------------------------------------------------------
    def status(self, names: Sequence[str] = ()) -> None:
        for model in self.models(names):
            state = _state(model)
            ready = self._ready(model.name)
            self.say(f"{model.name}: {_describe_state(state)}")
            for number in model.versions():
                v = model.version(number)
                role = _role(state, number)
                acc = "–" if v.accuracy is None else f"{v.accuracy:.4f}"
                triton = "" if ready is None else (" READY" if number in ready else "")
                self.say(
                    f"  {number:>3}  {role:<10} accuracy {acc:<7} {len(v.labels)} classes "
                    f"({', '.join(v.labels)})  {v.published_at}{triton}"
                )
            if state.candidate is not None and self.api_urls:
                try:
                    self.say(f"  live: {_describe_live(self._live(model.name, state))}")
                except ControlError as exc:
                    self.say(f"  live: unknown ({exc})")

    def start_candidate(
        self, mode: str, version: int | None, percent: float | None, names: Sequence[str] = ()
    ) -> None:
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
            changes.append((model, replace(state, candidate=number, mode=mode, percent=share)))
        if not changes:
            raise RepositoryError(
                "no model has a version newer than the one serving: publish one with "
                "`make model`, or name a version"
            )
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

    def promote(self, version: int | None, force: bool, names: Sequence[str] = ()) -> None:
        changes, refusals = [], []
        for model in self.models(names):
            state = _state(model)
            number = version if version is not None else state.candidate
            if number is None:
                raise RepositoryError(
                    f"{model.name} has no candidate: start one with `canary` or `shadow`, or name "
                    "the version to promote"
                )
            if number == state.serving:
                raise RepositoryError(f"{model.name} version {number} already serves")
            model.check_version(number)
            refusals += [f"{model.name} v{number}: {r}" for r in self._gate(model, state, number)]
            changes.append((model, Lifecycle(serving=number, previous=state.serving)))
        if refusals and not force:
            raise RepositoryError(
                "promotion refused, nothing changed:\n  "
                + "\n  ".join(refusals)
                + "\n(--force promotes anyway)"
            )
        for refusal in refusals:
            self.say(f"warning: promoting despite: {refusal}")
        self._apply(changes, event="promote", forced=bool(refusals))
        for model, state in changes:
            self.say(
                f"{model.name}: version {state.serving} serves all traffic "
                f"(was {state.previous}; `rollback` returns to it)"
            )

    def rollback(self, to: int | None, names: Sequence[str] = ()) -> None:
        changes = []
        for model in self.models(names):
            state = _state(model)
            if to is not None:
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
        self._apply([(m, t) for m, t, _ in changes], event="rollback")
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

    # -- the gate ---------------------------------------------------------------------------
    def _gate(self, model: ModelDir, state: Lifecycle, number: int) -> list[str]:
        """Why ``number`` may not replace the serving version (empty: it may)."""
        p, reasons = self.params, []
        candidate, serving = model.version(number), model.version(state.serving)
        if candidate.accuracy is None:
            if p.min_accuracy > 0:
                reasons.append("no held-out accuracy recorded for it")
        else:
            if candidate.accuracy < p.min_accuracy:
                reasons.append(
                    f"held-out accuracy {candidate.accuracy:.4f} < min_accuracy {p.min_accuracy}"
                )
            if serving.accuracy is not None and (
                candidate.accuracy < serving.accuracy - p.max_accuracy_drop
            ):
                reasons.append(
                    f"held-out accuracy {candidate.accuracy:.4f} is more than max_accuracy_drop "
                    f"{p.max_accuracy_drop} below version {state.serving}'s {serving.accuracy:.4f}"
                )
        if state.candidate != number:
            if p.min_comparisons > 0:
                reasons.append(
                    "it has not run as a candidate: no live agreement (canary or shadow it first)"
                )
            return reasons
        try:
            live = self._live(model.name, state)
        except ControlError as exc:
            return [*reasons, f"live agreement unknown: {exc}"]
        if live.compared < p.min_comparisons:
            reasons.append(
                f"only {live.compared} live comparisons with version {state.serving} "
                f"(min_comparisons {p.min_comparisons}): let the {state.mode} run longer"
            )
        elif live.agreement is not None and live.agreement < p.min_agreement:
            reasons.append(
                f"live top-1 agreement {live.agreement:.3f} with version {state.serving} "
                f"< min_agreement {p.min_agreement} ({_describe_live(live)})"
            )
        return reasons

    def _live(self, model: str, state: Lifecycle) -> Live:
        if not self.api_urls or state.candidate is None:
            return Live()
        return live_comparisons(self.api_urls, model, state.serving, state.candidate)

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
        self._commit_dvc()

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

    def _commit_dvc(self) -> None:
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


def _describe_state(state: Lifecycle) -> str:
    text = f"version {state.serving} serves"
    if state.candidate is not None:
        verb = "answers" if state.mode == "canary" else "shadows"
        text += f"; candidate {state.candidate} {verb} {state.percent:g} % of requests"
    return text


def _describe_live(live: Live) -> str:
    if not live.compared:
        return "no answers compared yet"
    text = f"{live.agree}/{live.compared} answers agree ({live.agreement:.3f})"
    if live.new_label:
        text += f", {live.new_label} named a class the serving version does not have"
    return text


def _fields(state: Lifecycle) -> dict:
    return {
        k: v
        for k, v in vars(state).items()
        if v not in (None, "") and not (k == "percent" and state.candidate is None)
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imgcls.lifecycle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--triton-url", default=os.environ.get("TRITON_URL", "127.0.0.1:8000"))
    parser.add_argument(
        "--triton-grpc-url",
        default=os.environ.get("TRITON_GRPC_URL"),
        help="Triton's gRPC endpoint, for loads (default: the HTTP host, port 8001)",
    )
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        help="a file holding Triton's admin key (else $TRITON_ADMIN_KEY, $TRITON_ADMIN_KEY_FILE "
        f"or {LOCAL_ADMIN_KEY_FILE}, which `make up` writes)",
    )
    parser.add_argument(
        "--api-url",
        action="append",
        default=None,
        help="the API whose /metrics count live agreement (repeat: one per replica); "
        "default $API_URL or http://127.0.0.1:5000",
    )
    models = argparse.ArgumentParser(add_help=False)
    models.add_argument(
        "--model", action="append", default=[], help="only this model (repeatable; default: all)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[models], help="versions, what serves, live agreement")
    for mode in ("canary", "shadow"):
        cmd = sub.add_parser(
            mode, parents=[models], help=f"start version N as the {mode} candidate"
        )
        cmd.add_argument("version", nargs="?", type=int)
        cmd.add_argument("--percent", type=float, default=None)
    cmd = sub.add_parser(
        "promote", parents=[models], help="the candidate (or N) serves all traffic"
    )
    cmd.add_argument("version", nargs="?", type=int)
    cmd.add_argument("--force", action="store_true", help="promote even if the gate refuses")
    cmd = sub.add_parser(
        "rollback", parents=[models], help="drop the candidate, or serve the previous version"
    )
    cmd.add_argument("--to", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    api_urls = args.api_url or [os.environ.get("API_URL", "http://127.0.0.1:5000")]
    control = TritonControl(
        args.triton_url, admin_key(args.admin_key_file), grpc_url=args.triton_grpc_url
    )
    ctl = Controller(args.repository, control, api_urls)
    try:
        if args.command == "status":
            ctl.status(args.model)
        elif args.command in ("canary", "shadow"):
            ctl.start_candidate(args.command, args.version, args.percent, args.model)
        elif args.command == "promote":
            ctl.promote(args.version, args.force, args.model)
        else:
            ctl.rollback(args.to, args.model)
    except ValueError as exc:  # a state the Lifecycle refuses
        raise RepositoryError(str(exc)) from None


if __name__ == "__main__":
    run_cli(main)
