"""A confidential chat in a real browser: the page attests the (simulated) enclave itself, seals
the message with HPKE (@hpke/core), and opens the sealed answer; the request on the wire and the
node's database hold ciphertext only. Debian's Chromium, headless, driven by Playwright; a real
node and the bundled agent with its enclave process."""

import json
import uuid

import pytest
from django.contrib.auth import get_user_model

from apps.credits.services import credits_grant
from apps.marketplace.models import Job

from .browser_support import browser, in_thread, send_message, sign_up  # noqa: F401
from .confidential_support import database_holds, enclave_agent
from .conftest import OUTPUT, running_node

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def confidential_node(django_db_setup, django_db_blocker):
    with running_node("chat-confidential-node.log", PEER_ALLOW_SIMULATED_ENCLAVE="1") as url:
        yield url


@pytest.fixture
def enclave(confidential_node, catalogue, bob):
    with enclave_agent(confidential_node, bob, catalogue["path"], "bob-browser-enclave") as running:
        yield running


def test_a_confidential_message_is_sealed_in_the_page_and_its_answer_opened_there(confidential_node, enclave,
                                                                                 browser):
    secret = f"OCTOPUS-{uuid.uuid4().hex[:8]}"
    page = browser.new_page()
    sent_frames, console = [], []
    page.on("websocket", lambda socket: socket.on("framesent", lambda payload: sent_frames.append(payload)))
    page.on("pageerror", lambda error: console.append(str(error)))
    page.on("response", lambda response: response.status >= 400 and not response.url.endswith("/favicon.ico")
            and console.append(f"{response.status} {response.url}"))
    sign_up(page, confidential_node, "frank@example.org")
    user = in_thread(lambda: get_user_model().objects.get(email="frank@example.org"))
    in_thread(credits_grant, user=user, credits=500)

    page.goto(f"{confidential_node}/chat/")
    page.get_by_label("Tier").select_option("confidential")
    send_message(page, f"Say hello. The code word is {secret}.")
    answer = page.locator(".message.assistant").last
    try:
        answer.locator(".meta .verified, .meta .unverified").wait_for(timeout=120_000)
    finally:
        page.screenshot(path=OUTPUT / "chat-confidential.png")
    assert not console, console  # no script error, no failed request

    assert answer.locator(".verified").inner_text().startswith(" · sealed · enclave signature verified in this page")
    assert "simulated" in answer.locator(".verified").inner_text()
    assert answer.locator(".text").inner_text().strip()  # opened in the page
    sends = [json.loads(frame) for frame in sent_frames if '"send"' in frame]
    assert len(sends) == 1 and "content" not in sends[0] and sends[0]["peer_sealed"]["request"]["ciphertext"]
    assert all(secret not in frame for frame in sent_frames)  # nothing left the page in the clear
    job = in_thread(lambda: Job.objects.get(tier="confidential"))
    assert job.status == "completed" and job.messages == [] and job.commitment["enclave_signature"]
    assert in_thread(database_holds, text=secret) == []
