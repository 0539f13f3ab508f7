"""Open challenges over the API (docs/verification.md): POST /v1/jobs/{id}/challenge opens one,
GET /v1/challenges/{id} tells how it stands. Decided by re-execution in the background."""

from channels.db import database_sync_to_async
from django.db import transaction
from django.http import JsonResponse

from apps.marketplace.errors import ApiError
from apps.marketplace.views_v1 import api_user, openai_errors

from .challenges import ChallengeRefused, challenge_open
from .models import Challenge
from .presenters import challenge_body
from .selectors import challenge_of_user


@openai_errors
async def job_challenge(request, job_id):
    if request.method != "POST":
        raise ApiError(405, "Use POST.", code="method_not_allowed")
    user = await api_user(request)
    try:
        challenge = await database_sync_to_async(_open_and_start)(user=user, job_id=job_id)
    except ChallengeRefused as refused:
        raise ApiError(refused.status, refused.message, code=refused.code) from None
    return JsonResponse(challenge_body(challenge), status=201)


@openai_errors
async def challenge_get(request, challenge_id):
    if request.method != "GET":
        raise ApiError(405, "Use GET.", code="method_not_allowed")
    user = await api_user(request)
    challenge = await database_sync_to_async(challenge_of_user)(challenge_id=challenge_id, user=user)
    if challenge is None:
        raise ApiError(404, f"No challenge {challenge_id} of yours on this node.", code="challenge_not_found")
    return JsonResponse(challenge_body(challenge))


def _open_and_start(*, user, job_id) -> Challenge:
    from .tasks import validation_run_task

    challenge, validation = challenge_open(user=user, job_id=job_id)
    transaction.on_commit(lambda: validation_run_task.delay(str(validation.id)))
    return challenge
