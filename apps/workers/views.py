"""Operator pages (/operator/): register workers, watch them come online, see their jobs,
earnings, bond and reputation, set prices and the payout address, rotate or revoke tokens.

htmx: the status tables poll their partials every 5 s; the forms on a worker's page post and
swap their own partial. A token is shown once, in the response that created it. The charts
(earnings, jobs, reputation: charts.py) are drawn as of the page load.
"""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.staking.selectors import worker_bond_get

from .charts import earnings_chart, jobs_chart, operator_charts
from .forms import PayoutAddressForm, WorkerOffersForm, WorkerRegisterForm
from .models import Worker
from .selectors import (agent_command, catalogue_list, node_url, worker_earnings_get, worker_jobs_recent,
                        worker_of_operator, worker_payouts_recent, worker_reputation_now, workers_of_operator)
from .services import (WorkerInputError, worker_onboard, worker_revoke_and_disconnect,
                       worker_token_rotate_and_disconnect, worker_update)

PEER_BASE_UNITS = 10**9


def peer_text(amount: int) -> str:
    """PEER base units as a decimal text (exact: no float)."""
    whole, fraction = divmod(amount, PEER_BASE_UNITS)
    return f"{whole:,}" + (f".{fraction:09d}".rstrip("0") if fraction else "")


def _own_worker(request, worker_id) -> Worker:
    worker = worker_of_operator(operator=request.user, worker_id=worker_id)
    if worker is None:
        raise Http404("No worker of yours with this id.")
    return worker


def _token_page(request, template: str, worker: Worker, raw_token: str):
    response = render(request, template, {"worker": worker, "token": raw_token, "server": node_url(),
                                          "command": agent_command(raw_token=raw_token, tiers=worker.tiers),
                                          "simulated_enclave": "confidential" in worker.tiers})
    response["Cache-Control"] = "no-store"  # the only copy of the token: never from a cache
    return response


@login_required
@require_GET
def operator_home(request):
    workers = list(workers_of_operator(operator=request.user))
    return render(request, "workers/operator.html", {
        "workers": workers, "charts": operator_charts(workers=workers) if workers else []})


@login_required
@require_GET
def workers_status(request):
    return render(request, "workers/_workers_status.html", {"workers": workers_of_operator(operator=request.user)})


@login_required
@require_http_methods(["GET", "POST"])
def worker_register(request):
    form = WorkerRegisterForm(request.POST or None, catalogue=catalogue_list())
    if request.method == "POST" and form.is_valid():
        try:
            worker, raw_token = worker_onboard(
                operator=request.user, name=form.cleaned_data["name"], tiers=form.cleaned_data["tiers"],
                hardware_description=form.cleaned_data["hardware_description"], offers=form.offers())
        except WorkerInputError as exc:
            form.add_service_errors(exc)
        else:
            return _token_page(request, "workers/registered.html", worker, raw_token)
    return render(request, "workers/register.html", {"form": form,
                                                     "default_price": settings.PEER_PRICE_PER_TOKEN})


def _detail_context(worker: Worker) -> dict:
    bond = worker_bond_get(worker=worker)
    return {
        "worker": worker, "jobs": worker_jobs_recent(worker=worker), "earnings": worker_earnings_get(worker=worker),
        "payouts": worker_payouts_recent(worker=worker), "bond": bond, "bond_peer": peer_text(bond),
        "bond_required": settings.PEER_VERIFIED_BOND, "bond_required_peer": peer_text(settings.PEER_VERIFIED_BOND),
        "bond_sufficient": bond >= settings.PEER_VERIFIED_BOND,
        "reputation": worker_reputation_now(worker=worker),
        "payout_form": PayoutAddressForm(initial={"payout_address": worker.payout_address}),
        "offers_form": WorkerOffersForm(catalogue=catalogue_list(), offers=worker.offers),
        "default_price": settings.PEER_PRICE_PER_TOKEN,
        "earnings_chart": earnings_chart(workers=[worker]), "jobs_chart": jobs_chart(workers=[worker]),
    }


@login_required
@require_GET
def worker_detail(request, worker_id):
    return render(request, "workers/detail.html", _detail_context(_own_worker(request, worker_id)))


@login_required
@require_GET
def worker_status(request, worker_id):
    return render(request, "workers/_worker_status.html", {"worker": _own_worker(request, worker_id)})


@login_required
@require_POST
def worker_payout_address(request, worker_id):
    worker = _own_worker(request, worker_id)
    form, saved = PayoutAddressForm(request.POST), False
    if form.is_valid():
        try:
            worker_update(worker=worker, payout_address=form.cleaned_data["payout_address"])
            saved = True
        except WorkerInputError as exc:
            form.add_service_errors(exc)
    return render(request, "workers/_payout_form.html", {"worker": worker, "payout_form": form, "saved": saved})


@login_required
@require_POST
def worker_offers(request, worker_id):
    worker = _own_worker(request, worker_id)
    form, saved = WorkerOffersForm(request.POST, catalogue=catalogue_list(), offers=worker.offers), False
    if form.is_valid():
        try:
            worker_update(worker=worker, offers=form.offers())
            saved = True
        except WorkerInputError as exc:
            form.add_service_errors(exc)
    return render(request, "workers/_offers_form.html", {"worker": worker, "offers_form": form, "saved": saved,
                                                         "default_price": settings.PEER_PRICE_PER_TOKEN})


@login_required
@require_POST
def worker_rotate_token(request, worker_id):
    worker = _own_worker(request, worker_id)
    raw_token = worker_token_rotate_and_disconnect(worker_id=worker.id)
    worker.refresh_from_db()
    return _token_page(request, "workers/_token.html", worker, raw_token)


@login_required
@require_POST
def worker_revoke(request, worker_id):
    worker = _own_worker(request, worker_id)
    worker_revoke_and_disconnect(worker_id=worker.id)
    worker.refresh_from_db()
    return render(request, "workers/_worker_status.html", {"worker": worker, "just_revoked": True})
