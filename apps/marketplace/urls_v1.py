from django.urls import path

from apps.verification import views_attestation
from apps.verification import views_v1 as verification_v1

from . import views_v1

urlpatterns = [
    path("models", views_v1.models_list, name="v1-models"),
    path("chat/completions", views_v1.chat_completions, name="v1-chat-completions"),
    path("completions", views_v1.completions, name="v1-completions"),
    path("embeddings", views_v1.embeddings, name="v1-embeddings"),
    path("jobs/<uuid:job_id>/proof", views_v1.job_proof, name="v1-job-proof"),
    path("jobs/<uuid:job_id>/challenge", verification_v1.job_challenge, name="v1-job-challenge"),
    path("challenges/<uuid:challenge_id>", verification_v1.challenge_get, name="v1-challenge"),
    path("attestation", views_attestation.attestation, name="v1-attestation"),
]
