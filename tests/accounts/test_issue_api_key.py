"""`manage.py issue_api_key USERNAME [--credits N]`: prints only the key, so scripts can capture it."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from apps.accounts.models import ApiKey
from apps.accounts.selectors import api_key_authenticate
from apps.credits.models import LedgerTransaction
from apps.credits.selectors import balance_get


def _issue(*args) -> str:
    out = io.StringIO()
    call_command("issue_api_key", *args, stdout=out)
    return out.getvalue()


def test_it_prints_exactly_one_line_which_is_the_key(db):
    output = _issue("dave", "--credits", "5")

    lines = output.splitlines()
    assert len(lines) == 1
    assert output == lines[0] + "\n"
    key = lines[0]
    assert key.startswith("pc_")
    dave = get_user_model().objects.get(username="dave")
    assert api_key_authenticate(raw_key=key) == dave


def test_it_creates_the_user_and_grants_the_credits(db):
    _issue("dave", "--credits", "5")

    dave = get_user_model().objects.get(username="dave")
    assert balance_get(user=dave) == 50_000
    assert LedgerTransaction.objects.filter(kind="grant").count() == 1
    assert ApiKey.objects.get(user=dave).name == "cli"


def test_running_it_again_adds_a_second_key_and_more_credits(db):
    first = _issue("dave", "--credits", "5").strip()
    second = _issue("dave", "--credits", "3", "--name", "ci").strip()

    dave = get_user_model().objects.get(username="dave")
    assert get_user_model().objects.filter(username="dave").count() == 1
    assert first != second
    assert api_key_authenticate(raw_key=first) == dave
    assert api_key_authenticate(raw_key=second) == dave
    assert sorted(ApiKey.objects.filter(user=dave).values_list("name", flat=True)) == ["ci", "cli"]
    assert balance_get(user=dave) == 80_000


def test_without_credits_it_issues_a_key_and_grants_nothing(db):
    key = _issue("erin").strip()

    erin = get_user_model().objects.get(username="erin")
    assert api_key_authenticate(raw_key=key) == erin
    assert balance_get(user=erin) == 0
    assert not LedgerTransaction.objects.exists()


def test_it_issues_a_key_for_an_existing_user(alice):
    key = _issue("alice", "--credits", "1").strip()

    assert api_key_authenticate(raw_key=key) == alice
    assert balance_get(user=alice) == 10_000


def test_negative_credits_are_refused_and_nothing_is_created(db):
    with pytest.raises(CommandError):
        _issue("dave", "--credits", "-1")

    assert not get_user_model().objects.filter(username="dave").exists()
    assert not ApiKey.objects.exists()
    assert not LedgerTransaction.objects.exists()
