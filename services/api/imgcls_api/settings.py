"""The API's settings, all of them: environment variables with defaults that work for
``make up``, parsed strictly in one place.

``Settings`` is the app's (``create_app``), ``ServerSettings`` gunicorn's (``gunicorn_conf.py``).
Each field is read from the environment variable of the same name, upper-cased. A value that
does not parse as the field's type, or is not one of its choices, stops the start with one line
naming the variable. ``tests/test_contract.py`` holds docker-compose.yml, the Helm values,
.env.example and the README's settings table to these defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from imgcls.contract import DEFAULT_MODELS, MAX_IMAGE_PIXELS
from imgcls.gateway.settings import GatewaySettings

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class EnvSettings:
    """``from_env``: a frozen dataclass's fields from the environment (strict), and checks."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None):
        """``TRITON_URL``, ``MODEL_NAME``, ``MAX_UPLOAD_MB``… (the field name, upper-cased)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name.upper(), getattr(cls, f.name), raw)
        return cls(**values)

    def __post_init__(self) -> None:
        for name, choices in self.CHOICES.items():
            value = getattr(self, name)
            if str(value).lower() not in choices:
                raise ValueError(f"{name.upper()}={value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class Settings(GatewaySettings, EnvSettings):
    """The gateway's settings (``imgcls.gateway.settings``: Triton, the model, time-outs,
    batching) and the API's own."""

    models: str = ",".join(DEFAULT_MODELS)  # what ?model= may choose (the default always)
    max_upload_mb: float = 20.0  # request bodies above this are a 413
    max_image_pixels: int = MAX_IMAGE_PIXELS  # decompression-bomb guard, checked before decoding
    max_batch_images: int = 32  # images per request
    max_in_flight: int = 0  # predictions at once per worker before a fast 429; 0 = no cap
    api_keys: str = ""  # comma-separated keys; "" and no api_keys_file = no authentication
    api_keys_file: str = ""  # a file of keys, one per line (a mounted secret)
    metrics_require_key: bool = False  # with keys on, /metrics needs one too
    api_log_level: str = "info"  # the API's JSON log and gunicorn's own
    low_confidence: float = 0.5  # top-1 probability below this counts as a low-confidence answer
    capture_dir: str = ""  # the capture store (answers, a sample of images, feedback); "" = off
    capture_rate: float = 0.1  # share of requests whose images are stored
    capture_max_mb: float = 1024.0  # the store's cap: oldest requests deleted beyond it
    feedback_per_minute: int = 30  # per client address and worker; beyond it a 429

    CHOICES: ClassVar = {"api_log_level": ("debug", "info", "warning", "error", "critical")}

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("low_confidence", "capture_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name.upper()}={getattr(self, name)!r} must be within 0–1")
        if self.capture_max_mb <= 0:
            raise ValueError(f"CAPTURE_MAX_MB={self.capture_max_mb!r} must be above 0")
        if self.feedback_per_minute < 1:
            raise ValueError("FEEDBACK_PER_MINUTE must be at least 1")

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The default model first, then MODELS, without repeats."""
        names = [self.model_name, *(m.strip() for m in self.models.split(","))]
        return tuple(dict.fromkeys(n for n in names if n))

    def override(self, mapping: dict[str, Any] | None) -> Settings:
        """Apply ``create_app(config=...)`` overrides given by field name (any case)."""
        if not mapping:
            return self
        known = {f.name for f in fields(self)}
        updates = {k.lower(): v for k, v in mapping.items()}
        unknown = sorted(set(updates) - known)
        if unknown:
            raise ValueError(f"unknown API setting(s): {', '.join(unknown)}")
        return replace(self, **updates)


@dataclass(frozen=True)
class ServerSettings(EnvSettings):
    """gunicorn's: how many workers of which kind serve the app, where."""

    api_bind: str = "0.0.0.0:5000"  # host:port gunicorn listens on
    web_concurrency: int = 1  # workers; add some when decoding needs more than a core
    api_worker_class: str = "gevent"  # gevent (one pooled Triton client) or gthread
    api_worker_connections: int = 1000  # gevent: connections per worker
    api_threads: int = 8  # gthread: threads per worker
    api_worker_timeout: int = 60  # a worker silent this long (seconds) is restarted
    api_access_log: str = ""  # gunicorn's own access log ("-": stdout); the app logs JSON

    CHOICES: ClassVar = {"api_worker_class": ("gevent", "gthread", "sync")}

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("web_concurrency", "api_threads", "api_worker_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1")


def _parse(name: str, default: Any, raw: str) -> Any:
    """``raw`` as the type of ``default``; booleans accept 1/0, true/false, yes/no, on/off."""
    if isinstance(default, bool):
        word = raw.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError(f"{name}={raw!r} is not a boolean (true/false, 1/0, yes/no, on/off)")
    try:
        return type(default)(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
