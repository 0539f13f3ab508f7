"""One env-driven settings module with safe development defaults.

With DATABASE_URL / REDIS_URL unset the node runs embedded: a SQLite file, the in-memory
channel layer and Celery tasks run inside the node. With them set it uses PostgreSQL and Redis.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-change-me-in-production")
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS").split(",") if o]
SITE_URL = env_str("SITE_URL", f"http://127.0.0.1:{env_str('PEER_PORT', '8000')}")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "apps.accounts",
    "apps.credits",
    "apps.workers",
    "apps.marketplace",
    "apps.staking",
    "apps.verification",
    "apps.chat",
]

# Django's own middleware, in peercycles/middleware.py's forms: under ASGI no thread hop per hook,
# and the /v1 API (API keys, no cookies) skips sessions, CSRF, authentication and messages.
MIDDLEWARE = [
    "peercycles.middleware.SecurityMiddleware",
    "peercycles.middleware.SessionMiddleware",
    "peercycles.middleware.CommonMiddleware",
    "peercycles.middleware.CsrfViewMiddleware",
    "peercycles.middleware.AuthenticationMiddleware",
    "peercycles.middleware.MessageMiddleware",
    "peercycles.middleware.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "peercycles.urls"
ASGI_APPLICATION = "peercycles.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)
    if DATABASE_URL
    else {"ENGINE": "django.db.backends.sqlite3",
          "NAME": env_str("PEER_SQLITE_PATH", str(BASE_DIR / "var" / "peercycles.sqlite3")),
          # The relay writes from several threads; wait for the lock instead of failing. IMMEDIATE:
          # a transaction takes the write lock when it begins, so it waits there (busy timeout)
          # rather than failing at once with "database is locked" when it first writes.
          "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"}},
}
# A bounded connection pool per process (psycopg_pool). Without one every request thread opens
# its own connection, and a burst of requests exceeds PostgreSQL's max_connections (100 by
# default): those requests fail. Callers wait up to the pool's timeout for a free connection.
PEER_DB_POOL_SIZE = env_int("PEER_DB_POOL_SIZE", 0)
if DATABASE_URL and PEER_DB_POOL_SIZE:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1, "max_size": PEER_DB_POOL_SIZE, "timeout": env_float("PEER_DB_POOL_TIMEOUT", 20.0)}
# Server-side parameters and prepared statements: the node sends the same few statements for
# every job, and with Django's default (client-side binding, nothing prepared) PostgreSQL parsed
# and planned each of them every time: prepared, its CPU per request fell by a third and the
# node's throughput at 64 clients rose by a fifth (docs/benchmarks.md). psycopg prepares a
# statement on a connection after PEER_DB_PREPARE_AFTER runs of it there. PEER_DB_PREPARED=0
# behind a pooler that cannot keep prepared statements (PgBouncer in transaction mode before 1.21).
PEER_DB_PREPARED = env_bool("PEER_DB_PREPARED", True)
PEER_DB_PREPARE_AFTER = env_int("PEER_DB_PREPARE_AFTER", 5)
if DATABASE_URL and PEER_DB_PREPARED:
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=PEER_DB_PREPARE_AFTER)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
# With PEER_CHANNEL_LAYER=list (below): the messages one node process's inbox may hold: every
# relay and agent link of a process shares one Redis list. Over it, frames are dropped and their jobs fail (refunded).
# A larger inbox does not save an overloaded process: with 100,000 the 200-stream benchmark still
# failed every stream, and the backlog kept the node from serving for the run after it
# (docs/benchmarks.md).
CHANNEL_CAPACITY = env_int("PEER_CHANNEL_CAPACITY", 4096)
if REDIS_URL:
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "peercycles.channel_layer.OneTripRedisChannelLayer",
            # redis-py 8 times a read out after 5 s, exactly channels_redis's 5 s blocking pop:
            # a longer socket timeout keeps idle consumers from crashing. Without a retry, every
            # pooled connection fails once after Redis restarts: the first requests would fail.
            # max_connections: redis-py's asyncio pool allows 100 by default, and a node with
            # many agent links and streams outgrows it ("Too many connections" dropped links in
            # the relay benchmark at 200 streams).
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30,
                                  "max_connections": env_int("PEER_REDIS_MAX_CONNECTIONS", 1000),
                                  "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3)}],
                       "capacity": CHANNEL_CAPACITY, "expiry": 120,
                       "prefix": env_str("PEER_CHANNEL_PREFIX", "peercycles")},
        }
    }
    # "pubsub": channels_redis's pub/sub layer (a frame is one PUBLISH, delivered by each
    # process's one subscription; at most once, no capacity), a frame for a channel of this
    # process put in its queue here (peercycles/channel_layer.py). "list": its list-based layer with
    # our one-round-trip send, whose receive serializes every message of a process behind one
    # lock and one BZPOPMIN. Measured (docs/benchmarks.md): with pub/sub 200 concurrent streams
    # complete whole, the node serves 19.5 jobs/s against 10.9, at 64 streams the first token
    # comes 2.8 s late against 6.7 s. The relay turns a lost frame into a refunded failure.
    PEER_CHANNEL_LAYER = env_str("PEER_CHANNEL_LAYER", "pubsub")
    if PEER_CHANNEL_LAYER == "pubsub":
        CHANNEL_LAYERS["default"]["BACKEND"] = "peercycles.channel_layer.LocalFirstPubSubChannelLayer"
        layer_config = CHANNEL_LAYERS["default"]["CONFIG"]
        CHANNEL_LAYERS["default"]["CONFIG"] = {"hosts": layer_config["hosts"], "prefix": layer_config["prefix"]}
    elif PEER_CHANNEL_LAYER != "list":
        raise ImproperlyConfigured(f"PEER_CHANNEL_LAYER must be list or pubsub, not {PEER_CHANNEL_LAYER!r}")
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer",
                    "CONFIG": {"capacity": CHANNEL_CAPACITY, "expiry": 120}}
    }

# Celery: Redis broker when REDIS_URL is set, otherwise tasks run inside the node process.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_BEAT_SCHEDULE = {
    "reap-stale-jobs": {"task": "apps.marketplace.tasks.jobs_reap_stale_task", "schedule": 30.0},
    "reap-silent-workers": {"task": "apps.workers.tasks.workers_reap_silent_task", "schedule": 30.0},
    "scan-deposits": {"task": "apps.credits.tasks.deposits_scan_task", "schedule": 10.0},
    "run-payouts": {"task": "apps.workers.tasks.payouts_run_task", "schedule": 300.0},
    "sample-verified-jobs": {"task": "apps.verification.tasks.jobs_sample_task", "schedule": 5.0},
    "run-pending-validations": {"task": "apps.verification.tasks.validations_resume_task", "schedule": 15.0},
    "close-peer-epoch": {"task": "apps.staking.tasks.epoch_close_task",
                         "schedule": float(env_int("PEER_EPOCH_SECONDS", 3600))},
    # The landing page's live figures (apps/marketplace/network_stats.py). A tick older than the
    # next one is worthless: a backed-up worker drops it rather than replaying stale snapshots.
    "publish-network-stats": {"task": "apps.credits.tasks.network_stats_publish_task", "schedule": 5.0,
                              "options": {"expires": 5.0}},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env_str("ACCOUNT_EMAIL_VERIFICATION", "none")
LOGIN_REDIRECT_URL = "/account/"
# Django 6.1 configures mail through MAILERS; the console backend prints mail in development.
MAILERS = {"default": {"BACKEND": env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")}}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
# The node serves /static/ itself when this is on (default: with DEBUG, as under `make run`);
# a deployment turns DEBUG off and serves `collectstatic`'s output from its web server.
PEER_SERVE_STATIC = env_bool("PEER_SERVE_STATIC", DEBUG)
# htmx comes from npm at setup (`make setup` runs npm ci); never committed.
if (BASE_DIR / "node_modules").exists():
    STATICFILES_DIRS.append(("vendor", BASE_DIR / "node_modules"))

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Peer Cycles node API",
    "DESCRIPTION": "REST API of a Peer Cycles node. The OpenAI-compatible API lives under /v1.",
    "VERSION": "0.1.0",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"apps": {"handlers": ["console"], "level": env_str("PEER_LOG_LEVEL", "INFO")}},
}

# --- Peer Cycles ------------------------------------------------------------------------
# Prices in micro-USDC (1 credit = $0.01 = 10,000 micro-USDC). A job costs its tier's base
# price plus a per-token price for prompt and completion tokens.
PEER_TIER_BASE_PRICE = {
    "open": env_int("PEER_PRICE_OPEN_BASE", 80_000),
    "verified": env_int("PEER_PRICE_VERIFIED_BASE", 120_000),
    "confidential": env_int("PEER_PRICE_CONFIDENTIAL_BASE", 250_000),
}
# An embedding request does far less work than a generation: its own, smaller base price.
PEER_EMBEDDING_BASE_PRICE = {
    "open": env_int("PEER_PRICE_EMBEDDING_OPEN_BASE", 2_000),
    "verified": env_int("PEER_PRICE_EMBEDDING_VERIFIED_BASE", 5_000),
    "confidential": env_int("PEER_PRICE_EMBEDDING_CONFIDENTIAL_BASE", 10_000),
}
PEER_PRICE_PER_TOKEN = env_int("PEER_PRICE_PER_TOKEN", 100)
PEER_DEFAULT_TIER = "verified"
PEER_DEFAULT_MAX_TOKENS = env_int("PEER_DEFAULT_MAX_TOKENS", 256)
PEER_MAX_TOKENS_LIMIT = env_int("PEER_MAX_TOKENS_LIMIT", 1024)
# How long a job waits for an idle worker, and how long a running job may take in all.
PEER_QUEUE_TIMEOUT = env_float("PEER_QUEUE_TIMEOUT", 30.0)
# Jobs that may wait for a worker per model and tier; past it a request gets 429 at once.
PEER_QUEUE_LIMIT = env_int("PEER_QUEUE_LIMIT", 200)
PEER_JOB_TIMEOUT = env_float("PEER_JOB_TIMEOUT", 300.0)
# Jobs one node process relays at once (0: no bound), and requests that may wait their turn
# (for up to PEER_QUEUE_TIMEOUT, holding nothing); past either a request gets 503 + Retry-After.
# See apps/marketplace/admission.py and docs/benchmarks.md for how the default was chosen.
PEER_NODE_JOB_LIMIT = env_int("PEER_NODE_JOB_LIMIT", 64)
PEER_NODE_WAIT_LIMIT = env_int("PEER_NODE_WAIT_LIMIT", 1000)
# How long a node process reuses its routing roster (workers eligible for a model and tier, their
# scores, the dearest offer) before reading it again; see apps/workers/roster.py. 0: every job.
PEER_ROUTING_CACHE_SECONDS = env_float("PEER_ROUTING_CACHE_SECONDS", 1.0)
# A worker that sends nothing for this long is taken offline.
PEER_HEARTBEAT_INTERVAL = env_float("PEER_HEARTBEAT_INTERVAL", 10.0)
PEER_WORKER_SILENCE_LIMIT = env_float("PEER_WORKER_SILENCE_LIMIT", 45.0)
# The public model catalogue: public name -> model served and its allowed digests. The
# database holds it (apps.workers.CatalogueModel); this JSON, when set, is loaded by `seed_demo`.
PEER_CATALOGUE_JSON = env_str("PEER_CATALOGUE_JSON")

# Solana: the node's USDC deposit address, payouts and x402 settlement.
PEER_SOLANA_RPC_URL = env_str("PEER_SOLANA_RPC_URL", "http://127.0.0.1:8899")
# CAIP-2 id of the cluster (devnet by default; mainnet is solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp).
PEER_SOLANA_NETWORK = env_str("PEER_SOLANA_NETWORK", "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1")
PEER_USDC_MINT = env_str("PEER_USDC_MINT", "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU")
# The node's receiving wallet: deposits and x402 payments go to its USDC associated token account.
PEER_PAY_TO = env_str("PEER_PAY_TO", "")
PEER_X402_TIMEOUT_SECONDS = env_int("PEER_X402_TIMEOUT_SECONDS", 60)
# The node's hot wallet (a JSON keypair file, as solana-keygen writes): signs worker payouts
# and pays fees as the x402 facilitator. Empty: payouts and self-facilitation are off.
PEER_PAYOUT_KEYPAIR = env_str("PEER_PAYOUT_KEYPAIR", "")
PEER_X402_FACILITATOR_URL = env_str("PEER_X402_FACILITATOR_URL", "")
PEER_PAYOUT_THRESHOLD = env_int("PEER_PAYOUT_THRESHOLD", 1_000_000)  # micro-USDC ($1)
PEER_DEPOSIT_COMMITMENT = env_str("PEER_DEPOSIT_COMMITMENT", "finalized")

# $PEER (9 decimals: 1 PEER = 10**9 base units).
PEER_INITIAL_SUPPLY = env_int("PEER_INITIAL_SUPPLY", 1_000_000_000 * 10**9)
PEER_UNSTAKE_COOLDOWN_SECONDS = env_int("PEER_UNSTAKE_COOLDOWN_SECONDS", 7 * 24 * 3600)
PEER_VERIFIED_BOND = env_int("PEER_VERIFIED_BOND", 1_000 * 10**9)
PEER_SLASH_CHALLENGER_PERCENT = env_int("PEER_SLASH_CHALLENGER_PERCENT", 50)
# What one proven fault takes from a bond (PEER base units; all of it when the bond holds less).
PEER_SLASH_AMOUNT = env_int("PEER_SLASH_AMOUNT", PEER_VERIFIED_BOND // 10)
# Verified routing needs this reputation too: a proven fault halves it (docs/routing.md).
PEER_VERIFIED_REPUTATION_FLOOR = env_float("PEER_VERIFIED_REPUTATION_FLOOR", 0.3)

# Re-execution of verified jobs (docs/verification.md). A completed verified job is drawn for
# re-execution with its tier's rate for a worker of reputation 1, rising linearly to
# PEER_VERIFY_SAMPLE_RATE_MAX for a worker of reputation 0.
PEER_VERIFY_SAMPLE_RATE = {
    "verified": env_float("PEER_VERIFY_SAMPLE_RATE_VERIFIED", 0.05),
}
PEER_VERIFY_SAMPLE_RATE_MAX = env_float("PEER_VERIFY_SAMPLE_RATE_MAX", 0.25)
# One validator's re-execution may take this long; a job tries this many validators in all.
PEER_VERIFY_TIMEOUT = env_float("PEER_VERIFY_TIMEOUT", 120.0)
PEER_VERIFY_MAX_ATTEMPTS = env_int("PEER_VERIFY_MAX_ATTEMPTS", 3)
# The confidential tier (docs/confidential.md, docs/attestation.md). A simulated enclave proves
# nothing about hardware: refused unless this is set (`make run` sets it for its demo worker).
PEER_ALLOW_SIMULATED_ENCLAVE = env_bool("PEER_ALLOW_SIMULATED_ENCLAVE", False)
# A verdict on an enclave's evidence holds this long; the node challenges again at half of it.
PEER_ATTESTATION_MAX_AGE = env_float("PEER_ATTESTATION_MAX_AGE", 600.0)
# Allowed agent code measurements (comma-separated "sha256:<hex>"); empty: the measurement of
# the agent code this node ships (worker.measurement.code_measurement).
PEER_ATTESTATION_CODE_MEASUREMENTS = [m.strip() for m in env_str("PEER_ATTESTATION_CODE_MEASUREMENTS").split(",")
                                      if m.strip()]
# Hardware evidence: allowed SEV-SNP launch measurements and TDX MRTDs (comma-separated hex);
# empty allows any the hardware signed (the binding still pins key, model and agent code).
PEER_ATTESTATION_SNP_MEASUREMENTS = [m.strip() for m in env_str("PEER_ATTESTATION_SNP_MEASUREMENTS").split(",")
                                     if m.strip()]
PEER_ATTESTATION_TDX_MRTDS = [m.strip() for m in env_str("PEER_ATTESTATION_TDX_MRTDS").split(",") if m.strip()]
# The network workflow (/network/) shows a cheater caught: the worker of this name, started with
# --cheat (make run starts one), gets its verified job.
PEER_WORKFLOW_CHEATER = env_str("PEER_WORKFLOW_CHEATER", "demo-cheater-1")
# How long GET /v1/attestation with a client nonce waits for enclaves' fresh evidence.
PEER_ATTESTATION_FETCH_TIMEOUT = env_float("PEER_ATTESTATION_FETCH_TIMEOUT", 5.0)

# Open challenges: anyone may challenge a verified job this long after it completed, holding
# this much of their credits (micro-USDC) as the challenge's bond.
PEER_CHALLENGE_WINDOW_SECONDS = env_int("PEER_CHALLENGE_WINDOW_SECONDS", 24 * 3600)
PEER_CHALLENGE_BOND = env_int("PEER_CHALLENGE_BOND", 50_000)
PEER_EPOCH_SECONDS = env_int("PEER_EPOCH_SECONDS", 3600)
