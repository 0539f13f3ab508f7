"""REST: the caller's credits and ledger history (OpenAPI at /api/schema/)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .pricing import MICRO_PER_CREDIT
from .selectors import balance_get, entries_for_user, held_get


class BalanceSerializer(serializers.Serializer):
    balance_micro_usdc = serializers.IntegerField()
    held_micro_usdc = serializers.IntegerField()
    credits = serializers.IntegerField(help_text="Whole credits spendable (1 credit = 10,000 micro-USDC).")


class EntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    amount = serializers.IntegerField(help_text="micro-USDC; negative leaves the account")
    kind = serializers.CharField(source="transaction.kind")
    reference = serializers.CharField(source="transaction.reference")
    created_at = serializers.DateTimeField()


class BalanceView(APIView):
    @extend_schema(responses=BalanceSerializer)
    def get(self, request):
        balance = balance_get(user=request.user)
        return Response(BalanceSerializer({"balance_micro_usdc": balance, "held_micro_usdc": held_get(user=request.user),
                                           "credits": balance // MICRO_PER_CREDIT}).data)


class LedgerView(APIView):
    @extend_schema(responses=EntrySerializer(many=True))
    def get(self, request):
        return Response(EntrySerializer(entries_for_user(user=request.user), many=True).data)
