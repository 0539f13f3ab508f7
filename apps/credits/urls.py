"""Root-level credit routes: the paper's `POST /credits/buy` and its deposit status; the REST API
(the same views under /api/) is in urls_api.py."""

from django.urls import path

from . import api

urlpatterns = [
    # The paper writes `curl .../credits/buy` without a slash; a POST cannot follow APPEND_SLASH's redirect.
    path("credits/buy", api.BuyCreditsView.as_view(), name="credits-buy"),
    path("credits/buy/", api.BuyCreditsView.as_view(schema=None)),  # the same, out of the OpenAPI schema
    path("credits/deposits/<str:reference>/", api.DepositStatusView.as_view(), name="credits-deposit"),
]
