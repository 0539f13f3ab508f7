"""The network workflow page (/network/): see workflow.py."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from apps.credits.pricing import MICRO_PER_CREDIT
from apps.credits.selectors import balance_get


@login_required
def network(request):
    return render(request, "network/workflow.html",
                  {"balance_credits": balance_get(user=request.user) // MICRO_PER_CREDIT})
