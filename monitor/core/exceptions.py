"""Domain errors. Each carries its HTTP status; the API renders them as problem objects."""

from __future__ import annotations


class EnvmonError(Exception):
    status_code = 500
    title = "Internal error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(EnvmonError):
    status_code = 404
    title = "Not found"


class Conflict(EnvmonError):
    status_code = 409
    title = "Conflict"


class InvalidInput(EnvmonError):
    status_code = 422
    title = "Invalid input"
