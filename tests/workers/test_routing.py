"""The routing score and peer_route preferences: pure functions, no database."""

import pytest

from apps.workers.routing import Candidate, RoutePreferences, parse_route, route_order, score_candidates


def _c(name, reputation=0.5, price=100, tps=None, ttft=None):
    return Candidate(worker_id=f"id-{name}", name=name, reputation=reputation, price_per_token=price,
                     tokens_per_second=tps, ttft_ms=ttft)


def _names(ranked):
    return [r.candidate.name for r in ranked]


def test_a_better_reputation_wins_when_everything_else_is_equal():
    assert _names(route_order([_c("meh", 0.4), _c("good", 0.9)])) == ["good", "meh"]


def test_a_faster_cheaper_worker_can_beat_a_slightly_more_reputable_one():
    slow = _c("slow", reputation=0.8, price=200, tps=10, ttft=900)
    fast = _c("fast", reputation=0.75, price=100, tps=60, ttft=150)
    assert _names(route_order([slow, fast])) == ["fast", "slow"]


def test_the_score_parts_are_normalised_to_the_best_candidate():
    ranked = score_candidates([_c("a", 1.0, 100, 50, 100), _c("b", 0.0, 200, 25, 200)])
    assert ranked[0].parts == {"reputation": 1.0, "throughput": 1.0, "latency": 1.0, "price": 1.0}
    assert ranked[1].parts == {"reputation": 0.0, "throughput": 0.5, "latency": 0.5, "price": 0.5}
    assert ranked[0].score == pytest.approx(1.0) and ranked[1].score == pytest.approx(0.275)


def test_an_unmeasured_worker_gets_the_median_speed_of_the_measured_ones():
    ranked = score_candidates([_c("new"), _c("a", tps=20, ttft=100), _c("b", tps=40, ttft=300)])
    assert ranked[0].parts["throughput"] == pytest.approx(30 / 40) and ranked[0].parts["latency"] == pytest.approx(0.5)


def test_ties_keep_the_incoming_least_recently_used_order():
    assert _names(route_order([_c("first"), _c("second"), _c("third")])) == ["first", "second", "third"]


@pytest.mark.parametrize("sort, expected", [
    ("price", ["cheap", "fast", "snappy"]),
    ("throughput", ["fast", "snappy", "cheap"]),
    ("latency", ["snappy", "fast", "cheap"]),
])
def test_sort_puts_the_chosen_quality_first(sort, expected):
    candidates = [_c("cheap", price=50, tps=10, ttft=800), _c("fast", price=150, tps=90, ttft=400),
                  _c("snappy", price=200, tps=40, ttft=50)]
    assert _names(route_order(candidates, RoutePreferences(sort=sort))) == expected


def test_filters_only_ignore_and_max_price_remove_workers():
    candidates = [_c("a", price=50), _c("b", price=150), _c("c", price=100)]
    assert _names(route_order(candidates, RoutePreferences(max_price_per_token=100))) == ["a", "c"]
    assert _names(route_order(candidates, RoutePreferences(only=("b",)))) == ["b"]
    assert "a" not in _names(route_order(candidates, RoutePreferences(ignore=("id-a",))))


def test_order_goes_first_and_without_fallbacks_nothing_else_is_tried():
    candidates = [_c("a", 0.9), _c("b", 0.1), _c("c", 0.5)]
    assert _names(route_order(candidates, RoutePreferences(order=("b", "c"))))[:2] == ["b", "c"]
    assert _names(route_order(candidates, RoutePreferences(order=("b",), allow_fallbacks=False))) == ["b"]


def test_no_candidates_route_nowhere():
    assert route_order([]) == [] and route_order([_c("a", price=500)], RoutePreferences(max_price_per_token=1)) == []


@pytest.mark.parametrize("raw, message", [
    ("fast", "must be an object"), ({"sort": "vibes"}, "sort"), ({"max_price": -1}, "max_price"),
    ({"max_price": 1.5}, "max_price"), ({"order": "a"}, "order"), ({"only": [1]}, "only"),
    ({"allow_fallbacks": "no"}, "allow_fallbacks"), ({"speed": 1}, "unknown fields"),
])
def test_bad_route_preferences_are_refused_with_a_message(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_route(raw)


def test_route_preferences_parse():
    prefs = parse_route({"sort": "price", "max_price": 120, "order": ["w1"], "allow_fallbacks": False,
                         "only": ["w1", "w2"], "ignore": ["w3"]})
    assert prefs == RoutePreferences(sort="price", max_price_per_token=120, order=("w1",), allow_fallbacks=False,
                                     only=("w1", "w2"), ignore=("w3",))
    assert parse_route(None) == RoutePreferences()
