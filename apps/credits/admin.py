"""Ledger admin: everything read-only. The ledger is append-only; corrections are reversing
transactions made by services, never edits here."""

from django.contrib import admin

from .models import LedgerAccount, LedgerEntry, LedgerTransaction


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class EntryInline(admin.TabularInline):
    model = LedgerEntry
    fields = ("account", "asset", "amount", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("code", "kind", "asset", "user", "balance", "allow_negative", "created_at")
    list_filter = ("kind", "asset")
    search_fields = ("code", "user__username", "user__email")


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "reference", "idempotency_key", "memo", "created_at")
    list_filter = ("kind",)
    search_fields = ("reference", "idempotency_key", "memo")
    inlines = [EntryInline]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "transaction", "account", "asset", "amount", "created_at")
    list_filter = ("asset",)
    search_fields = ("account__code", "transaction__reference")
