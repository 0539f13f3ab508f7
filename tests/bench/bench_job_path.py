"""One job's database calls, step by step, in one thread: what the node spends per request on
PostgreSQL and the ORM before any HTTP, WebSocket or channel layer cost.

The steps are the relay's database calls, in its order, each the same function the node calls
(views_v1 and relay.py): the caller and the model's entry, the job's creation with its hold and
the claim of a worker with the job's start (one call), the settlement with the worker's metrics,
and the agent link's release of the worker. With --statements it also prints what PostgreSQL
itself spent on each kind of statement (its own log, `log_min_duration_statement = 0` for the
database while the benchmark runs), so the rest of each step is the Python side: the ORM,
psycopg and the services.

Needs PostgreSQL (DATABASE_URL; the default is a database of its own, created and migrated).
Run: .venv/bin/python tests/bench/bench_job_path.py [--jobs 300] [--statements]
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/peercycles_bench_path")
os.environ.update(DEBUG="0"); os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peercycles.settings")
STEPS = ("caller and entry", "create, hold, claim and start", "settle and metrics", "release")
PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")


def one_job(fleet, body: bytes, spent: dict) -> None:
    from apps.marketplace.relay import JobRelay
    from apps.marketplace.requests import parse_chat_request
    from apps.marketplace.services import caller_and_entry, job_create_and_claim
    from apps.workers.services import worker_release

    def step(name, call):
        started = time.perf_counter()
        result = call()
        spent[name] += time.perf_counter() - started
        return result

    chat = parse_chat_request(body, default_tier="verified", default_max_tokens=32, max_tokens_limit=1024)
    user, entry = step(STEPS[0], lambda: caller_and_entry(raw_key=fleet.api_key, name=chat.model))
    job, claimed = step(STEPS[1], lambda: job_create_and_claim(user=user, chat=chat, entry=entry))
    relay = JobRelay(job=job, entry=entry, route=chat.route, claimed=claimed)
    worker_id, _, model = relay._take_preclaimed()
    relay.worker_id, relay.model_id = worker_id, model["id"]  # as relay._try_assign sets them
    relay.assigned_at, relay.first_token_at = time.monotonic() - 0.25, time.monotonic() - 0.2
    relay.text_parts = ["Hello", " there", ", from", " the bench"]
    step(STEPS[2], lambda: relay._complete({"finish_reason": "length", "model_digest": model["digest"]}))
    step(STEPS[3], lambda: worker_release(worker_id=worker_id, job_id=job.id))


def statement_times(log_from: int, jobs: int) -> list[tuple[str, float, float]]:
    """(statement, PostgreSQL ms per job, times per job) from the server's log since line `log_from`."""
    total, count = collections.Counter(), collections.Counter()
    with open(PG_LOG, errors="replace") as log:
        for line in list(log)[log_from:]:
            found = re.search(r"duration: ([0-9.]+) ms\s+(?:statement|execute [^:]*): (.*)", line)
            if found:
                sql = re.sub(r"\b\d+\b", "N", re.sub(r"'[^']*'", "?", found.group(2)))[:90] or "(multi-line)"
                total[sql] += float(found.group(1))
                count[sql] += 1
    return [(sql, ms / jobs, count[sql] / jobs) for sql, ms in total.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--statements", action="store_true",
                        help=f"also PostgreSQL's own time per statement (reads {PG_LOG})")
    args = parser.parse_args()
    from tests.bench.bench_vs_litellm import DIGEST, MOCK_MODEL, database_prepare

    database_prepare()
    import django
    from django.db import connection
    from django.utils import timezone

    django.setup()
    from apps.workers.models import Worker
    from apps.workers.roster import roster_forget
    from tests.bench.fleet import PUBLIC_MODEL, fleet_seed

    fleet = fleet_seed(agents=16, served_model=MOCK_MODEL, digest=DIGEST, credits=10_000_000)
    # Online without agents, as their hello would leave them: the claim only needs an idle worker
    # that serves the model and has a channel to name.
    Worker.objects.filter(revoked_at__isnull=True).update(
        status="idle", channel_name="bench-job-path", last_seen_at=timezone.now(),
        models_served=[{"id": MOCK_MODEL, "digest": DIGEST, "backend": "openai"}])
    roster_forget()
    body = json.dumps({"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "Say something."}],
                       "max_tokens": 4, "peer_tier": "open"}).encode()
    warm = collections.Counter()
    for _ in range(20):  # the roster, the accounts and the connection exist before measuring
        one_job(fleet, body, warm)
    name = connection.settings_dict["NAME"]
    log_from = 0
    if args.statements:
        log_from = sum(1 for _ in open(PG_LOG, errors="replace"))
        subprocess.run(["psql", "-U", "postgres", "-h", "127.0.0.1", "-qc",
                        f'ALTER DATABASE "{name}" SET log_min_duration_statement = 0'], check=True)
        connection.close()  # the setting applies to new sessions
    spent = collections.Counter()
    try:
        for _ in range(args.jobs):
            one_job(fleet, body, spent)
    finally:
        if args.statements:
            subprocess.run(["psql", "-U", "postgres", "-h", "127.0.0.1", "-qc",
                            f'ALTER DATABASE "{name}" RESET log_min_duration_statement'], check=True)
    print(f"{args.jobs} jobs on {name}, one thread; ms per job:")
    for step in STEPS:
        print(f"  {step:20} {spent[step] / args.jobs * 1000:7.2f}")
    print(f"  {'total':20} {sum(spent.values()) / args.jobs * 1000:7.2f}")
    if args.statements:
        rows = statement_times(log_from, args.jobs)
        print(f"PostgreSQL's own time: {sum(r[1] for r in rows):.2f} ms per job in "
              f"{sum(r[2] for r in rows):.1f} statements")
        for sql, ms, times in rows[:15]:
            print(f"  {ms:6.3f} ms {times:5.2f}x  {sql}")


if __name__ == "__main__":
    main()
