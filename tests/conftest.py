"""The shared cast and the checks every test gets.

alice buys inference, bob operates workers, carol validates, mallory attacks. Every test that
touches the database ends by checking the ledger: each transaction sums to zero per asset,
balances equal their entries, nothing that may not be negative is.
"""

import pytest

CAST = ("alice", "bob", "carol", "mallory")


@pytest.fixture(scope="session", autouse=True)
def _real_services_only(request):
    from django.conf import settings

    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.exit("The suite runs against PostgreSQL: set DATABASE_URL (make test does).", returncode=3)
    if not settings.REDIS_URL:
        pytest.exit("The suite runs against Redis: set REDIS_URL (make test does).", returncode=3)


@pytest.fixture(autouse=True)
def _ledger_stays_sound(request):
    uses_db = request.node.get_closest_marker("django_db") is not None or \
        {"db", "transactional_db"} & set(request.fixturenames)
    if uses_db:
        # Set the database up from here, so that it is torn down after the check below runs.
        request.getfixturevalue("_django_db_helper")
    yield
    if uses_db:
        from apps.credits.selectors import ledger_invariant_violations

        assert ledger_invariant_violations() == []


def _user(username):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username=username, email=f"{username}@example.com",
                                                password="correct horse battery staple")


@pytest.fixture
def alice(db):
    return _user("alice")


@pytest.fixture
def bob(db):
    return _user("bob")


@pytest.fixture
def carol(db):
    return _user("carol")


@pytest.fixture
def mallory(db):
    return _user("mallory")


@pytest.fixture(scope="session", autouse=True)
def _agents_sign_with_a_key_of_the_run(tmp_path_factory):
    """Every `python -m worker` a test starts inherits this: its signing key is the run's own,
    not a file in the home directory."""
    import os

    os.environ["PEER_WORKER_KEY_FILE"] = str(tmp_path_factory.mktemp("worker-key") / "worker-key.pem")


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    """The cast's passwords are hashed with MD5 in tests only: the real hasher costs ~0.5 s a user."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def bond(worker, amount=None):
    """Give the worker's operator $PEER from the treasury and lock it as the worker's bond
    (the verified tier routes only to bonded workers)."""
    from django.conf import settings

    from apps.staking.services import bond_lock, peer_grant

    amount = settings.PEER_VERIFIED_BOND if amount is None else amount
    peer_grant(user=worker.operator, amount=amount)
    bond_lock(worker=worker, amount=amount)
    return worker


@pytest.fixture(autouse=True)
def _fresh_routing_roster():
    """Routing rosters are cached per process (apps/workers/roster.py): one test's workers must
    not be routed to in the next, whose database no longer has them."""
    from apps.workers.roster import roster_forget

    roster_forget()
    yield
    roster_forget()
