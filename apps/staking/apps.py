from django.apps import AppConfig


class StakingConfig(AppConfig):
    name = "apps.staking"
    default_auto_field = "django.db.models.BigAutoField"
