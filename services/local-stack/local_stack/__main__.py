"""``make up``: the real Triton + the API on localhost, in the foreground, until Ctrl-C.

python -m local_stack [--model-repository model_repository] [--http-port 8000] ...
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from imgcls.contract import LOCAL_ADMIN_KEY_FILE

from .api import ApiServer
from .procs import log_tail
from .tritonserver import TritonServer


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--api-port", type=int, default=5000)
    parser.add_argument("--logs", type=Path, default=Path(".cache/logs"))
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        default=LOCAL_ADMIN_KEY_FILE,
        help="where Triton's admin key is left for `make canary/promote/rollback` (0600)",
    )
    return parser.parse_args()


def _stop(_signum, _frame) -> None:
    """Leave the wait loop on the first SIGTERM/SIGINT; ignore the ones that follow.

    A supervisor signals the whole process group, and make forwards it to us once more: a
    second KeyboardInterrupt raised inside the cleanup would skip stopping Triton.
    """
    _ignore_stop_signals()
    raise KeyboardInterrupt


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> int:
    args = _parse()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started with SIGINT ignored (background jobs)
    triton = TritonServer(
        args.model_repository,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        workdir=args.logs / "triton",
        admin_key_file=args.admin_key_file,  # for `make canary/promote/rollback`
    )
    api = ApiServer(triton.url, args.api_port, workdir=args.logs / "api")
    try:
        print(
            f"[up] starting tritonserver on :{args.http_port} (log: {triton.log_path})", flush=True
        )
        t0 = time.monotonic()
        triton.start()
        print(
            f"[up] triton ready in {time.monotonic() - t0:.1f}s; starting the API on :{args.api_port}",
            flush=True,
        )
        api.start()
        print(
            f"[up] ready. Try:\n\n  curl -F image=@data/raw/circle/circle_0000.jpg "
            f"http://localhost:{args.api_port}/predict\n\n[up] Ctrl-C stops both.",
            flush=True,
        )
        while triton.running and api.running:
            time.sleep(1)
        dead = triton if not triton.running else api
        print(f"[up] {dead.name} exited unexpectedly:\n{log_tail(dead.log_path)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[up] stopping…", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"[up] {exc}", file=sys.stderr)
        return 1
    finally:
        _ignore_stop_signals()
        api.stop()
        triton.stop()
        print("[up] stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
