"""The treasury console: staff only, figures straight from the ledger, htmx partial refresh."""

import pytest

from apps.credits.services import credits_grant

pytestmark = pytest.mark.django_db


def test_only_staff_see_the_treasury(client, alice):
    client.force_login(alice)
    response = client.get("/treasury/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_see_figures_from_the_ledger_and_htmx_gets_only_the_figures(client, carol):
    carol.is_staff = True
    carol.save(update_fields=["is_staff"])
    credits_grant(user=carol, credits=7)
    client.force_login(carol)
    page = client.get("/treasury/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Promotional credits granted" in body and "70,000" in body and 'hx-trigger="every 5s"' in body
    partial = client.get("/treasury/", headers={"HX-Request": "true"}).content.decode()
    assert "70,000" in partial and "<html" not in partial


def test_ledger_admin_is_read_only(client, carol):
    carol.is_staff = carol.is_superuser = True
    carol.save(update_fields=["is_staff", "is_superuser"])
    credits_grant(user=carol, credits=1)
    client.force_login(carol)
    assert client.get("/admin/credits/ledgertransaction/").status_code == 200
    assert client.get("/admin/credits/ledgertransaction/add/").status_code == 403
