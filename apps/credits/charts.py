"""Chart data: what a chart shows, as plain values a page renders with json_script and
static/js/charts.js draws with uPlot; and the treasury console's charts (supply, burns, balances).

Amounts stay integers in base units (micro-USDC, $PEER base units) with their decimals beside
them: the page scales them to draw, and the table under each chart prints them exactly.
Days are UTC days, the oldest first, today last; a day with nothing on it is a 0, not a gap.
"""

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from .ledger import PEER_BURNED_CODE, PEER_ISSUER_CODE, STAKERS_POOL_CODE, TREASURY_CODE
from .models import AccountKind, Asset, LedgerAccount, LedgerEntry
from .units import PEER_DECIMALS, USDC_DECIMALS, peer_text, units_text, usdc_text

DAYS = 30
# Dark enough to read as text on white (WCAG AA, 4.5:1 and more) and told apart without colour
# by their labels in the legend and the table.
BLUE, GREEN, RED, PURPLE = "#0b5fff", "#1a7f37", "#b42318", "#6941c6"


@dataclass(frozen=True)
class Series:
    label: str
    values: list  # ints in base units (or counts); floats for a score; None where there is none
    decimals: int = 0  # base-unit decimals: the value drawn is value / 10**decimals
    unit: str = ""
    color: str = BLUE

    def text(self, value) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.2f}"
        return units_text(value, self.decimals)


@dataclass(frozen=True)
class Chart:
    """One chart: `kind` is "bars", "steps" (a balance held until it changes) or "lines"; `x` is
    each day's UTC midnight in Unix seconds, or 0..n-1 when `categories` (then `x_labels` name
    them on the axis). `summary` is the text alternative: what it shows and the latest figure."""

    key: str
    title: str
    summary: str
    kind: str
    x: list[int]
    x_labels: list[str]
    series: list[Series]
    categories: bool = False
    y_max: float | None = None

    @property
    def element_id(self) -> str:
        return f"chart-{self.key}-data"

    def data(self) -> dict:
        """What charts.js reads (json_script). `whole`: every value is a whole count (ticks at integers)."""
        whole = all(s.decimals == 0 and all(isinstance(v, int) for v in s.values) for s in self.series)
        return {"kind": self.kind, "x": self.x, "x_labels": self.x_labels, "categories": self.categories,
                "y_max": self.y_max, "whole": whole, "series": [asdict(s) for s in self.series]}

    def rows(self) -> list[tuple[str, list[str]]]:
        """The table: each x as text, with each series' value there."""
        return [(label, [s.text(s.values[i]) for s in self.series]) for i, label in enumerate(self.x_labels)]

    def headers(self) -> list[str]:
        return [f"{s.label} ({s.unit})" if s.unit else s.label for s in self.series]


def days_ending(today: date, days: int = DAYS) -> list[date]:
    return [today - timedelta(days=days - 1 - i) for i in range(days)]


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def day_axis(days: list[date]) -> tuple[list[int], list[str]]:
    return [int(day_start(day).timestamp()) for day in days], [day.isoformat() for day in days]


def sums_by_day(queryset, *, on: str, total) -> dict[date, int]:
    """`total` (an aggregate) of `queryset` per UTC day of its `on` field."""
    rows = queryset.annotate(day=TruncDate(on, tzinfo=UTC)).values("day").annotate(total=total).order_by("day")
    return {row["day"]: row["total"] or 0 for row in rows}


def per_day(days: list[date], sums: dict[date, int]) -> list[int]:
    return [sums.get(day, 0) for day in days]


def end_of_day_totals(accounts: Q, days: list[date], *, sign: int = 1) -> list[int]:
    """Each day's closing total of the accounts matching `accounts` (times `sign`): today's is
    their balance now, and each earlier day's is the next day's less that day's movements."""
    now_total = LedgerAccount.objects.filter(accounts).aggregate(total=Sum("balance"))["total"] or 0
    moved = sums_by_day(LedgerEntry.objects.filter(account__in=LedgerAccount.objects.filter(accounts),
                                                   created_at__gte=day_start(days[0])),
                        on="created_at", total=Sum("amount"))
    closing, running = [], now_total
    for day in reversed(days):
        closing.append(sign * running)
        running -= moved.get(day, 0)
    return closing[::-1]


# --- The treasury console ----------------------------------------------------------------------

def treasury_charts(*, today: date | None = None) -> list[Chart]:
    days = days_ending(today or timezone.now().date())
    x, labels = day_axis(days)
    return [_supply_chart(days, x, labels), _staking_chart(days, x, labels), _burns_chart(days, x, labels),
            _balances_chart(days, x, labels)]


def _supply_chart(days, x, labels) -> Chart:
    # Circulating = minted - burned = -(issuer + burned): the issuer's balance is minus what it minted.
    circulating = end_of_day_totals(Q(code__in=(PEER_ISSUER_CODE, PEER_BURNED_CODE)), days, sign=-1)
    return Chart(
        key="supply", title="$PEER in circulation at the end of each day", kind="steps", x=x, x_labels=labels,
        summary=f"Circulating now: {peer_text(circulating[-1])} (all that was minted, less what was burned).",
        series=[Series("Circulating", circulating, PEER_DECIMALS, "PEER", BLUE)])


def _staking_chart(days, x, labels) -> Chart:
    # Apart from the supply: next to a billion circulating, the stakes would draw as a flat 0.
    staked = end_of_day_totals(Q(kind=AccountKind.STAKED, asset=Asset.PEER), days)
    bonded = end_of_day_totals(Q(kind=AccountKind.BOND, asset=Asset.PEER), days)
    return Chart(
        key="staking", title="$PEER staked and bonded at the end of each day", kind="steps", x=x, x_labels=labels,
        summary=f"Staked now: {peer_text(staked[-1])}; bonded by workers: {peer_text(bonded[-1])}.",
        series=[Series("Staked", staked, PEER_DECIMALS, "PEER", GREEN),
                Series("Bonded", bonded, PEER_DECIMALS, "PEER", PURPLE)])


def _burns_chart(days, x, labels) -> Chart:
    burned = per_day(days, sums_by_day(
        LedgerEntry.objects.filter(account__code=PEER_BURNED_CODE, created_at__gte=day_start(days[0])),
        on="created_at", total=Sum("amount")))
    ever = LedgerAccount.objects.filter(code=PEER_BURNED_CODE).values_list("balance", flat=True).first() or 0
    return Chart(
        key="burns", title="$PEER burned per day", kind="bars", x=x, x_labels=labels,
        summary=f"Burned today: {peer_text(burned[-1])}; in the last {len(days)} days: {peer_text(sum(burned))}; "
                f"ever: {peer_text(ever)}. Slashed bonds are burned, less the challenger's share.",
        series=[Series("Burned", burned, PEER_DECIMALS, "PEER", RED)])


def _balances_chart(days, x, labels) -> Chart:
    treasury = end_of_day_totals(Q(code=TREASURY_CODE), days)
    pool = end_of_day_totals(Q(code=STAKERS_POOL_CODE), days)
    return Chart(
        key="treasury", title="Treasury and stakers' pool at the end of each day", kind="steps", x=x,
        x_labels=labels,
        summary=f"Treasury now: {usdc_text(treasury[-1])}; stakers' pool: {usdc_text(pool[-1])} "
                f"(6% and 24% of every job's price; the pool is paid out each epoch).",
        series=[Series("Treasury", treasury, USDC_DECIMALS, "USDC", BLUE),
                Series("Stakers' pool", pool, USDC_DECIMALS, "USDC", GREEN)])
