"""The web chat in a real browser: Debian's Chromium, headless, driven by Playwright, against the
real node (daphne) and a real agent running the built-in model. Each test saves screenshots under
test-output/.

Sign up, meet "buy credits" with no credits, get credits, send with the keyboard, watch the answer
arrive in pieces, see its cost and proof, and stop a long answer midway (the stop test's agent
serves a mock OpenAI-compatible server that writes at a steady pace instead: the built-in model
may finish its answer before a click lands).
"""

import time

import pytest
from django.contrib.auth import get_user_model

from apps.credits.pricing import credits_to_micro
from apps.credits.selectors import balance_get, held_get, ledger_invariant_violations
from apps.credits.services import credits_grant
from apps.marketplace.models import Job
from apps.workers.models import Worker
from tests.support.mock_backends import MockOpenAI

from .browser_support import browser, in_thread, send_message, sign_up  # noqa: F401
from .conftest import OUTPUT, wait_for_status
from .faults_support import PUBLIC_NAME, http_agent, mock_catalogue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


_RECORD_ANSWER_LENGTHS = """() => {
    // Every change to the last answer's text, recorded in the page as it happens: polling from
    // the test could miss pieces that arrive between two polls on a fast machine.
    window.answerLengths = [];
    new MutationObserver(() => {
        const answers = document.querySelectorAll(".message.assistant .text");
        if (answers.length) window.answerLengths.push(answers[answers.length - 1].textContent.length);
    }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


def _answer_lengths(page, timeout=120.0):
    """How long the streamed answer was after each change to it, until its cost line appears.
    Call _RECORD_ANSWER_LENGTHS in the page before sending."""
    answer = page.locator(".message.assistant").last
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer.locator(".meta").count():
            return page.evaluate("window.answerLengths")
        time.sleep(0.05)
    raise AssertionError(f"no answer finished in {timeout}s; lengths seen {page.evaluate('window.answerLengths')[-5:]}")


def test_sign_up_buy_credits_then_chat_streams_with_cost_and_proof(node_url, catalogue, agent_process, browser):
    page = browser.new_page()
    sign_up(page, node_url, "carol@example.org")

    page.goto(f"{node_url}/chat/")
    page.get_by_label("Tier").select_option("open")
    send_message(page, "Hello!")
    page.locator("#payment").wait_for(state="visible", timeout=30_000)
    assert "quoted at" in page.locator("#payment").inner_text()
    page.get_by_role("button", name="Buy 10 USDC of credits").click()
    page.locator("#payment div").wait_for(timeout=30_000)  # the node's instructions (or why it has none)
    page.screenshot(path=OUTPUT / "chat-buy-credits.png")

    user = in_thread(lambda: get_user_model().objects.get(email="carol@example.org"))
    in_thread(credits_grant, user=user, credits=500, memo="test: stands in for a USDC deposit")
    page.reload()
    page.get_by_label("Tier").select_option("open")
    page.evaluate(_RECORD_ANSWER_LENGTHS)
    send_message(page, "Count from 1 to 20, separated by commas.")
    lengths = _answer_lengths(page)
    page.screenshot(path=OUTPUT / "chat-streamed.png")

    growing = [n for n in dict.fromkeys(lengths) if n > 0]
    # It arrived in pieces, in order: one per token the model produced, up to three (a small
    # model's answer is sometimes only a word or two).
    tokens = in_thread(lambda: Job.objects.filter(user=user).latest("id").completion_tokens)
    assert len(growing) >= min(3, tokens) and growing == sorted(growing), (lengths, tokens)
    answer = page.locator(".message.assistant").last
    assert "credits" in answer.locator(".meta").inner_text()
    assert answer.locator(".meta a", has_text="proof").get_attribute("href").startswith("/v1/jobs/")
    assert int(page.locator("#balance").inner_text()) < 500
    answer.locator(".meta a", has_text="proof").click()  # one click away, signed in: no API key needed
    proof = page.locator("body").inner_text()
    assert '"object": "peer.proof"' in proof or '"object":"peer.proof"' in proof, proof[:300]
    page.go_back()
    assert page.url.startswith(f"{node_url}/chat/") and page.url.rstrip("/").split("/")[-1].isdigit()


def test_stop_ends_a_long_answer_midway_and_charges_what_was_delivered(node_url, bob_worker, browser):
    # The real agent, over its `openai` backend, in front of a mock server that writes a long
    # answer at a steady 20 words a second: the built-in model sometimes ends its "long story"
    # before the click lands, which made this test a race it could lose.
    in_thread(mock_catalogue)
    worker, token = bob_worker
    page = browser.new_page()
    sign_up(page, node_url, "dave@example.org")
    user = in_thread(lambda: get_user_model().objects.get(email="dave@example.org"))
    in_thread(credits_grant, user=user, credits=500)
    long_text = " ".join(f"word{n}" for n in range(1000))
    with MockOpenAI(tokens_per_second=20, text=long_text) as backend, http_agent(node_url, token, backend.url):
        in_thread(lambda: wait_for_status(worker.id, Worker.Status.IDLE))
        page.goto(f"{node_url}/chat/")
        page.get_by_label("Model").select_option(PUBLIC_NAME)
        page.get_by_label("Tier").select_option("open")

        send_message(page, "Write a very long story about a lighthouse keeper, in many chapters.")
        answer = page.locator(".message.assistant").last
        answer.locator(".text").filter(has_text="word3").wait_for(timeout=60_000)  # some words arrived
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("Stopped.").wait_for(timeout=30_000)
        stopped_at = answer.locator(".text").inner_text()
        assert backend.disconnected.wait(10)  # the stop reached the inference server
        time.sleep(1.0)
        page.screenshot(path=OUTPUT / "chat-stopped.png")

        assert answer.locator(".text").inner_text() == stopped_at  # nothing more came
        assert page.get_by_role("button", name="Send").is_enabled()
        assert not page.get_by_role("button", name="Stop").is_visible()
        assert "credits" in answer.locator(".meta").inner_text()
    job = in_thread(lambda: Job.objects.get(user=user))
    assert job.output_text.strip() == stopped_at.strip()  # the page showed what the node kept
    assert 4 <= len(job.output_text.split()) < job.params["max_tokens"], job.output_text  # midway
    # Charged for what was delivered: with no tokenizer for the mock the node counts the relayed
    # text at 4 bytes a token; the hold was captured once and the rest released.
    assert (job.status, job.finish_reason, job.hold_state) == ("completed", "cancelled", "captured"), job
    assert job.completion_tokens == -(-len(job.output_text.encode()) // 4)
    assert 0 < job.charged_amount < job.hold_amount
    assert in_thread(lambda: balance_get(user=user)) == credits_to_micro(500) - job.charged_amount
    assert in_thread(lambda: held_get(user=user)) == 0
    assert in_thread(ledger_invariant_violations) == []


def test_the_page_has_labelled_controls(node_url, catalogue, browser):
    page = browser.new_page()
    sign_up(page, node_url, "erin@example.org")
    page.goto(f"{node_url}/chat/")

    for label in ("Model", "Tier", "Message"):
        assert page.get_by_label(label).count() == 1, label
    assert page.get_by_role("button", name="Send").is_visible()
    assert page.get_by_role("link", name="New conversation").is_visible()


def test_on_this_device_the_answer_is_made_in_the_tab_and_nothing_is_sent(node_url, catalogue, browser):
    page = browser.new_page()
    sign_up(page, node_url, "ivan@example.org")
    secret = "a private note about my knee"
    sent, posted = [], []
    page.on("websocket", lambda socket: socket.on("framesent", lambda payload: sent.append(payload)))
    page.on("request", lambda request: posted.append(request.post_data or ""))
    page.goto(f"{node_url}/chat/")
    page.get_by_label("Tier").select_option("device")

    send_message(page, f"Say hello. {secret}")
    answer = page.locator(".message.assistant").last
    answer.locator(".meta").wait_for(timeout=180_000)
    page.screenshot(path=OUTPUT / "chat-on-device.png")

    assert answer.locator(".text").inner_text().strip()
    assert "nothing left the browser" in answer.locator(".meta").inner_text()
    assert not any(secret in frame for frame in sent) and not any(secret in body for body in posted)
    assert in_thread(lambda: Job.objects.count()) == 0  # the node ran nothing
