from django.urls import path

from . import views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("<int:conversation_id>/", views.chat, name="chat-conversation"),
    path("attestation.json", views.attestation, name="chat-attestation"),
]
