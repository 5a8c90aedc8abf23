"""Who is calling: the tenant behind the API key a request presents, as FastAPI dependencies (the HTTP
side of `app/api_keys.py`, which keeps the keys and runs without a web framework, in the CLI too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model.tasks import TaskInputError

from .api_keys import PUBLIC_TENANT, resolve_priority
from .errors import ApiError
from .state import KeyRing, ServerSettings

INVALID_KEY = "the API key is not valid (wrong or revoked)"
bearer = HTTPBearer(auto_error=False, description="An API key made with `onediffusion keys create --tenant NAME`")


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    priority: Optional[int] = None  # the key's: its requests' default and ceiling (None: 0, up to MAX_PRIORITY)

    def job_priority(self, requested: Optional[int], field: str = "priority") -> int:
        """The priority a request of this caller runs at (app/api_keys.py `resolve_priority`); asking for more
        than the key allows is a 422 naming `field`."""
        try:
            return resolve_priority(requested, self.priority)
        except ValueError as exc:
            raise TaskInputError(field, str(exc)) from None


def _unauthorized(message: str, error: Optional[str] = None) -> ApiError:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": challenge})


def optional_caller(settings: ServerSettings, keystore: KeyRing,
                    credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> Optional[Caller]:
    """The caller, or None when no key was sent (a wrong or revoked key is still a 401)."""
    if settings.auth_disabled:
        return Caller(PUBLIC_TENANT, "anonymous")
    if credentials is None:
        return None
    key = keystore.authenticate(credentials.credentials)
    if key is None:
        raise _unauthorized(INVALID_KEY, "invalid_token")
    return Caller(key.tenant, key.key_id, key.priority)


def require_caller(caller: Optional[Caller] = Depends(optional_caller)) -> Caller:
    if caller is None:
        raise _unauthorized("send an API key: Authorization: Bearer <key>")
    return caller


def admit(settings, keystore, jobs, credentials: Optional[HTTPAuthorizationCredentials],
          idempotency_key: Optional[str], new_jobs: int = 1) -> tuple[Caller, bool]:
    """A submission's caller and its precheck (app/quotas.py; True: a replay) in one round trip: the key is
    looked up inside the precheck script, which counts nothing for a key that is unknown, revoked or wrong.
    The answers are those of `require_caller` then `JobService.precheck`: a 401 before any 429."""
    if settings.auth_disabled or credentials is None:
        caller = require_caller(optional_caller(settings, keystore, credentials))
        return caller, jobs.precheck(caller.tenant, caller.key_id, idempotency_key, new_jobs)
    parts = keystore.split(credentials.credentials)
    if parts is None:
        raise _unauthorized(INVALID_KEY, "invalid_token")
    key_id, secret = parts
    digest = keystore.digest(secret)
    decision, raw = jobs.quotas.precheck_keyed(keystore.hash_key, key_id, digest, idempotency_key, new_jobs)
    key = keystore.verified(key_id, raw, digest)
    if key is None:
        raise _unauthorized(INVALID_KEY, "invalid_token")
    jobs.quotas.refuse(decision)
    return Caller(key.tenant, key.key_id, key.priority), decision.outcome == "replay"
