"""REST for operators (/api/workers/): register workers, read and change them, rotate or revoke
their tokens, list their jobs. OpenAPI at /api/schema/.

Only a worker's operator sees or changes it: anyone else gets 404, as if it did not exist.
Errors are `{"detail": "...", "code": "..."}`; bad input adds `errors` per field (as /api/staking/).
A worker token is in the response that issues it and nowhere else, ever.
"""

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.staking.api import StrictSerializer
from apps.staking.selectors import worker_bond_get

from .selectors import (agent_command, node_url, worker_earnings_get, worker_jobs_recent, worker_link_state,
                        worker_of_operator, worker_payouts_recent, worker_reputation_now, workers_of_operator)
from .services import (WorkerInputError, worker_onboard, worker_revoke_and_disconnect,
                       worker_token_rotate_and_disconnect, worker_update)

JOBS_MAX = 200
OFFERS_HELP = ('Public model name -> {"price_per_token": whole micro-USDC, 0..10000}, e.g. '
               '{"peer-mixtral": {"price_per_token": 100}}. A model not listed is served at the node\'s default price.')


# --- serializers --------------------------------------------------------------------------

class WorkerCreateSerializer(StrictSerializer):
    # Blank passes here so that the service's checks report it together with every other field.
    name = serializers.CharField(allow_blank=True, help_text="At most 100 characters.")
    tiers = serializers.ListField(child=serializers.CharField(), help_text='Some of "open", "verified", '
                                 '"confidential" (verified is routed only with a $PEER bond; confidential only '
                                 'while the agent\'s enclave is attested).')
    hardware_description = serializers.CharField(required=False, allow_blank=True, default="")
    offers = serializers.DictField(required=False, default=dict, help_text=OFFERS_HELP)


class WorkerUpdateSerializer(StrictSerializer):
    name = serializers.CharField(required=False, allow_blank=True)
    hardware_description = serializers.CharField(required=False, allow_blank=True)
    payout_address = serializers.CharField(required=False, allow_blank=True,
                                           help_text='A Solana address (base58); "" clears it.')
    offers = serializers.DictField(required=False, help_text=OFFERS_HELP + " Replaces all offers.")


class WorkerSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.SerializerMethodField(help_text="idle or busy (online), offline, or revoked")
    tiers = serializers.ListField(child=serializers.CharField())
    hardware_description = serializers.CharField()
    hardware = serializers.DictField(help_text="As the agent reported it in its last hello.")
    agent_version = serializers.CharField()
    models_served = serializers.ListField(child=serializers.DictField(), help_text="id, digest, backend")
    offers = serializers.DictField(help_text=OFFERS_HELP)
    payout_address = serializers.CharField()
    token_prefix = serializers.CharField(help_text="The first characters of the current token.")
    connected_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()

    def get_status(self, worker) -> str:
        return worker_link_state(worker)


class PayoutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    amount = serializers.IntegerField(help_text="micro-USDC")
    state = serializers.CharField()
    address = serializers.CharField()
    signature = serializers.CharField()
    created_at = serializers.DateTimeField()


class WorkerDetailSerializer(WorkerSerializer):
    earnings_micro_usdc = serializers.IntegerField(help_text="Earned and not yet paid out.")
    bond = serializers.IntegerField(help_text="$PEER base units locked as this worker's bond.")
    bond_required = serializers.IntegerField(help_text="The bond the verified tier needs (PEER base units).")
    reputation = serializers.FloatField(allow_null=True, help_text="0..1; null until measured.")
    payouts = PayoutSerializer(many=True)


class IssuedTokenSerializer(serializers.Serializer):
    worker = WorkerSerializer()
    token = serializers.CharField(help_text="The worker token, shown only in this response.")
    server = serializers.CharField(help_text="The URL the agent connects to.")
    command = serializers.CharField(help_text="The command that starts the agent.")


class JobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    public_model = serializers.CharField()
    tier = serializers.CharField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField(allow_null=True)
    charged_amount = serializers.IntegerField(allow_null=True, help_text="micro-USDC captured (70% to the worker)")
    error_code = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


ErrorSerializer = inline_serializer("WorkerError", {
    "detail": serializers.CharField(), "code": serializers.CharField(),
    "errors": serializers.DictField(required=False)})
NOT_FOUND = {404: ErrorSerializer}


# --- helpers ------------------------------------------------------------------------------

def _error(http_status: int, code: str, detail: str, **extra) -> Response:
    return Response({"detail": detail, "code": code, **extra}, status=http_status)


def _invalid(errors: dict) -> Response:
    errors = {field: messages if isinstance(messages, list) else [messages] for field, messages in errors.items()}
    detail = "; ".join(f"{field}: {' '.join(str(m) for m in messages)}" for field, messages in errors.items())
    return _error(400, "invalid", detail, errors=errors)


def _not_found() -> Response:
    return _error(404, "not_found", "No worker of yours with this id.")


def _issued(worker, raw_token: str, http_status: int, headers=None) -> Response:
    body = {"worker": worker, "token": raw_token, "server": node_url(), "command": agent_command(raw_token=raw_token, tiers=worker.tiers)}
    response = Response(IssuedTokenSerializer(body).data, status=http_status, headers=headers)
    response["Cache-Control"] = "no-store"
    return response


def _detail(worker) -> dict:
    """WorkerDetailSerializer's shape: the worker, its earnings, bond, reputation and payouts."""
    return {**WorkerSerializer(worker).data, "earnings_micro_usdc": worker_earnings_get(worker=worker),
            "bond": worker_bond_get(worker=worker), "bond_required": settings.PEER_VERIFIED_BOND,
            "reputation": worker_reputation_now(worker=worker),
            "payouts": PayoutSerializer(worker_payouts_recent(worker=worker), many=True).data}


class OwnWorkerView(APIView):
    """Resolves `worker_id` to the caller's own worker, or answers 404."""

    def dispatch_own(self, request, worker_id, handler):
        worker = worker_of_operator(operator=request.user, worker_id=worker_id)
        return _not_found() if worker is None else handler(worker)


# --- views --------------------------------------------------------------------------------

class WorkerListView(APIView):
    @extend_schema(responses=WorkerSerializer(many=True), summary="Your workers")
    def get(self, request):
        return Response(WorkerSerializer(workers_of_operator(operator=request.user), many=True).data)

    @extend_schema(request=WorkerCreateSerializer, responses={201: IssuedTokenSerializer, 400: ErrorSerializer},
                   summary="Register a worker; the answer holds its token, shown only this once")
    def post(self, request):
        serializer = WorkerCreateSerializer(data=request.data)
        if not serializer.is_valid():
            return _invalid(serializer.errors)
        try:
            worker, raw_token = worker_onboard(operator=request.user, **serializer.validated_data)
        except WorkerInputError as exc:
            return _invalid(exc.errors)
        location = request.build_absolute_uri(reverse("api-worker", args=[worker.id]))
        return _issued(worker, raw_token, 201, headers={"Location": location})


class WorkerDetailView(OwnWorkerView):
    @extend_schema(responses={200: WorkerDetailSerializer, **NOT_FOUND},
                   summary="One of your workers, with its earnings, bond, reputation and payouts")
    def get(self, request, worker_id):
        return self.dispatch_own(request, worker_id, lambda worker: Response(_detail(worker)))

    @extend_schema(request=WorkerUpdateSerializer, responses={200: WorkerDetailSerializer, 400: ErrorSerializer,
                                                              **NOT_FOUND},
                   summary="Change the name, hardware description, payout address or offers")
    def patch(self, request, worker_id):
        def update(worker):
            serializer = WorkerUpdateSerializer(data=request.data)
            if not serializer.is_valid():
                return _invalid(serializer.errors)
            try:
                worker_update(worker=worker, **serializer.validated_data)
            except WorkerInputError as exc:
                return _invalid(exc.errors)
            return Response(_detail(worker))
        return self.dispatch_own(request, worker_id, update)


class WorkerRevokeView(OwnWorkerView):
    @extend_schema(request=None, responses={200: WorkerSerializer, **NOT_FOUND},
                   summary="Revoke the worker's token; a connected agent is disconnected at once")
    def post(self, request, worker_id):
        def revoke(worker):
            worker_revoke_and_disconnect(worker_id=worker.id)
            worker.refresh_from_db()
            return Response(WorkerSerializer(worker).data)
        return self.dispatch_own(request, worker_id, revoke)


class WorkerRotateTokenView(OwnWorkerView):
    @extend_schema(request=None, responses={200: IssuedTokenSerializer, **NOT_FOUND},
                   summary="Issue a new token: the old one stops working and its agent is disconnected "
                           "(a revoked worker is reinstated)")
    def post(self, request, worker_id):
        def rotate(worker):
            raw_token = worker_token_rotate_and_disconnect(worker_id=worker.id)
            worker.refresh_from_db()
            return _issued(worker, raw_token, 200)
        return self.dispatch_own(request, worker_id, rotate)


class WorkerJobsView(OwnWorkerView):
    @extend_schema(responses={200: JobSerializer(many=True), 400: ErrorSerializer, **NOT_FOUND},
                   parameters=[OpenApiParameter("limit", int, description=f"1..{JOBS_MAX}, default 50")],
                   summary="The worker's recent jobs, newest first")
    def get(self, request, worker_id):
        params = inline_serializer("WorkerJobsParams", {
            "limit": serializers.IntegerField(min_value=1, max_value=JOBS_MAX, default=50)}, data=request.query_params)
        if not params.is_valid():
            return _invalid(params.errors)
        return self.dispatch_own(request, worker_id, lambda worker: Response(JobSerializer(
            worker_jobs_recent(worker=worker, limit=params.validated_data["limit"]), many=True).data))
