"""Pages: the landing page and the account page (credits, ledger, API keys with htmx)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponseNotAllowed
from django.shortcuts import render
from django.views.decorators.http import require_POST

from apps.credits.selectors import balance_get, entries_for_user, held_get
from apps.marketplace.network_stats import network_stats_get, network_stats_text
from apps.workers.selectors import catalogue_list

from .selectors import api_keys_list
from .services import api_key_issue, api_key_revoke


def home(request):
    """The landing page: the network's figures now; the page keeps them live (network_stats.py)."""
    stats = network_stats_get()
    return render(request, "home.html", {"models": catalogue_list(), "stats": stats,
                                         "figures": network_stats_text(stats)})


@login_required
def account(request):
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    return render(request, "accounts/account.html", {
        "balance": balance_get(user=request.user), "held": held_get(user=request.user),
        "entries": entries_for_user(user=request.user), "keys": api_keys_list(user=request.user),
    })


@login_required
@require_POST
def key_create(request):
    _, raw_key = api_key_issue(user=request.user, name=request.POST.get("name", "web")[:100])
    return render(request, "accounts/_keys.html", {"keys": api_keys_list(user=request.user), "new_key": raw_key})


@login_required
@require_POST
def key_revoke(request, key_id: int):
    api_key_revoke(user=request.user, key_id=key_id)
    return render(request, "accounts/_keys.html", {"keys": api_keys_list(user=request.user)})
