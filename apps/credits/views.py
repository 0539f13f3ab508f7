"""The staff-only treasury console (htmx refreshes the figures in place)."""

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from .treasury import recent_transactions, treasury_overview

MOVEMENT_KINDS = ("deposit", "x402", "payout", "payout_confirm", "slash", "epoch")


@staff_member_required
def treasury(request):
    context = {"overview": treasury_overview(), "movements": recent_transactions(kinds=MOVEMENT_KINDS)}
    template = "credits/_treasury_figures.html" if request.headers.get("HX-Request") else "credits/treasury.html"
    return render(request, template, context)
