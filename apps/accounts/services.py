import hashlib
import secrets

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .models import ApiKey

KEY_PREFIX = "pc_"


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def api_key_issue(*, user, name: str = "default") -> tuple[ApiKey, str]:
    """Create a key and return it with its only plaintext copy, which the caller shows once."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(user=user, name=name[:100] or "default",
                                    prefix=raw_key[:10], key_hash=api_key_hash(raw_key))
    return api_key, raw_key


def api_key_revoke(*, user, key_id: int) -> bool:
    """Revoke one of the user's keys; a conditional update makes a repeat a no-op."""
    updated = ApiKey.objects.filter(id=key_id, user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now())
    return updated == 1


def api_keys_revoke_named(*, user, name: str) -> int:
    return ApiKey.objects.filter(user=user, name=name, revoked_at__isnull=True).update(revoked_at=timezone.now())


def user_get_or_create(*, username: str):
    User = get_user_model()
    with transaction.atomic():
        user, _ = User.objects.get_or_create(
            username=username, defaults={"email": f"{username}@example.invalid" if "@" not in username else username})
    return user
