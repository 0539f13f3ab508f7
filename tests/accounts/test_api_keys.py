"""API keys: issued once in plaintext, stored as a hash, authenticated, revoked."""

import hashlib

from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.accounts.selectors import api_key_authenticate, api_keys_list, bearer_token
from apps.accounts.services import api_key_issue, api_key_revoke


def test_a_key_is_stored_only_as_its_sha256(alice):
    api_key, raw_key = api_key_issue(user=alice, name="laptop")

    stored = ApiKey.objects.get(id=api_key.id)
    assert raw_key.startswith("pc_")
    assert stored.key_hash == hashlib.sha256(raw_key.encode()).hexdigest()
    assert stored.prefix == raw_key[:10]
    assert stored.name == "laptop"
    columns = ApiKey.objects.filter(id=api_key.id).values().get()
    assert all(raw_key not in str(value) for value in columns.values())


def test_every_key_issued_is_different(alice):
    keys = {api_key_issue(user=alice)[1] for _ in range(20)}

    assert len(keys) == 20
    assert all(len(key) >= 40 for key in keys)


def test_a_key_authenticates_its_user(alice, bob):
    _, alices_key = api_key_issue(user=alice)
    _, bobs_key = api_key_issue(user=bob)

    assert api_key_authenticate(raw_key=alices_key) == alice
    assert api_key_authenticate(raw_key=bobs_key) == bob


def test_authenticating_records_when_the_key_was_last_used(alice):
    api_key, raw_key = api_key_issue(user=alice)
    assert api_key.last_used_at is None

    api_key_authenticate(raw_key=raw_key)

    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
    assert (timezone.now() - api_key.last_used_at).total_seconds() < 60


def test_a_revoked_key_no_longer_authenticates(alice):
    api_key, raw_key = api_key_issue(user=alice)

    assert api_key_revoke(user=alice, key_id=api_key.id) is True

    assert api_key_authenticate(raw_key=raw_key) is None
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert api_key.is_active is False


def test_revoking_twice_is_a_no_op(alice):
    api_key, _ = api_key_issue(user=alice)
    api_key_revoke(user=alice, key_id=api_key.id)
    api_key.refresh_from_db()
    first_revoked_at = api_key.revoked_at

    assert api_key_revoke(user=alice, key_id=api_key.id) is False

    api_key.refresh_from_db()
    assert api_key.revoked_at == first_revoked_at


def test_mallory_cannot_revoke_alices_key(alice, mallory):
    api_key, raw_key = api_key_issue(user=alice)

    assert api_key_revoke(user=mallory, key_id=api_key.id) is False

    assert api_key_authenticate(raw_key=raw_key) == alice


def test_revoking_one_key_leaves_the_others_working(alice):
    first, first_raw = api_key_issue(user=alice, name="old")
    _, second_raw = api_key_issue(user=alice, name="new")

    api_key_revoke(user=alice, key_id=first.id)

    assert api_key_authenticate(raw_key=first_raw) is None
    assert api_key_authenticate(raw_key=second_raw) == alice


def test_unknown_or_garbage_keys_do_not_authenticate(alice):
    _, raw_key = api_key_issue(user=alice)

    for garbage in ["", "pc_", "pc_unknown", raw_key[:-1], raw_key + "x", raw_key.upper(),
                    raw_key[3:], "Bearer " + raw_key, "pc_" + "a" * 500, "\x00", "pc_\u2603"]:
        assert api_key_authenticate(raw_key=garbage) is None, garbage


def test_a_deactivated_users_key_does_not_authenticate(alice):
    _, raw_key = api_key_issue(user=alice)
    alice.is_active = False
    alice.save(update_fields=["is_active"])

    assert api_key_authenticate(raw_key=raw_key) is None


def test_the_bearer_token_is_read_from_an_authorization_header():
    assert bearer_token("Bearer pc_abc") == "pc_abc"
    assert bearer_token("bearer   pc_abc  ") == "pc_abc"
    assert bearer_token("Basic dXNlcjpwYXNz") == ""
    assert bearer_token("pc_abc") == ""
    assert bearer_token("") == ""
    assert bearer_token(None) == ""


def test_a_users_keys_are_listed_newest_first_and_only_theirs(alice, bob):
    first, _ = api_key_issue(user=alice, name="first")
    second, _ = api_key_issue(user=alice, name="second")
    api_key_issue(user=bob)

    assert list(api_keys_list(user=alice)) == [second, first]


def test_a_blank_key_name_becomes_default(alice):
    api_key, _ = api_key_issue(user=alice, name="")

    assert api_key.name == "default"
