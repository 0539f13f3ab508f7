from django.contrib import admin

from .models import Epoch, Slash, UnstakeRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    """These rows explain ledger movements; changing one here would make it lie."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UnstakeRequest)
class UnstakeRequestAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "source", "worker", "amount", "slashed", "state", "available_at", "claimed_at")
    list_filter = ("source", "state")
    search_fields = ("user__username",)


@admin.register(Slash)
class SlashAdmin(ReadOnlyAdmin):
    list_display = ("id", "worker", "challenger", "amount", "to_challenger", "burned", "reason", "created_at")
    search_fields = ("idempotency_key", "reason")


@admin.register(Epoch)
class EpochAdmin(ReadOnlyAdmin):
    list_display = ("number", "started_at", "ended_at", "pool_amount", "distributed", "remainder", "stakers",
                    "total_staked")
