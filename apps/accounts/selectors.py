from django.utils import timezone

from .models import ApiKey
from .services import KEY_PREFIX, api_key_hash


def api_key_authenticate(*, raw_key: str):
    """The active key's user, or None. Touches last_used_at at most once a minute."""
    if not raw_key or not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 100:
        return None
    api_key = (ApiKey.objects.select_related("user")
               .filter(key_hash=api_key_hash(raw_key), revoked_at__isnull=True).first())
    if api_key is None or not api_key.user.is_active:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(id=api_key.id).update(last_used_at=now)
    return api_key.user


def api_keys_list(*, user):
    return ApiKey.objects.filter(user=user)


def bearer_token(authorization: str) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
