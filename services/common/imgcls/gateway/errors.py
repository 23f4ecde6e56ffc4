"""The serving errors: what a client of the gateway (the API's routes, the batch job) can act on.

The API answers each as JSON ``{"error": {"code", "message"}}`` with its status
(``imgcls_api.errors``); the batch job writes its ``code`` in the row of the file it concerns.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error a client can act on; ``code`` is stable, ``message`` is for humans."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)
