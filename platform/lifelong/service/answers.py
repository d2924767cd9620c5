"""How the service's outcomes become HTTP answers: status codes and JSON bodies (no Ray)."""

from __future__ import annotations

from lifelong.errors import (BadRequestError, DurabilityError, InvalidLabelError,
                             InvalidQueryError, LifelongError, RequestInProgressError,
                             ShardUnavailableError)


def error_answer(exc: BaseException, retry_after_s: int) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of an error.

    - ``BadRequestError``: its status (400, 404, 405, 409, 413); nothing was changed.
    - a shard that does not answer, a failed sync, a request id being applied by another
      call, Ray's actor errors: 503 with ``Retry-After``: nothing was answered wrongly, and the
      same request (same request id) may be sent again.
    - anything else: 500.
    """
    kind = type(exc).__name__
    if isinstance(exc, BadRequestError):
        return exc.status, {"error": kind, "message": str(exc)}, {}
    if isinstance(exc, (InvalidQueryError, InvalidLabelError)):
        return 400, {"error": kind, "message": str(exc)}, {}
    if isinstance(exc, (ShardUnavailableError, DurabilityError, RequestInProgressError)) or \
            _is_ray_unavailable(exc):
        return 503, {"error": kind, "message": str(exc) or kind,
                     "retry_after_s": retry_after_s}, {"Retry-After": str(retry_after_s)}
    if isinstance(exc, LifelongError):
        return 500, {"error": kind, "message": str(exc)}, {}
    return 500, {"error": kind, "message": f"internal error: {exc}"}, {}


def _is_ray_unavailable(exc: BaseException) -> bool:
    """Ray's errors of an actor that died, is restarting or did not answer (by module name:
    this module does not import Ray)."""
    module = type(exc).__module__ or ""
    return module.startswith("ray.") and type(exc).__name__ in (
        "ActorDiedError", "ActorUnavailableError", "RayActorError", "GetTimeoutError",
        "ActorUnschedulableError", "NodeDiedError", "ObjectLostError", "OwnerDiedError")
