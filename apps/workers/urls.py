"""Operator pages, mounted at /operator/."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.operator_home, name="operator"),
    path("workers/status/", views.workers_status, name="operator-workers-status"),
    path("workers/new/", views.worker_register, name="operator-worker-register"),
    path("workers/<uuid:worker_id>/", views.worker_detail, name="operator-worker"),
    path("workers/<uuid:worker_id>/status/", views.worker_status, name="operator-worker-status"),
    path("workers/<uuid:worker_id>/payout-address/", views.worker_payout_address, name="operator-worker-payout-address"),
    path("workers/<uuid:worker_id>/offers/", views.worker_offers, name="operator-worker-offers"),
    path("workers/<uuid:worker_id>/rotate-token/", views.worker_rotate_token, name="operator-worker-rotate-token"),
    path("workers/<uuid:worker_id>/revoke/", views.worker_revoke, name="operator-worker-revoke"),
]
