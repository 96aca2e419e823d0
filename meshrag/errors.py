"""Domain errors shared by every layer.

Each error knows the HTTP status it maps to and, where it applies, the request
field at fault (a path such as ``documents[3].text``), so that api/errors.py can
render ``{"error": {"code", "message", "field"}}`` without knowing the modules.
"""

from __future__ import annotations


class MeshragError(Exception):
    """Base class: a failure we expected and can explain to the caller."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "field": self.field}


class ValidationError(MeshragError):
    """The request is malformed: wrong type, missing or unknown field, bad value."""

    status = 400
    code = "invalid_request"


class PayloadTooLarge(MeshragError):
    status = 413
    code = "payload_too_large"


class NotFound(MeshragError):
    status = 404
    code = "not_found"


class UnsupportedMediaType(MeshragError):
    status = 415
    code = "unsupported_media_type"


class Unavailable(MeshragError):
    """The node cannot serve this now (loading, overloaded); retry later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class GeneratorBusy(Unavailable):
    """The generator's admission queue is full."""

    code = "generator_busy"


class EmbedderBusy(Unavailable):
    """Every embedder's queue is full: nothing was embedded or written; retry after a while."""

    code = "embedder_busy"


class NotServedHere(MeshragError):
    """This node's roles do not include what the request needs (an embedder-only host got a search)."""

    status = 421
    code = "misdirected_request"


class ConfigError(MeshragError):
    """A configuration value is invalid; raised at start, never at request time."""

    code = "config_error"


class NotOwner(MeshragError):
    """A node asked to store a partition it neither owns nor is handing off (its ring
    differs from the sender's): the sender refreshes its ring and re-plans."""

    status = 409
    code = "not_owner"


class VersionAhead(MeshragError):
    """A version stamped further ahead of this node's clock than cluster.max_clock_drift_s."""

    status = 400
    code = "clock_drift"


class TooManyRequests(Unavailable):
    """This client already has as many requests in flight as it may (api.max_concurrent_per_client);
    nothing of this one was started. Retry-After says when to try again."""

    status = 429
    code = "too_many_requests"


class DeadlineExceeded(MeshragError):
    """The request ran past its server-side deadline (api.*_deadline_s) and was stopped."""

    status = 504
    code = "deadline_exceeded"
