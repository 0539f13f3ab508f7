from django.contrib import admin

from .models import CatalogueModel, Worker


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("name", "operator", "status", "tiers", "agent_version", "last_seen_at", "revoked_at")
    readonly_fields = ("token_hash", "token_prefix", "channel_name", "current_job_id", "models_served",
                       "hardware", "connected_at", "last_seen_at", "last_job_at")
    list_filter = ("status",)


@admin.register(CatalogueModel)
class CatalogueModelAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "served_model", "context_length", "dimensions", "active")
    list_filter = ("kind", "active")
