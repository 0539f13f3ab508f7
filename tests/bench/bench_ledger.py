"""Settlements per second on PostgreSQL with the ledger's locking: hold + capture of a job, the
way the relay does it, from several threads at once. Three ways to write a posting, alternating:
with its transaction's COMMIT in the same round trip (as a job's hold and settlement are shipped:
ledger_post_committing), in one statement with the COMMIT a round trip later (ledger_post, as
every other posting on PostgreSQL), and step by step (the portable path SQLite takes).

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


def _settle_loop(user, worker, count: int, commits: bool, errors: list):
    from django.db import connection, transaction

    from apps.credits.services import credits_hold_in_atomic, credits_settle_in_atomic

    try:
        for _ in range(count):
            reference = f"job:{uuid.uuid4()}"
            with transaction.atomic(durable=True):
                credits_hold_in_atomic(user=user, amount=150_000, reference=reference, commits=commits)
            with transaction.atomic(durable=True):
                credits_settle_in_atomic(user=user, held_amount=150_000, charge=123_400, worker=worker,
                                         reference=reference, commits=commits)
    except Exception as exc:  # reported, so a deadlock or lost update shows in the figures
        errors.append(repr(exc))
    finally:
        connection.close()


def run(mode: str, threads: int, per_thread: int, commits: bool) -> tuple[float, list]:
    from django.contrib.auth import get_user_model

    from apps.credits.services import (STAKERS_POOL_CODE, TREASURY_CODE, credits_grant, system_account,
                                       user_held_account, worker_account)
    from apps.workers.services import worker_register

    User = get_user_model()
    operator = User.objects.create(username=f"op-{mode}-{uuid.uuid4().hex[:6]}")
    worker, _ = worker_register(operator=operator, name="bench", tiers=["verified"])
    users = [User.objects.create(username=f"{mode}-{i}-{uuid.uuid4().hex[:6]}")
             for i in range(threads if mode == "spread" else 1)]
    for user in users:
        credits_grant(user=user, credits=1_000_000)
        user_held_account(user=user)  # every account exists, so a committing posting never refuses
    worker_account(worker=worker)
    for code in (STAKERS_POOL_CODE, TREASURY_CODE):
        system_account(code)
    errors: list = []
    pool = [threading.Thread(target=_settle_loop, args=(users[i % len(users)], worker, per_thread, commits, errors))
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

    print(f"hold + capture per job, {args.threads} threads x {args.per_thread} jobs, PostgreSQL; a posting with "
          "its COMMIT (as a job's are shipped), in one statement, or step by step (the portable path), alternating")
    ways = (("with COMMIT", {"postgresql"}, True), ("one statement", {"postgresql"}, False), ("step by step", set(), False))
    for round_ in range(args.rounds):
        for writes, vendors, commits in ways:
            ledger.ONE_STATEMENT_VENDORS = vendors
            for mode in ("spread", "hot"):
                rate, errors = run(mode, args.threads, args.per_thread, commits)
                print(f"round {round_ + 1}  {writes:13}  {mode:7} {rate:8.1f} settlements/s   errors: "
                      f"{len(errors)} {errors[:1]}", flush=True)
    problems = ledger_invariant_violations()
    print("ledger sound" if not problems else f"LEDGER VIOLATIONS: {problems[:3]}")


if __name__ == "__main__":
    main()
