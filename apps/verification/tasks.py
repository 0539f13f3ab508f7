from asgiref.sync import async_to_sync
from celery import shared_task

from .resume import validations_resume
from .runner import validation_run
from .services import jobs_sample


@shared_task
def jobs_sample_task() -> int:
    """Draw among newly completed verified jobs; start a re-execution for each one drawn."""
    drawn = jobs_sample()
    for validation_id in drawn:
        validation_run_task.delay(str(validation_id))
    return len(drawn)


@shared_task
def validation_run_task(validation_id: str) -> None:
    async_to_sync(validation_run)(validation_id)


@shared_task
def validations_resume_task() -> int:
    """Pick up validations left behind (no validator was idle, a runner died, a pay or verdict
    not yet posted); start the runnable ones again."""
    runnable = validations_resume()
    for validation_id in runnable:
        validation_run_task.delay(str(validation_id))
    return len(runnable)
