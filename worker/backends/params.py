"""The protocol's sampling params, checked the same way by every backend.

A job's params come from the node, which validated the client's request; checking again here
turns anything that slipped through into `invalid_params` instead of a server's 400 or crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.backends import BackendError


def number(params: dict[str, Any], name: str, default: float | None, low: float,
           high: float) -> float | None:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BackendError("invalid_params", f"{name} must be a number in [{low}, {high}]")
    return float(value)


def max_tokens(params: dict[str, Any]) -> int | None:
    value = params.get("max_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackendError("invalid_params", "max_tokens must be a positive integer")
    return value


def seed(params: dict[str, Any]) -> int | None:
    value = params.get("seed")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise BackendError("invalid_params", "seed must be an integer")
    return value


def stops(params: dict[str, Any]) -> list[str]:
    value = params.get("stop")
    if value is None:
        value = []
    elif isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BackendError("invalid_params", "stop must be a string or a list of strings")
    return [s for s in value if s]


@dataclass(frozen=True)
class Sampling:
    """Validated params. temperature/top_p are None when the job leaves them to the backend."""

    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    seed: int | None
    stops: list[str]


def sampling(params: dict[str, Any] | None) -> Sampling:
    params = params or {}
    return Sampling(temperature=number(params, "temperature", None, 0.0, 2.0),
                    top_p=number(params, "top_p", None, 0.0, 1.0),
                    max_tokens=max_tokens(params), seed=seed(params), stops=stops(params))
