from django.utils import timezone

from .models import ApiKey
from .services import KEY_PREFIX, api_key_hash


def api_key_authenticate(*, raw_key: str):
    """The active key's user, or None. Touches last_used_at at most once a minute."""
    if not api_key_well_formed(raw_key):
        return None
    api_key = (ApiKey.objects.select_related("user")
               .filter(key_hash=api_key_hash(raw_key), revoked_at__isnull=True).first())
    if api_key is None or not api_key.user.is_active:
        return None
    api_key_touch(key_id=api_key.id, last_used_at=api_key.last_used_at)
    return api_key.user


def api_key_well_formed(raw_key: str) -> bool:
    """Whether `raw_key` could be one of our keys (else it is refused without a lookup)."""
    return bool(raw_key) and raw_key.startswith(KEY_PREFIX) and len(raw_key) <= 100


def api_key_touch(*, key_id, last_used_at) -> None:
    """Record that the key was used, at most once a minute (a write per request would cost more
    than the request's own reads)."""
    now = timezone.now()
    if last_used_at is None or (now - last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(id=key_id).update(last_used_at=now)


def api_keys_list(*, user):
    return ApiKey.objects.filter(user=user)


def bearer_token(authorization: str) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
