from django.urls import path

from . import api

urlpatterns = [
    path("balance/", api.BalanceView.as_view(), name="api-balance"),
    path("ledger/", api.LedgerView.as_view(), name="api-ledger"),
    path("credits/buy", api.BuyCreditsView.as_view(status_route="api-credits-deposit"), name="api-credits-buy"),
    path("credits/buy/", api.BuyCreditsView.as_view(status_route="api-credits-deposit", schema=None)),
    path("credits/deposits/<str:reference>/", api.DepositStatusView.as_view(), name="api-credits-deposit"),
]
