"""Browser tests' helpers: Debian's Chromium driven by Playwright (headless), signing up, sending a
chat message with the keyboard, and running ORM calls off Playwright's thread."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def in_thread(function, **kwargs):
    """Run an ORM call off Playwright's thread, whose event loop Django would refuse to share.
    The thread's database connection is closed after it, or the test database could not be
    dropped at the end of the run."""
    def call():
        try:
            return function(**kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


@pytest.fixture
def browser():
    """Per test, and set up after the database fixtures: while Playwright runs, its event loop
    is this thread's, and Django refuses ORM calls here (in_thread runs them elsewhere)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: the test setup installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def sign_up(page, node_url, email):
    page.goto(f"{node_url}/accounts/signup/")
    page.get_by_label("Email").fill(email)
    page.locator("input[name=password1]").fill("a long enough passphrase 42")
    page.locator("input[name=password2]").fill("a long enough passphrase 42")
    page.locator("form button[type=submit], form input[type=submit]").last.click()
    page.wait_for_url(f"{node_url}/account/")


def send_message(page, text):
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")  # the keyboard sends
