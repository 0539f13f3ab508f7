"""The demo fleet `make run` serves: a demo buyer with credits and key, local workers, the
catalogue name `peer-mixtral` mapped (openly, in /v1/models) to the built-in Gemma 3 270M, and
`all-minilm-l6-v2` for /v1/embeddings, served by the agents' MiniLM backend."""

from dataclasses import dataclass

from django.db import transaction

from apps.accounts.services import api_key_issue, api_keys_revoke_named, user_get_or_create
from apps.credits.selectors import balance_get
from apps.credits.pricing import credits_to_micro
from apps.credits.services import credits_grant
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register, worker_token_rotate
from worker.backends.modelfile import resolve_model

DEMO_USER = "demo"
DEMO_OPERATOR = "demo-operator"
DEMO_CREDITS = 10_000  # $100 of credits
EMBEDDING_NAME = "all-minilm-l6-v2"
# The one worker `make run` starts with a SIMULATED enclave, for the confidential tier.
ENCLAVE_WORKER = "demo-enclave-1"
# The worker `make run` starts with --cheat, for /network/'s workflow to catch (PEER_WORKFLOW_CHEATER),
# under an operator of its own: validators are workers of other operators.
CHEATER_WORKER, CHEATER_OPERATOR = "demo-cheater-1", "demo-cheater"
DEMO_NAMES = {
    "peer-mixtral": "Demo name from the concept paper; served by the built-in Gemma 3 270M, not Mixtral.",
    "gemma-3-270m": "Gemma 3 270M (Q4_K_M GGUF), the built-in model of the bundled agent.",
}


@dataclass
class DemoFleet:
    api_key: str
    worker_tokens: list[tuple[str, str]]  # (worker name, one-time token)
    enclave_token: tuple[str, str] | None  # the simulated-enclave worker's (name, token)
    model_id: str
    model_digest: str
    embedding_model: str | None = None  # the public name, when the MiniLM packages are installed
    cheater_token: tuple[str, str] | None = None  # the --cheat worker's (name, token)


def catalogue_seed_builtin() -> tuple[str, str, str]:
    """Map the demo names to the built-in model and its real digest; returns (id, digest, path)."""
    model = resolve_model(None)
    for name, description in DEMO_NAMES.items():
        CatalogueModel.objects.update_or_create(name=name, defaults={
            "served_model": model.id, "digests": [model.digest], "description": description,
            "context_length": 2048, "tokenizer_path": str(model.path), "active": True})
    return model.id, model.digest, str(model.path)


def catalogue_seed_embeddings() -> tuple[str, str, str] | None:
    """Map EMBEDDING_NAME to the agent's MiniLM backend, with the digest of its weights and the
    tokenizer.json the node counts tokens with; returns (public name, id, digest), or None when
    the backend's packages are not installed (then no agent announces it either)."""
    from worker.backends import minilm

    if not minilm.available():
        return None
    info = minilm.model_info()
    _, tokenizer = minilm.model_files()
    CatalogueModel.objects.update_or_create(name=EMBEDDING_NAME, defaults={
        "served_model": info.id, "digests": [info.digest], "kind": CatalogueModel.Kind.EMBEDDING,
        "dimensions": minilm.DIMENSIONS, "context_length": minilm.MAX_TOKENS,
        "tokenizer_path": str(tokenizer), "active": True,
        "description": "all-MiniLM-L6-v2 (sentence-transformers), int8 ONNX: 384-dimensional unit vectors."})
    return EMBEDDING_NAME, info.id, info.digest


def demo_seed(*, agents: int) -> DemoFleet:
    """Idempotent: reuses the demo users and workers, tops credits up, and rotates the demo
    key and worker tokens (only their hashes are stored, so a new run needs new ones)."""
    model_id, digest, _ = catalogue_seed_builtin()
    embeddings = catalogue_seed_embeddings()
    buyer = user_get_or_create(username=DEMO_USER)
    missing = credits_to_micro(DEMO_CREDITS) - balance_get(user=buyer)
    if missing > 0:
        credits_grant(user=buyer, credits=-(-missing // credits_to_micro(1)), memo="demo top-up")
    api_keys_revoke_named(user=buyer, name="demo")
    _, raw_key = api_key_issue(user=buyer, name="demo")
    operator = user_get_or_create(username=DEMO_OPERATOR)
    tokens = []
    for index in range(agents):
        name = f"demo-cpu-{index + 1}"
        # An operator each: a proven fault needs two validators of operators other than the worker's.
        owner = operator if index == 0 else user_get_or_create(username=f"{DEMO_OPERATOR}-{index + 1}")
        worker, token = _demo_worker(owner, name, tiers=["open", "verified"])
        _bond_up(worker)
        tokens.append((name, token))
    _, enclave_token = _demo_worker(operator, ENCLAVE_WORKER, tiers=["confidential"])
    cheater, cheater_token = _demo_worker(user_get_or_create(username=CHEATER_OPERATOR), CHEATER_WORKER,
                                          tiers=["verified"])
    _bond_up(cheater)
    return DemoFleet(api_key=raw_key, worker_tokens=tokens, model_id=model_id, model_digest=digest,
                     embedding_model=embeddings[0] if embeddings else None,
                     enclave_token=(ENCLAVE_WORKER, enclave_token), cheater_token=(CHEATER_WORKER, cheater_token))


def _demo_worker(operator, name: str, *, tiers: list[str]) -> tuple[Worker, str]:
    """The operator's worker called `name` (registered the first time) with a new token."""
    with transaction.atomic():
        worker = Worker.objects.filter(operator=operator, name=name).first()
        if worker is None:
            return worker_register(operator=operator, name=name, tiers=tiers)
        return worker, worker_token_rotate(worker_id=worker.id)



def _bond_up(worker) -> None:
    """Demo workers serve the verified tier, which routes only to bonded workers: top the bond
    up to the required amount with $PEER granted from the treasury."""
    from django.conf import settings

    from apps.staking.selectors import worker_bond_get
    from apps.staking.services import bond_lock, peer_grant

    missing = settings.PEER_VERIFIED_BOND - worker_bond_get(worker=worker)
    if missing > 0:
        peer_grant(user=worker.operator, amount=missing)
        bond_lock(worker=worker, amount=missing)
