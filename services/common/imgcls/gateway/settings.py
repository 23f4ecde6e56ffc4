"""What the gateway needs to know: where Triton is, which model and version, how long to wait,
how much to batch. The API's ``Settings`` (``imgcls_api.settings``) are these and its own, read
from the environment; the batch job makes them from its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcls.contract import DEFAULT_MODEL


@dataclass(frozen=True)
class GatewaySettings:
    triton_url: str = "127.0.0.1:8000"  # host:port of Triton's HTTP endpoint
    model_name: str = DEFAULT_MODEL  # the default model
    model_version: str = ""  # "" = whatever Triton serves as latest
    triton_timeout_s: float = 10.0  # an inference slower than this is a 504
    connect_timeout_s: float = 2.0  # an unreachable Triton is a fast 503
    model_info_ttl_s: float = 5.0  # re-read the model's routing (versions, canary share) this often
    retry_after_s: int = 2  # Retry-After header on 503 and 429
    batch_slots: int = 2  # Triton calls at once per model and worker; 0 = one per request
    mirror_max_pending: int = (
        16  # canary/shadow comparison calls at once per worker; beyond: skipped
    )
