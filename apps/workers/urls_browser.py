"""The browser worker's routes, mounted at /workers/."""

from django.urls import path

from . import views_browser

urlpatterns = [
    path("browser/", views_browser.browser_worker, name="browser-worker"),
    path("browser/register/", views_browser.browser_worker_register, name="browser-worker-register"),
    path("browser/model/<str:digest>/<str:filename>", views_browser.browser_model_file, name="browser-worker-model"),
]
