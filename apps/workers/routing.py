"""Which worker gets a job: a documented score over reputation, measured speed and price, plus
the client's `peer_route` preferences. Pure: no I/O, unit-tested without a database.

score = 0.45 * reputation                     (0..1, from outcomes, see metrics.py)
      + 0.25 * throughput / best throughput    (tokens per second measured by the node)
      + 0.15 * best latency / latency          (time to first token measured by the node)
      + 0.15 * cheapest price / price          (the worker's offer per token)

A worker never measured gets the median of the measured candidates for speed and latency (or
1.0 when nobody is measured yet), so a newcomer is neither starved nor favoured. Ties go to the
least recently used worker (the candidates arrive in that order and the sort is stable).
"""

from dataclasses import dataclass, field
from statistics import median

WEIGHTS = {"reputation": 0.45, "throughput": 0.25, "latency": 0.15, "price": 0.15}
SORTS = ("price", "throughput", "latency")


@dataclass(frozen=True)
class Candidate:
    worker_id: str
    name: str
    reputation: float
    price_per_token: int  # micro-USDC
    tokens_per_second: float | None = None
    ttft_ms: float | None = None


@dataclass(frozen=True)
class RoutePreferences:
    """OpenRouter-style provider preferences, parsed from the request's `peer_route`."""

    sort: str | None = None
    max_price_per_token: int | None = None
    order: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    only: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float
    parts: dict = field(default_factory=dict)


def _fill(values: list[float | None], default: float) -> list[float]:
    measured = [v for v in values if v is not None and v > 0]
    fallback = median(measured) if measured else default
    return [v if v is not None and v > 0 else fallback for v in values]


def score_candidates(candidates: list[Candidate]) -> list[Ranked]:
    """Each candidate's score and its parts, in the candidates' order."""
    if not candidates:
        return []
    speeds = _fill([c.tokens_per_second for c in candidates], 1.0)
    latencies = _fill([c.ttft_ms for c in candidates], 1.0)
    best_speed, best_latency = max(speeds), min(latencies)
    cheapest = min(max(c.price_per_token, 1) for c in candidates)
    ranked = []
    for candidate, speed, latency in zip(candidates, speeds, latencies):
        parts = {
            "reputation": min(max(candidate.reputation, 0.0), 1.0),
            "throughput": speed / best_speed,
            "latency": best_latency / latency,
            "price": cheapest / max(candidate.price_per_token, 1),
        }
        ranked.append(Ranked(candidate, sum(WEIGHTS[k] * v for k, v in parts.items()), parts))
    return ranked


def _matches(candidate: Candidate, names: tuple[str, ...]) -> bool:
    return candidate.worker_id in names or candidate.name in names


def route_order(candidates: list[Candidate], prefs: RoutePreferences | None = None) -> list[Ranked]:
    """The candidates to try, best first, after the client's filters; may be empty."""
    prefs = prefs or RoutePreferences()
    pool = [c for c in candidates
            if not _matches(c, prefs.ignore)
            and (not prefs.only or _matches(c, prefs.only))
            and (prefs.max_price_per_token is None or c.price_per_token <= prefs.max_price_per_token)]
    ranked = sorted(score_candidates(pool), key=lambda r: -r.score)
    if prefs.sort == "price":
        ranked.sort(key=lambda r: r.candidate.price_per_token)
    elif prefs.sort == "throughput":
        ranked.sort(key=lambda r: -r.parts["throughput"])
    elif prefs.sort == "latency":
        ranked.sort(key=lambda r: -r.parts["latency"])
    if prefs.order:
        position = {name: i for i, name in enumerate(prefs.order)}

        def rank_in_order(r: Ranked) -> int:
            return min(position.get(r.candidate.worker_id, len(position)), position.get(r.candidate.name, len(position)))

        ranked.sort(key=rank_in_order)
        if not prefs.allow_fallbacks:
            ranked = [r for r in ranked if _matches(r.candidate, prefs.order)]
    return ranked


def parse_route(raw) -> RoutePreferences:
    """Validate a request's `peer_route` object; raises ValueError with a message for the client."""
    if raw is None:
        return RoutePreferences()
    if not isinstance(raw, dict):
        raise ValueError("'peer_route' must be an object.")
    unknown = set(raw) - {"sort", "max_price", "order", "allow_fallbacks", "only", "ignore"}
    if unknown:
        raise ValueError(f"'peer_route' has unknown fields: {', '.join(sorted(unknown))}.")
    sort = raw.get("sort")
    if sort is not None and sort not in SORTS:
        raise ValueError(f"'peer_route.sort' must be one of {', '.join(SORTS)}.")
    max_price = raw.get("max_price")
    if max_price is not None and (isinstance(max_price, bool) or not isinstance(max_price, int) or max_price < 0):
        raise ValueError("'peer_route.max_price' is micro-USDC per token: a non-negative integer.")
    lists = {}
    for name in ("order", "only", "ignore"):
        value = raw.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or len(value) > 50:
            raise ValueError(f"'peer_route.{name}' must be a list of worker ids or names.")
        lists[name] = tuple(value)
    allow = raw.get("allow_fallbacks", True)
    if not isinstance(allow, bool):
        raise ValueError("'peer_route.allow_fallbacks' must be a boolean.")
    return RoutePreferences(sort=sort, max_price_per_token=max_price, allow_fallbacks=allow, **lists)
