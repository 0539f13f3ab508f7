from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

urlpatterns = [
    path("", include("apps.accounts.urls")),
    path("v1/", include("apps.marketplace.urls_v1")),
    path("", include("apps.credits.urls")),
    path("api/", include("apps.credits.urls_api")),
    path("api/staking/", include("apps.staking.urls_api")),
    path("api/workers/", include("apps.workers.urls_api")),
    path("operator/", include("apps.workers.urls")),
    path("workers/", include("apps.workers.urls_browser")),
    path("chat/", include("apps.chat.urls")),
    path("network/", include("apps.marketplace.urls_network")),
    path("treasury/", include("apps.credits.urls_treasury")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="schema"), name="api-docs"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
