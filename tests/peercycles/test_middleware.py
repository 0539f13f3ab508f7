"""Django's middleware as the node runs it (peercycles/middleware.py): the /v1 API pays no thread
hop for it and gets no session or cookie; the site's pages keep sessions, CSRF and sign-in."""

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client, RequestFactory
from django.utils import deprecation

from apps.accounts.services import api_key_issue
from peercycles import middleware

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hops(monkeypatch):
    """Counts the hooks Django's MiddlewareMixin sends to a thread (sync_to_async) under ASGI,
    and the CSRF view hook ours sends."""
    counted = []

    def counting(func, *args, **kwargs):
        counted.append(getattr(func, "__qualname__", repr(func)))
        return real(func, *args, **kwargs)

    real = deprecation.sync_to_async
    monkeypatch.setattr(deprecation, "sync_to_async", counting)
    monkeypatch.setattr(middleware, "sync_to_async", counting)
    return counted


async def test_an_api_call_pays_no_thread_hop_for_middleware_and_gets_no_cookie(alice, hops):
    key = (await database_sync_to_async(api_key_issue)(user=alice))[1]
    response = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert hops == []
    assert response["X-Content-Type-Options"] == "nosniff"  # the security headers still apply
    assert response["X-Frame-Options"] == "DENY"
    assert "Cookie" not in response.get("Vary", "")
    assert not response.cookies


async def test_a_page_still_goes_through_sessions_and_csrf_in_threads(hops):
    response = await AsyncClient().get("/accounts/login/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    assert response["X-Content-Type-Options"] == "nosniff"
    hopped = " ".join(hops)
    assert "SessionMiddleware.process_response" in hopped and "CsrfViewMiddleware.process_view" in hopped
    assert "SecurityMiddleware" not in hopped  # its hooks run on the event loop


def test_a_page_post_without_a_csrf_token_is_refused_by_the_sync_stack():
    response = Client(enforce_csrf_checks=True).post("/accounts/login/", {"login": "alice", "password": "x"})
    assert response.status_code == 403


async def test_a_page_post_without_a_csrf_token_is_refused_by_the_async_stack():
    response = await AsyncClient(enforce_csrf_checks=True).post("/accounts/login/", {"login": "alice", "password": "x"})
    assert response.status_code == 403


def test_the_api_paths_are_sessionless_but_the_job_pages_a_signed_in_owner_opens_are_not():
    factory = RequestFactory()
    assert middleware.is_sessionless(factory.post("/v1/chat/completions"))
    assert middleware.is_sessionless(factory.get("/v1/models"))
    assert not middleware.is_sessionless(factory.get("/v1/jobs/8f7e61c2-0d7a-4a57-9b1e-5b0a1f0a9c11/proof"))
    assert not middleware.is_sessionless(factory.get("/chat/"))
