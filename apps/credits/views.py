"""The staff-only treasury console (htmx refreshes the figures in place; the charts are drawn
as of the page load)."""

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from .charts import treasury_charts
from .treasury import recent_transactions, treasury_overview

MOVEMENT_KINDS = ("deposit", "x402", "payout", "payout_confirm", "slash", "epoch")


@staff_member_required
def treasury(request):
    context = {"overview": treasury_overview(), "movements": recent_transactions(kinds=MOVEMENT_KINDS)}
    if request.headers.get("HX-Request"):
        return render(request, "credits/_treasury_figures.html", context)
    return render(request, "credits/treasury.html", {**context, "charts": treasury_charts()})
