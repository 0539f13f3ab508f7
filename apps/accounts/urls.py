from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("account/", views.account, name="account"),
    path("account/keys/", views.key_create, name="key-create"),
    path("account/keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
]
