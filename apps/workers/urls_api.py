"""Operators' REST routes, mounted at /api/workers/."""

from django.urls import path

from . import api

urlpatterns = [
    path("", api.WorkerListView.as_view(), name="api-workers"),
    path("<uuid:worker_id>/", api.WorkerDetailView.as_view(), name="api-worker"),
    path("<uuid:worker_id>/revoke/", api.WorkerRevokeView.as_view(), name="api-worker-revoke"),
    path("<uuid:worker_id>/rotate-token/", api.WorkerRotateTokenView.as_view(), name="api-worker-rotate-token"),
    path("<uuid:worker_id>/jobs/", api.WorkerJobsView.as_view(), name="api-worker-jobs"),
]
