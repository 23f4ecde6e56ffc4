"""Triton's model-repository API (load, index, config), the admin side the API never uses.

Loads go over **gRPC**: Triton 2.51 handles an HTTP load request on the HTTP worker thread that
accepted it, for the whole load, and the inference requests of every connection that thread
serves wait behind it (triton-inference-server/server#8117, #8958; measured in the README). The
message is encoded by hand (two string fields) so that grpcio alone is needed, not Triton's
generated stubs. Quick calls (index, config) use plain HTTP. The control endpoints answer only
with the admin key (``--http-restricted-api``, ``--grpc-restricted-protocol``); the key comes
from ``TRITON_ADMIN_KEY``, a file (``--admin-key-file``, a mounted secret), or the one ``make up``
leaves in ``imgcls.contract.LOCAL_ADMIN_KEY_FILE``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .contract import LOCAL_ADMIN_KEY_FILE
from .params import UserError


class ControlError(UserError):
    """Triton refused or could not be reached; the message says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def admin_key(key_file: Path | None = None) -> str | None:
    """``TRITON_ADMIN_KEY``, else the first line of ``key_file``, ``TRITON_ADMIN_KEY_FILE`` or
    the local stack's key file."""
    if os.environ.get("TRITON_ADMIN_KEY"):
        return os.environ["TRITON_ADMIN_KEY"]
    path = key_file or Path(os.environ.get("TRITON_ADMIN_KEY_FILE") or LOCAL_ADMIN_KEY_FILE)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def grpc_address(http_url: str) -> str:
    """Triton's gRPC endpoint beside an HTTP one: the same host, port 8001."""
    host = http_url.split("://", 1)[-1].rsplit(":", 1)[0]
    return f"{host}:8001"


def _field(number: int, value: str) -> bytes:
    """One length-delimited protobuf field."""
    data, length = value.encode(), b""
    size = len(value.encode())
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([number << 3 | 2]) + length + data


class TritonControl:
    def __init__(
        self, url: str, key: str | None, timeout: float = 300.0, grpc_url: str | None = None
    ) -> None:
        self.base = url if url.startswith("http") else f"http://{url}"
        self.grpc_url = grpc_url or grpc_address(self.base)
        self.key = key
        self.timeout = timeout

    def _key(self) -> str:
        if not self.key:
            raise ControlError(
                "no Triton admin key: set TRITON_ADMIN_KEY or pass --admin-key-file (make up "
                f"writes {LOCAL_ADMIN_KEY_FILE}; compose mounts it for the modelctl service)"
            )
        return self.key

    def _call(self, method: str, path: str, body: dict | None = None, admin: bool = False) -> Any:
        headers = {"Content-Type": "application/json"}
        if admin:
            headers["admin-key"] = self._key()
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ControlError(_reason(exc), exc.code) from None
        except (OSError, urllib.error.URLError) as exc:
            raise ControlError(f"Triton is not reachable at {self.base}: {exc}") from None
        return json.loads(raw) if raw else None

    def reachable(self) -> bool:
        try:
            self._call("GET", "/v2/health/live")
        except ControlError:
            return False
        return True

    def load(self, model: str) -> None:
        """Load (or reload) ``model`` from its config.pbtxt on disk; returns once Triton has
        loaded and warmed up every version the config names, and swapped them in (requests
        meanwhile go to what served before)."""
        import grpc

        method = "/inference.GRPCInferenceService/RepositoryModelLoad"
        with grpc.insecure_channel(self.grpc_url) as channel:
            call = channel.unary_unary(
                method, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            try:
                call(
                    _field(2, model),  # RepositoryModelLoadRequest.model_name
                    metadata=(("triton-grpc-protocol-admin-key", self._key()),),
                    timeout=self.timeout,
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and "admin-key" not in (
                    exc.details() or ""
                ):
                    raise ControlError(
                        f"Triton's gRPC endpoint is not reachable at {self.grpc_url}: "
                        f"{exc.details()} (--triton-grpc-url)"
                    ) from None
                raise ControlError(str(exc.details())) from None

    def index(self) -> list[dict[str, Any]]:
        return self._call("POST", "/v2/repository/index", {}, admin=True) or []

    def ready_versions(self, model: str) -> set[int]:
        return {
            int(e["version"])
            for e in self.index()
            if e.get("name") == model and e.get("state") == "READY" and e.get("version")
        }

    def config(self, model: str) -> dict[str, Any]:
        return self._call("GET", f"/v2/models/{model}/config")


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except (ValueError, OSError):
        return f"HTTP {exc.code} {exc.reason}"
