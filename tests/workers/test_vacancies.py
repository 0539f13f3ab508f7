"""A relay waiting for a free worker is woken when this process lets one go (vacancies.py): one
waiter per vacancy, the one that began waiting first, which keeps its place across its polls;
without a vacancy a waiter waits out its poll."""

import asyncio
import time

from apps.workers.vacancies import vacancy_announce, vacancy_wait


async def test_without_a_vacancy_a_waiter_waits_out_its_poll():
    started = time.monotonic()
    await vacancy_wait(0.2, since=started)
    assert time.monotonic() - started >= 0.19


async def test_a_vacancy_wakes_the_relay_that_began_waiting_first_only():
    earlier, later = time.monotonic() - 5, time.monotonic()
    second = asyncio.ensure_future(vacancy_wait(30, since=later))
    await asyncio.sleep(0.01)
    first = asyncio.ensure_future(vacancy_wait(30, since=earlier))  # polled again, still first in line
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
    await vacancy_wait(0.1, since=started)
    assert time.monotonic() - started >= 0.09


async def test_a_waiter_that_timed_out_or_left_is_not_woken_in_place_of_one_still_waiting():
    long_ago = time.monotonic() - 60
    await vacancy_wait(0.01, since=long_ago)  # timed out: out of the line
    gone = asyncio.ensure_future(vacancy_wait(30, since=long_ago))
    await asyncio.sleep(0.01)
    gone.cancel()  # its client left
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(vacancy_wait(30, since=time.monotonic()))
    await asyncio.sleep(0.01)
    vacancy_announce()
    await asyncio.wait_for(waiting, 1)
