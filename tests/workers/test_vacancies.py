"""A relay waiting for a free worker is woken when this process lets one go (vacancies.py):
one waiter per vacancy, the longest waiting first; without a vacancy it waits out its poll."""

import asyncio
import time

from apps.workers.vacancies import vacancy_announce, vacancy_wait


async def test_without_a_vacancy_a_waiter_waits_out_its_poll():
    started = time.monotonic()
    await vacancy_wait(0.2)
    assert time.monotonic() - started >= 0.19


async def test_a_vacancy_wakes_the_longest_waiting_relay_only():
    first = asyncio.ensure_future(vacancy_wait(30))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(vacancy_wait(30))
    await asyncio.sleep(0.01)
    vacancy_announce()
    await asyncio.wait_for(first, 1)
    await asyncio.sleep(0.05)
    assert not second.done()
    vacancy_announce()
    await asyncio.wait_for(second, 1)


async def test_a_vacancy_with_nobody_waiting_is_not_kept_for_a_later_waiter():
    vacancy_announce()
    started = time.monotonic()
    await vacancy_wait(0.1)
    assert time.monotonic() - started >= 0.09


async def test_a_waiter_that_timed_out_or_left_is_not_woken_in_place_of_one_still_waiting():
    await vacancy_wait(0.01)  # timed out: out of the line
    gone = asyncio.ensure_future(vacancy_wait(30))
    await asyncio.sleep(0.01)
    gone.cancel()  # its client left
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(vacancy_wait(30))
    await asyncio.sleep(0.01)
    vacancy_announce()
    await asyncio.wait_for(waiting, 1)
