from django.urls import path

from . import api

urlpatterns = [
    path("balance/", api.BalanceView.as_view(), name="api-balance"),
    path("ledger/", api.LedgerView.as_view(), name="api-ledger"),
]
