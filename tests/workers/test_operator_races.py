"""A hello that races a revocation or a rotation on PostgreSQL: the revocation's disconnect goes to
the link it saw, so a hello that slipped past the token check must be refused under the row lock."""

import threading
import time

import pytest
from django.db import connection, transaction

from apps.workers.models import Worker
from apps.workers.services import (WorkerAuthError, worker_connect, worker_register, worker_revoke,
                                   worker_token_rotate)
from worker import protocol

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = {"id": "gemma-3-270m-q4_k_m", "digest": "sha256:" + "ab" * 32, "backend": "builtin"}
HELLO = protocol.hello(token="", agent_version="test", models=[MODEL], backends=["builtin"], hardware={})


def _while_the_row_is_locked(worker_id, change):
    """Lock the worker's row in another thread, change it, and commit half a second later."""
    locked = threading.Event()

    def run():
        try:
            with transaction.atomic():
                Worker.objects.select_for_update().get(id=worker_id)
                change()
                locked.set()
                time.sleep(0.5)  # the hello in the main thread is waiting on this lock by now
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert locked.wait(5)
    return thread


def test_a_hello_racing_a_revocation_is_refused(bob):
    worker, token = worker_register(operator=bob, name="bob-cpu", tiers=["open"])
    thread = _while_the_row_is_locked(worker.id, lambda: worker_revoke(worker_id=worker.id))

    with pytest.raises(WorkerAuthError) as refused:
        worker_connect(raw_token=token, hello=HELLO, channel_name="specific.a!b")
    thread.join()

    assert refused.value.code == "revoked"
    assert Worker.objects.get(id=worker.id).channel_name == ""


def test_a_hello_with_the_old_token_racing_a_rotation_is_refused(bob):
    worker, token = worker_register(operator=bob, name="bob-cpu", tiers=["open"])
    thread = _while_the_row_is_locked(worker.id, lambda: worker_token_rotate(worker_id=worker.id))

    with pytest.raises(WorkerAuthError) as refused:
        worker_connect(raw_token=token, hello=HELLO, channel_name="specific.a!b")
    thread.join()

    assert refused.value.code == "bad_token"
    assert Worker.objects.get(id=worker.id).channel_name == ""
