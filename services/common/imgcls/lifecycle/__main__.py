"""Change the served model safely, one command each (``make rollout``, ``make promote``…):

    python -m imgcls.lifecycle status                    versions, the gate set, what serves, the
                                                         last gate report, live guards
    python -m imgcls.lifecycle rollout [N]               gate → shadow → canary steps → promote,
                                                         rolling back by itself (rollout.py)
    python -m imgcls.lifecycle gate    [N]               the labelled gate alone: N (default: the
                                                         candidate, else the newest) against the
                                                         serving version; changes nothing
    python -m imgcls.lifecycle canary  [N] [--percent P] P % of requests answered by version N
    python -m imgcls.lifecycle shadow  [N] [--percent P] P % also sent to N; users get the
                                                         serving version's answer
    python -m imgcls.lifecycle promote [N] [--force]     N (default: the candidate) serves all
                                                         traffic, if the labelled gate passes it
    python -m imgcls.lifecycle rollback [--to N]         drop the candidate; without one, serve
                                                         the version that served before

Exit codes: 0 done (promoted, changed, or nothing to do); 2 bad usage or input (nothing
changed); 3 refused or rolled back (by the gate or a guard, with the reason); 4 inconclusive (too
little evidence: the candidate is left where it was, with the reason). ``--once KEY`` makes a
command idempotent for a re-run (the Helm hook Job on every upgrade): when KEY is in the
models' history already, nothing is done. Settings: params.yaml ``lifecycle``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from ..contract import LOCAL_ADMIN_KEY_FILE, MODEL_REPOSITORY
from ..params import Inconclusive, Refused, run_cli
from ..repository import RepositoryError
from ..triton_control import TritonControl, admin_key
from .controller import GATE_SET, Controller
from .rollout import Rollout


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
        help="an API whose /metrics the live guards read (repeatable; every address its host "
        "resolves to is read: a headless Service gives every replica); default $API_URL or "
        "http://127.0.0.1:5000",
    )
    parser.add_argument(
        "--gate-set",
        type=Path,
        default=Path(os.environ.get("GATE_SET", GATE_SET)),
        help=f"the labelled gate set (default {GATE_SET}, the prepare stage's)",
    )
    parser.add_argument(
        "--once",
        default=None,
        metavar="KEY",
        help="do nothing when KEY was done already (a re-run hook Job)",
    )
    models = argparse.ArgumentParser(add_help=False)
    models.add_argument(
        "--model", action="append", default=[], help="only this model (repeatable; default: all)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[models], help="versions, gate report, live guards")
    for name, text in (("rollout", "gate, shadow, canary steps, promote: automatically"),
                       ("gate", "the labelled gate alone; changes nothing")):  # fmt: skip
        cmd = sub.add_parser(name, parents=[models], help=text)
        cmd.add_argument("version", nargs="?", type=int)
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


def _done_already(ctl: Controller, key: str, names: Sequence[str]) -> bool:
    return all(
        any(e.get("event") == "once" and e.get("key") == key for e in m.history())
        for m in ctl.models(names)
    )


def _dispatch(ctl: Controller, args: argparse.Namespace) -> None:
    command = args.command
    if command == "status":
        ctl.status(args.model)
    elif command == "rollout":
        Rollout(ctl).run(args.version, args.model)
    elif command == "gate":
        decisions = ctl.gate(args.version, args.model)
        worst = {d.decision for d in decisions}
        if "refuse" in worst:
            raise Refused("the labelled gate refuses the candidate (reports beside the versions)")
        if "inconclusive" in worst:
            raise Inconclusive("the labelled gate cannot decide (too little evidence)")
    elif command in ("canary", "shadow"):
        ctl.start_candidate(command, args.version, args.percent, args.model)
    elif command == "promote":
        ctl.promote(args.version, args.force, args.model)
    else:
        ctl.rollback(args.to, args.model)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    api_urls = args.api_url or [os.environ.get("API_URL", "http://127.0.0.1:5000")]
    control = TritonControl(
        args.triton_url, admin_key(args.admin_key_file), grpc_url=args.triton_grpc_url
    )
    ctl = Controller(args.repository, control, api_urls, gate_set=args.gate_set)
    if args.once and _done_already(ctl, args.once, args.model):
        ctl.say(f"{args.command} ({args.once}) was done already: nothing to do")
        return
    try:
        _dispatch(ctl, args)
    except ValueError as exc:  # a state the Lifecycle refuses
        raise RepositoryError(str(exc)) from None
    if args.once:
        for model in ctl.models(args.model):
            with model.lock():
                model.log("once", key=args.once, command=args.command)


if __name__ == "__main__":
    run_cli(main)
