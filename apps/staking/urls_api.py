"""$PEER REST routes, mounted at /api/staking/."""

from django.urls import path

from . import api

urlpatterns = [
    path("balance/", api.BalanceView.as_view(), name="api-staking-balance"),
    path("history/", api.HistoryView.as_view(), name="api-staking-history"),
    path("stake/", api.StakeView.as_view(), name="api-staking-stake"),
    path("unstake/", api.UnstakeView.as_view(), name="api-staking-unstake"),
    path("unstake/<int:request_id>/claim/", api.ClaimView.as_view(), name="api-staking-claim"),
    path("stakes/", api.StakesView.as_view(), name="api-staking-stakes"),
    path("supply/", api.SupplyView.as_view(), name="api-staking-supply"),
]
