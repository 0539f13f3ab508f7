"""Fixtures for the worker agent's tests. Nothing here touches Django: the worker never does."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from worker.backends import Finish, Request


# The worker needs neither PostgreSQL, Redis nor Django settings. These override, for the
# tests below this directory only, the suite-wide autouse fixtures of tests/conftest.py that
# read Django settings, so `pytest tests/worker -p no:django` runs on a bare agent install.
@pytest.fixture(scope="session", autouse=True)
def _real_services_only():
    """No database or Redis check: nothing here uses them."""


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    """No password hashing here."""


@pytest.fixture(autouse=True)
def _fresh_routing_roster():
    """No node, so no routing roster here."""


@dataclass
class Generation:
    text: str
    pieces: list[str]
    finish: Finish


def _load(threads: int) -> Any:
    pytest.importorskip("llama_cpp")
    from worker.backends.builtin import BuiltinBackend

    return BuiltinBackend.load(None, n_threads=threads)


@pytest.fixture(scope="session")
def backend() -> Any:
    """The real builtin model, loaded once for the whole session (2 threads)."""
    return _load(2)


@pytest.fixture(scope="session")
def backend_one_thread() -> Any:
    return _load(1)


def run_generation(backend: Any, prompt: str | Request, params: dict[str, Any],
                   cancel: threading.Event | None = None,
                   on_piece: Callable[[int], None] | None = None,
                   model_id: str | None = None) -> Generation:
    """Run one generation to its end. A str is a raw prompt; the model defaults to the first."""
    pieces: list[str] = []
    finish: Finish | None = None
    request = prompt if isinstance(prompt, Request) else Request(prompt=prompt)
    model_id = model_id or backend.models[0].id
    for item in backend.generate(model_id, request, params, cancel or threading.Event()):
        if isinstance(item, Finish):
            assert finish is None, "a generation ends with exactly one Finish"
            finish = item
        else:
            assert finish is None, "no text after the Finish"
            pieces.append(item)
            if on_piece is not None:
                on_piece(len(pieces))
    assert finish is not None, "a generation always ends with a Finish"
    return Generation("".join(pieces), pieces, finish)


@pytest.fixture(scope="session")
def generate() -> Callable[..., Generation]:
    return run_generation
