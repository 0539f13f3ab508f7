"""Run callables in real threads released together, each with its own database connection:
how the concurrency tests make transactions actually race on PostgreSQL."""

import threading

from django.db import connection


def run_at_once(target, count: int, *, release_together: bool = True) -> list:
    """Run target(i) in `count` threads; return what each returned or raised, in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(index):
        try:
            if release_together:
                barrier.wait(timeout=10)
            results[index] = target(index)
        except BaseException as exc:  # noqa: BLE001 - the test inspects what each thread got
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck (deadlock?)"
    return results
