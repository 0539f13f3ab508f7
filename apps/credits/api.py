"""REST: the caller's credits and ledger history, and buying credits with USDC (OpenAPI at /api/schema/)."""

import json
from decimal import Decimal

from django.conf import settings as django_settings
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from .deposits.selectors import DepositReferenceNotFound, deposit_reference_access, deposit_reference_state
from .deposits.services import DepositsUnavailable, deposit_config, deposit_reference_create
from .pricing import MICRO_PER_CREDIT, MICRO_PER_USDC
from .selectors import balance_get, entries_for_user, held_get
from .solana.pay import USDC_DECIMALS, AmountError, micro_to_usdc_text, transfer_request_url, usdc_to_micro


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


# --- Buying credits with USDC on Solana (docs/payments.md) ------------------------------------

class DecimalJSONParser(JSONParser):
    """JSON whose numbers are read as Decimal, never float: {"usdc": 0.1} means exactly 0.1 USDC."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", django_settings.DEFAULT_CHARSET)
        try:
            return json.loads(stream.read().decode(encoding), parse_float=Decimal, parse_constant=_no_constants)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc


class PaperJSONParser(DecimalJSONParser):
    """The paper's `curl .../credits/buy -d '{"account":"me","usdc":10}'` labels its JSON as a form."""

    media_type = "application/x-www-form-urlencoded"


class UnlabelledJSONParser(DecimalJSONParser):
    """A body sent with no content type at all (or any other label) is read as JSON too."""

    media_type = "*/*"


def _no_constants(name):
    raise ValueError(f"{name} is not a number")


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response:
    return Response({"error": {"message": message, "param": param, "code": code}}, status=status)


class BuyRequestSerializer(serializers.Serializer):
    account = serializers.CharField(default="me", help_text='Only "me": the account of the API key.')
    usdc = serializers.CharField(help_text='USDC to pay: a positive decimal, at most 6 decimals, e.g. 10 or "2.5".')


class PurchaseSerializer(serializers.Serializer):
    account = serializers.CharField()
    status = serializers.CharField()
    usdc = serializers.CharField(help_text="The amount to pay in USDC, as a decimal string.")
    micro_usdc = serializers.IntegerField(help_text="The same in micro-USDC (USDC's atomic unit).")
    amount = serializers.CharField(help_text="The same in atomic units, as a string (x402's form).")
    credits = serializers.IntegerField(help_text="Whole credits it buys (1 credit = 10,000 micro-USDC).")
    network = serializers.CharField(help_text="CAIP-2 id of the Solana cluster.")
    recipient = serializers.CharField(help_text="The node's wallet (Solana Pay recipient).")
    token_account = serializers.CharField(help_text="The wallet's USDC associated token account: the destination.")
    mint = serializers.CharField()
    decimals = serializers.IntegerField()
    reference = serializers.CharField(help_text="Add as a read-only, non-signer account of the TransferChecked.")
    memo = serializers.CharField(help_text="Informational SPL memo; matching is by reference.")
    url = serializers.CharField(help_text="Solana Pay transfer request URL.")
    expires_at = serializers.DateTimeField()
    status_url = serializers.CharField()


class DepositSerializer(serializers.Serializer):
    signature = serializers.CharField()
    status = serializers.CharField()
    micro_usdc = serializers.IntegerField()
    reason = serializers.CharField()
    payer = serializers.CharField()
    slot = serializers.IntegerField(allow_null=True)
    ledger_transaction = serializers.IntegerField(source="ledger_transaction_id", allow_null=True)
    created_at = serializers.DateTimeField()


class PurchaseStatusSerializer(serializers.Serializer):
    reference = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "credited", "rejected", "expired"])
    micro_usdc = serializers.IntegerField(help_text="What was asked for.")
    credited_micro_usdc = serializers.IntegerField(help_text="What arrived and was credited.")
    signature = serializers.CharField(allow_null=True, help_text="The first credited transfer.")
    ledger_transaction = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(help_text="Why the transfers seen were rejected (status rejected).")
    expires_at = serializers.DateTimeField()
    deposits = DepositSerializer(many=True)


def _purchase_body(reference, config, status_url: str) -> dict:
    micro = reference.micro_usdc
    usdc = micro_to_usdc_text(micro)
    label = getattr(django_settings, "PEER_DEPOSIT_LABEL", "Peer Cycles")
    url = transfer_request_url(recipient=str(config.recipient), micro=micro, mint=str(config.mint),
                               reference=reference.key, label=label, message=f"{usdc} USDC of credits",
                               memo=reference.memo)
    return {"account": "me", "status": "pending", "usdc": usdc, "micro_usdc": micro, "amount": str(micro),
            "credits": micro // MICRO_PER_CREDIT, "network": django_settings.PEER_SOLANA_NETWORK,
            "recipient": str(config.recipient), "token_account": str(config.token_account), "mint": str(config.mint),
            "decimals": USDC_DECIMALS, "reference": reference.key, "memo": reference.memo, "url": url,
            "expires_at": reference.expires_at, "status_url": status_url}


class BuyCreditsView(APIView):
    """POST /credits/buy (and /api/credits/buy): what to pay, to whom, and how."""

    parser_classes = [DecimalJSONParser, PaperJSONParser, UnlabelledJSONParser]
    status_route = "credits-deposit"

    @extend_schema(request=BuyRequestSerializer, responses={201: PurchaseSerializer})
    def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            return _error(400, 'Send a JSON object such as {"account": "me", "usdc": 10}.', code="invalid_body")
        if data.get("account", "me") != "me":
            return _error(403, 'Credits can only be bought for the account of your API key: send "account": "me".',
                          param="account", code="account_not_yours")
        if "usdc" not in data:
            return _error(400, "usdc is required: the amount of USDC to pay.", param="usdc", code="invalid_amount")
        try:
            micro = usdc_to_micro(data["usdc"], max_micro=getattr(django_settings, "PEER_DEPOSIT_MAX_MICRO_USDC",
                                                                   1_000_000 * MICRO_PER_USDC))
            config = deposit_config()
        except AmountError as exc:
            return _error(400, str(exc), param="usdc", code="invalid_amount")
        except DepositsUnavailable as exc:
            return _error(503, str(exc), code="deposits_unavailable")
        reference = deposit_reference_create(user=request.user, micro_usdc=micro)
        status_url = request.build_absolute_uri(reverse(self.status_route, args=[reference.key]))
        body = _purchase_body(reference, config, status_url)
        return Response(PurchaseSerializer(body).data, status=201, headers={"Location": status_url})


class DepositStatusView(APIView):
    """GET /credits/deposits/<reference>/: pending, credited, rejected or expired; the owner only."""

    @extend_schema(responses=PurchaseStatusSerializer)
    def get(self, request, reference):
        try:
            purchase = deposit_reference_access(user=request.user, key=reference)
        except DepositReferenceNotFound:
            return _error(404, "No purchase with this reference on your account.", param="reference", code="not_found")
        state = deposit_reference_state(reference=purchase, now=timezone.now())
        first = state.credited[0] if state.credited else None
        return Response(PurchaseStatusSerializer({
            "reference": purchase.key, "status": state.status, "micro_usdc": purchase.micro_usdc,
            "credited_micro_usdc": state.credited_micro_usdc, "signature": first.signature if first else None,
            "ledger_transaction": first.ledger_transaction_id if first else None, "reason": state.reason,
            "expires_at": purchase.expires_at, "deposits": state.deposits,
        }).data)
