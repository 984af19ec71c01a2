"""Refusals in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the status that fits.

The official clients raise by status (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, 413, 429 RateLimitError, ...) and show `message`, so every
refusal says what was wrong and, where it can, what would be right.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}


class APIError(Exception):
    """A request the server refuses, and how to say so."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param, code)
