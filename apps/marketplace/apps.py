from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "apps.marketplace"
    default_auto_field = "django.db.models.BigAutoField"
