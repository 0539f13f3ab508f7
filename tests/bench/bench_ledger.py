"""Settlements per second on PostgreSQL with the ledger's locking: hold + capture of a job, the
way the relay does it, from several threads at once.

  spread  every thread settles jobs of its own user (only the system accounts are shared)
  hot     every thread settles jobs of one user (its credit and held accounts are shared too)

Every capture also credits the treasury and stakers' pool, so those two rows are hot in both.
Run: DATABASE_URL=postgres://postgres@127.0.0.1:5432/peercycles_bench .venv/bin/python tests/bench/bench_ledger.py
(the database is created if missing; its ledger tables are emptied first)
"""

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peercycles.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/peercycles_bench")


def _prepare():
    import django
    from django.core.management import call_command
    from django.db import connection

    dsn = os.environ["DATABASE_URL"]
    name = dsn.rsplit("/", 1)[1]
    import psycopg
    with psycopg.connect(dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        if not admin.execute("select 1 from pg_database where datname=%s", (name,)).fetchone():
            admin.execute(f'create database "{name}"')
    django.setup()
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE credits_ledgerentry, credits_ledgertransaction, credits_ledgeraccount, "
                       "workers_worker, auth_user CASCADE")


def _settle_loop(user, worker, count: int, errors: list):
    from django.db import connection, transaction

    from apps.credits.services import credits_hold_in_atomic, credits_settle_in_atomic

    try:
        for _ in range(count):
            reference = f"job:{uuid.uuid4()}"
            with transaction.atomic(durable=True):
                credits_hold_in_atomic(user=user, amount=150_000, reference=reference)
            with transaction.atomic(durable=True):
                credits_settle_in_atomic(user=user, held_amount=150_000, charge=123_400, worker=worker,
                                         reference=reference)
    except Exception as exc:  # reported, so a deadlock or lost update shows in the figures
        errors.append(repr(exc))
    finally:
        connection.close()


def run(mode: str, threads: int, per_thread: int) -> tuple[float, list]:
    from django.contrib.auth import get_user_model

    from apps.credits.services import credits_grant
    from apps.workers.services import worker_register

    User = get_user_model()
    operator = User.objects.create(username=f"op-{mode}-{uuid.uuid4().hex[:6]}")
    worker, _ = worker_register(operator=operator, name="bench", tiers=["verified"])
    users = [User.objects.create(username=f"{mode}-{i}-{uuid.uuid4().hex[:6]}")
             for i in range(threads if mode == "spread" else 1)]
    for user in users:
        credits_grant(user=user, credits=1_000_000)
    errors: list = []
    pool = [threading.Thread(target=_settle_loop, args=(users[i % len(users)], worker, per_thread, errors))
            for i in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return threads * per_thread / (time.perf_counter() - started), errors


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--per-thread", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    _prepare()
    from apps.credits.selectors import ledger_invariant_violations

    from apps.credits import ledger

    print(f"hold + capture per job, {args.threads} threads x {args.per_thread} jobs, PostgreSQL; a posting's "
          "writes in one statement (as shipped) or in four (the portable path SQLite takes), alternating")
    for round_ in range(args.rounds):
        for writes, vendors in (("one statement", {"postgresql"}), ("four", set())):
            ledger.ONE_STATEMENT_VENDORS = vendors
            for mode in ("spread", "hot"):
                rate, errors = run(mode, args.threads, args.per_thread)
                print(f"round {round_ + 1}  {writes:13}  {mode:7} {rate:8.1f} settlements/s   errors: "
                      f"{len(errors)} {errors[:1]}", flush=True)
    problems = ledger_invariant_violations()
    print("ledger sound" if not problems else f"LEDGER VIOLATIONS: {problems[:3]}")


if __name__ == "__main__":
    main()
