from django.urls import path

from . import views_network

urlpatterns = [
    path("", views_network.network, name="network"),
]
