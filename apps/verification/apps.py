from django.apps import AppConfig


class VerificationConfig(AppConfig):
    name = "apps.verification"
    default_auto_field = "django.db.models.BigAutoField"
