"""REST: $PEER balances, history, stakes and supply (OpenAPI at /api/schema/).

Amounts are integers of PEER base units (1 PEER = 10**9); in requests a JSON integer or a
string of digits (for clients whose numbers are doubles). POSTs accept an `Idempotency-Key`
header: the same key with the same body answers the same result, with another body 409.
Errors are `{"detail": "...", "code": "..."}` (validation errors add `errors` per field).
"""

import re
from collections.abc import Mapping

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.credits.ledger import IdempotencyConflict, InsufficientFunds

from .models import UnstakeRequest
from .selectors import peer_balances, peer_entries_for_user, peer_supply, unstake_requests_for_user
from .services import StakingError, peer_stake, unstake_claim, unstake_request

IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,100}")
HISTORY_MAX = 200


# --- serializers --------------------------------------------------------------------------

@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1},
                                {"type": "string", "pattern": "^[0-9]+$"}],
                      "description": "PEER base units (1 PEER = 10**9), at most the total supply."})
class PeerAmountField(serializers.Field):
    default_error_messages = {
        "invalid": "Must be a whole number of PEER base units (a JSON integer or a string of digits).",
        "not_positive": "Must be positive.",
        "too_large": "Exceeds the total $PEER supply ({supply} base units).",
    }

    def to_internal_value(self, data):
        # bool is an int in Python; floats (even 5.0) are refused rather than silently truncated.
        if isinstance(data, str) and re.fullmatch(r"[0-9]{1,30}", data):
            data = int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        if data <= 0:
            self.fail("not_positive")
        if data > settings.PEER_INITIAL_SUPPLY:
            self.fail("too_large", supply=settings.PEER_INITIAL_SUPPLY)
        return data

    def to_representation(self, value):
        return value


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is an error rather than a silent default."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class AmountSerializer(StrictSerializer):
    amount = PeerAmountField()


class EmptySerializer(StrictSerializer):
    pass


class PeerBondSerializer(serializers.Serializer):
    worker_id = serializers.UUIDField()
    worker_name = serializers.CharField()
    locked = serializers.IntegerField(help_text="Bond counted for the verified tier.")
    releasing = serializers.IntegerField(help_text="Released, in cooldown; still slashable.")


class PeerBalanceSerializer(serializers.Serializer):
    liquid = serializers.IntegerField()
    staked = serializers.IntegerField(help_text="Earns a pro rata share of the stakers' pool each epoch.")
    unstaking = serializers.IntegerField(help_text="In cooldown; claim each request after its available_at.")
    bonds = PeerBondSerializer(many=True)


class PeerEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    amount = serializers.IntegerField(help_text="PEER base units; negative leaves the account.")
    account = serializers.CharField(source="account.code")
    account_kind = serializers.CharField(source="account.kind")
    kind = serializers.CharField(source="transaction.kind")
    reference = serializers.CharField(source="transaction.reference")
    memo = serializers.CharField(source="transaction.memo")
    created_at = serializers.DateTimeField()


class StakeResultSerializer(serializers.Serializer):
    transaction_id = serializers.IntegerField(source="id")
    amount = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_amount(self, txn) -> int:
        return max(entry.amount for entry in txn.entries.all())


class UnstakeRequestSerializer(serializers.ModelSerializer):
    worker_id = serializers.UUIDField(allow_null=True)
    payable = serializers.IntegerField(help_text="amount - slashed: what the claim pays.")

    class Meta:
        model = UnstakeRequest
        fields = ("id", "source", "worker_id", "amount", "slashed", "payable", "state", "requested_at",
                  "available_at", "claimed_at")


class PeerSupplySerializer(serializers.Serializer):
    minted = serializers.IntegerField()
    burned = serializers.IntegerField()
    circulating = serializers.IntegerField(help_text="minted - burned")
    staked = serializers.IntegerField()
    unstaking = serializers.IntegerField()
    bonded = serializers.IntegerField()
    treasury = serializers.IntegerField()


ErrorSerializer = inline_serializer("StakingError", {
    "detail": serializers.CharField(), "code": serializers.CharField(),
    "errors": serializers.DictField(required=False)})
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="Up to 100 printable characters; replays of the same request answer the same result.")
POST_ERRORS = {400: ErrorSerializer, 409: ErrorSerializer}


# --- helpers ------------------------------------------------------------------------------

def _error(http_status: int, code: str, detail: str, **extra) -> Response:
    return Response({"detail": detail, "code": code, **extra}, status=http_status)


def _invalid(serializer) -> Response:
    detail = "; ".join(f"{field}: {' '.join(str(m) for m in messages)}"
                       for field, messages in serializer.errors.items())
    return _error(400, "invalid", detail, errors=serializer.errors)


def _account_name(code: str) -> str:
    parts = code.split(":")
    return {"staked": "staked", "unstaking": "unstaking", "bond": "bond", "unbonding": "releasing bond"}.get(
        parts[-2] if len(parts) == 4 else "", "liquid")


def _refused(exc: Exception) -> Response:
    """The one mapping of service refusals to HTTP: all are 409 (the request was well formed)."""
    if isinstance(exc, InsufficientFunds):
        return _error(409, "insufficient_funds",
                      f"Not enough $PEER: the {_account_name(exc.account_code)} balance is {exc.available} "
                      f"base units, this needs {exc.needed}.", available=exc.available, needed=exc.needed)
    if isinstance(exc, IdempotencyConflict):
        return _error(409, "idempotency_conflict",
                      "This Idempotency-Key was already used for a different request.")
    return _error(409, exc.code, str(exc))


class PostView(APIView):
    """Parses the body with `serializer_class` and the Idempotency-Key header, then calls `act`."""

    serializer_class = EmptySerializer
    success_status = status.HTTP_200_OK

    def post(self, request, **kwargs):
        raw_key = request.headers.get("Idempotency-Key")
        if raw_key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(raw_key):
            return _error(400, "invalid", "Idempotency-Key: 1 to 100 printable ASCII characters, no spaces.")
        serializer = self.serializer_class(data=request.data)
        if not serializer.is_valid():
            return _invalid(serializer)
        # Keys are the caller's own namespace: one user's key never collides with another's.
        key = f"api:{request.user.pk}:{raw_key}" if raw_key is not None else None
        try:
            body = self.act(request, key=key, **serializer.validated_data, **kwargs)
        except (StakingError, InsufficientFunds, IdempotencyConflict) as exc:
            return _refused(exc)
        except UnstakeRequest.DoesNotExist:
            return _error(404, "not_found", "No such unstake request of yours.")
        return Response(body, status=self.success_status)


# --- views --------------------------------------------------------------------------------

class BalanceView(APIView):
    @extend_schema(responses=PeerBalanceSerializer, summary="Your $PEER: liquid, staked, unstaking, bonds")
    def get(self, request):
        return Response(PeerBalanceSerializer(peer_balances(user=request.user)).data)


class HistoryView(APIView):
    @extend_schema(
        responses={200: PeerEntrySerializer(many=True), 400: ErrorSerializer},
        summary="Your $PEER ledger entries, newest first",
        parameters=[OpenApiParameter("limit", int, description=f"1..{HISTORY_MAX}, default 50"),
                    OpenApiParameter("before", int, description="Only entries with a smaller id (paging).")])
    def get(self, request):
        params = inline_serializer("HistoryParams", {
            "limit": serializers.IntegerField(min_value=1, max_value=HISTORY_MAX, default=50),
            "before": serializers.IntegerField(min_value=1, required=False)}, data=request.query_params)
        if not params.is_valid():
            return _invalid(params)
        entries = peer_entries_for_user(user=request.user, **params.validated_data)
        return Response(PeerEntrySerializer(entries, many=True).data)


class StakeView(PostView):
    serializer_class = AmountSerializer

    @extend_schema(request=AmountSerializer, responses={200: StakeResultSerializer, **POST_ERRORS},
                   parameters=[IDEMPOTENCY_HEADER], summary="Stake liquid $PEER")
    def post(self, request, **kwargs):
        return super().post(request, **kwargs)

    def act(self, request, *, key, amount):
        txn = peer_stake(user=request.user, amount=amount, idempotency_key=key)
        return StakeResultSerializer(txn).data


class UnstakeView(PostView):
    serializer_class = AmountSerializer
    success_status = status.HTTP_201_CREATED

    @extend_schema(request=AmountSerializer, responses={201: UnstakeRequestSerializer, **POST_ERRORS},
                   parameters=[IDEMPOTENCY_HEADER],
                   summary="Request an unstake (claimable after the cooldown)")
    def post(self, request, **kwargs):
        return super().post(request, **kwargs)

    def act(self, request, *, key, amount):
        return UnstakeRequestSerializer(unstake_request(user=request.user, amount=amount, idempotency_key=key)).data


class ClaimView(PostView):
    @extend_schema(request=None, responses={200: UnstakeRequestSerializer, 404: ErrorSerializer, **POST_ERRORS},
                   parameters=[IDEMPOTENCY_HEADER],
                   summary="Claim an unstake request after its cooldown (409 before, with the time)")
    def post(self, request, **kwargs):
        return super().post(request, **kwargs)

    def act(self, request, *, key, request_id):
        return UnstakeRequestSerializer(unstake_claim(user=request.user, request_id=request_id,
                                                      idempotency_key=key)).data


class StakesView(APIView):
    @extend_schema(responses=UnstakeRequestSerializer(many=True),
                   summary="Your unstake requests and bond releases, newest first")
    def get(self, request):
        return Response(UnstakeRequestSerializer(unstake_requests_for_user(user=request.user), many=True).data)


class SupplyView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=PeerSupplySerializer, summary="$PEER supply: minted, burned, circulating, staked")
    def get(self, request):
        return Response(PeerSupplySerializer(peer_supply()).data)
