"""Schedule expressions (rate and cron) and the Scheduler's event, without a host."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from localfaas import schedule
from localfaas.schedule import Scheduler
from localfaas.schedule_expression import (
    CronFields,
    ScheduleExhausted,
    next_cron_time,
    parse_cron,
    parse_rate,
    parse_schedule,
)
from localfaas.template import ScheduleEvent


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- rate ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "minutes"), [
    ("rate(1 minute)", 1),
    ("rate(5 minutes)", 5),
    ("rate(1 hour)", 60),
    ("rate(2 hours)", 120),
    ("rate(1 day)", 1440),
    ("rate(3 days)", 3 * 1440),
    (" rate(10 minutes) ", 10),
])
def test_rate_valid(expression: str, minutes: int) -> None:
    assert parse_rate(expression) == minutes
    assert parse_schedule(expression) == minutes


@pytest.mark.parametrize(("expression", "message"), [
    ("rate(1 minutes)", "must be 'minute'"),
    ("rate(5 minute)", "must be 'minutes'"),
    ("rate(1 hours)", "must be 'hour'"),
    ("rate(2 day)", "must be 'days'"),
    ("rate(0 minutes)", "positive integer"),
    ("rate(-1 minutes)", "positive integer"),
    ("rate(1.5 minutes)", "positive integer"),
    ("rate(five minutes)", "positive integer"),
    ("rate(5 seconds)", "unit must be"),
    ("rate(2 weeks)", "unit must be"),
    ("rate(5)", "must look like"),
    ("rate()", "must look like"),
    ("rate(5 minutes", "must look like"),
])
def test_rate_invalid(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rate(expression)


@pytest.mark.parametrize("expression", ["every 5 minutes", "at(2024-05-01T12:00:00)", "", "RATE(5 minutes)"])
def test_schedule_expression_must_be_rate_or_cron(expression: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_schedule(expression)


# -- cron: next times --------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "after", "expected"), [
    # daily 10:15; strictly after, minute resolution
    ("cron(15 10 * * ? *)", "2024-05-01 09:00", ["2024-05-01 10:15", "2024-05-02 10:15"]),
    ("cron(15 10 * * ? *)", "2024-05-01 10:14:59.999", ["2024-05-01 10:15"]),
    ("cron(15 10 * * ? *)", "2024-05-01 10:15", ["2024-05-02 10:15"]),
    ("cron(15 10 * * ? *)", "2024-05-01 10:15:30", ["2024-05-02 10:15"]),
    ("cron(15 10 * * ? *)", "2024-12-31 11:00", ["2025-01-01 10:15"]),
    # every 5 minutes 08:00-17:55 on weekdays (2024-05-03 is a Friday)
    ("cron(0/5 8-17 ? * MON-FRI *)", "2024-05-03 07:59",
     ["2024-05-03 08:00", "2024-05-03 08:05", "2024-05-03 08:10"]),
    ("cron(0/5 8-17 ? * MON-FRI *)", "2024-05-03 17:50", ["2024-05-03 17:55", "2024-05-06 08:00"]),
    ("cron(0/5 8-17 ? * 2-6 *)", "2024-05-04 12:00", ["2024-05-06 08:00"]),
    # steps
    ("cron(*/20 0 * * ? *)", "2024-05-01 00:00",
     ["2024-05-01 00:20", "2024-05-01 00:40", "2024-05-02 00:00"]),
    ("cron(5-30/10 1 * * ? *)", "2024-05-01 00:00",
     ["2024-05-01 01:05", "2024-05-01 01:15", "2024-05-01 01:25", "2024-05-02 01:05"]),
    ("cron(0 0 1 JAN/3 ? *)", "2024-01-01 00:00",
     ["2024-04-01 00:00", "2024-07-01 00:00", "2024-10-01 00:00"]),
    # lists, names, lower case
    ("cron(0,30 6,18 ? * sun *)", "2024-05-04 00:00",
     ["2024-05-05 06:00", "2024-05-05 06:30", "2024-05-05 18:00", "2024-05-05 18:30", "2024-05-12 06:00"]),
    ("cron(0 0 1 MAR,SEP ? *)", "2024-03-01 00:00", ["2024-09-01 00:00", "2025-03-01 00:00"]),
    # wrapping ranges
    ("cron(0 22-1 * * ? *)", "2024-05-01 12:00",
     ["2024-05-01 22:00", "2024-05-01 23:00", "2024-05-02 00:00", "2024-05-02 01:00", "2024-05-02 22:00"]),
    ("cron(0 12 ? * FRI-MON *)", "2024-05-01 00:00",
     ["2024-05-03 12:00", "2024-05-04 12:00", "2024-05-05 12:00", "2024-05-06 12:00", "2024-05-10 12:00"]),
    # day 31 only in months that have it; Feb 29 in leap years
    ("cron(0 0 31 * ? *)", "2024-04-01 00:00", ["2024-05-31 00:00", "2024-07-31 00:00"]),
    ("cron(0 0 29 2 ? *)", "2024-03-01 00:00", ["2028-02-29 00:00"]),
    # L in day-of-month: the last day
    ("cron(0 12 L * ? *)", "2024-01-31 12:00", ["2024-02-29 12:00", "2024-03-31 12:00", "2024-04-30 12:00"]),
    ("cron(0 12 L * ? *)", "2023-02-01 00:00", ["2023-02-28 12:00"]),
    # nL in day-of-week: the last Friday (2024-05-31, 2024-06-28 are Fridays)
    ("cron(0 9 ? * 6L *)", "2024-05-01 00:00", ["2024-05-31 09:00", "2024-06-28 09:00"]),
    ("cron(0 9 ? * FRIL *)", "2024-05-31 09:00", ["2024-06-28 09:00"]),
    # bare L in day-of-week is 7, Saturday (every Saturday)
    ("cron(0 0 ? * L *)", "2024-05-01 00:00", ["2024-05-04 00:00", "2024-05-11 00:00"]),
    # W: 2024-06-15 is a Saturday -> Friday 14th; 2024-09-15 is a Sunday -> Monday 16th;
    # 2024-05-15 is a Wednesday -> itself
    ("cron(0 9 15W * ? *)", "2024-06-01 00:00", ["2024-06-14 09:00"]),
    ("cron(0 9 15W * ? *)", "2024-09-01 00:00", ["2024-09-16 09:00"]),
    ("cron(0 9 15W * ? *)", "2024-05-01 00:00", ["2024-05-15 09:00"]),
    # W does not cross the month: 2024-06-01 is a Saturday -> Monday 3rd;
    # 2024-06-30 is a Sunday -> Friday 28th
    ("cron(0 9 1W * ? *)", "2024-05-31 00:00", ["2024-06-03 09:00"]),
    ("cron(0 9 30W 6 ? *)", "2024-01-01 00:00", ["2024-06-28 09:00"]),
    # LW: the last weekday (2024-08-31 is a Saturday)
    ("cron(0 9 LW * ? *)", "2024-08-01 00:00", ["2024-08-30 09:00", "2024-09-30 09:00"]),
    # n#k: first Monday (2024-05-06, 2024-06-03, 2024-07-01)
    ("cron(0 9 ? * 2#1 *)", "2024-05-01 00:00", ["2024-05-06 09:00", "2024-06-03 09:00", "2024-07-01 09:00"]),
    ("cron(0 9 ? * MON#1 *)", "2024-05-06 09:00", ["2024-06-03 09:00"]),
    # fifth Friday only in months that have one (2024-05-31, then 2024-08-30)
    ("cron(0 9 ? * 6#5 *)", "2024-05-01 00:00", ["2024-05-31 09:00", "2024-08-30 09:00"]),
    # year restriction
    ("cron(0 0 1 1 ? 2030)", "2024-06-01 00:00", ["2030-01-01 00:00"]),
    ("cron(0 0 1 1 ? 2026-2027)", "2024-06-01 00:00", ["2026-01-01 00:00", "2027-01-01 00:00"]),
    ("cron(30 8 ? * * 2025,2027)", "2025-12-31 08:30", ["2027-01-01 08:30"]),
])
def test_next_cron_time(expression: str, after: str, expected: list[str]) -> None:
    fields = parse_cron(expression)
    current = utc(after)
    for want in expected:
        current = next_cron_time(fields, current)
        assert current == utc(want), f"{expression} after {after}"
        assert current.tzinfo is not None and current.utcoffset() == timedelta(0)


def test_next_cron_time_accepts_a_string_and_any_timezone() -> None:
    assert next_cron_time("cron(15 10 * * ? *)", datetime(2024, 5, 1, 9, 0)) == utc("2024-05-01 10:15")
    paris = timezone(timedelta(hours=2))
    after = datetime(2024, 5, 1, 12, 14, tzinfo=paris)  # 10:14 UTC
    assert next_cron_time("cron(15 10 * * ? *)", after) == utc("2024-05-01 10:15")


def test_next_cron_time_exhausted() -> None:
    with pytest.raises(ScheduleExhausted):
        next_cron_time("cron(0 0 1 1 ? 2020)", utc("2024-01-01 00:00"))
    with pytest.raises(ScheduleExhausted):  # February 30th never comes
        next_cron_time("cron(0 0 30 2 ? *)", utc("2024-01-01 00:00"))
    assert next_cron_time("cron(59 23 31 12 ? 2199)", utc("2199-12-31 23:58")) == utc("2199-12-31 23:59")


def test_parse_cron_fields() -> None:
    fields = parse_cron("cron(0/15 8-10 ? JAN-MAR MON-FRI *)")
    assert isinstance(fields, CronFields)
    assert fields.minutes == (0, 15, 30, 45)
    assert fields.hours == (8, 9, 10)
    assert fields.months == (1, 2, 3)
    assert fields.years == tuple(range(1970, 2200))
    assert not fields.by_dom and fields.dow_days == frozenset({2, 3, 4, 5, 6})
    assert parse_cron("0 0 ? * 2#1 *") == parse_cron("cron(0 0 ? * MON#1 *)")


# -- cron: invalid ----------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "message"), [
    ("cron(0 10 * * * *)", "exactly one of Day-of-month and Day-of-week"),
    ("cron(0 10 ? * ? *)", "exactly one of Day-of-month and Day-of-week"),
    ("cron(0 10 1 * MON *)", "exactly one of Day-of-month and Day-of-week"),
    ("cron(0 10 * * ?)", "needs 6 fields"),
    ("cron(0 10 * * ? * *)", "needs 6 fields"),
    ("cron()", "needs 6 fields"),
    ("cron(60 10 * * ? *)", "Minutes"),
    ("cron(x 10 * * ? *)", "Minutes"),
    ("cron(0/0 10 * * ? *)", "Minutes"),
    ("cron(? 10 * * ? *)", "Minutes"),
    ("cron(0 24 * * ? *)", "Hours"),
    ("cron(0 1-2-3 * * ? *)", "Hours"),
    ("cron(0 10 32 * ? *)", "Day-of-month"),
    ("cron(0 10 0 * ? *)", "Day-of-month"),
    ("cron(0 10 32W * ? *)", "Day-of-month"),
    ("cron(0 10 MON * ? *)", "Day-of-month"),
    ("cron(0 10 * FOO ? *)", "Month"),
    ("cron(0 10 * 13 ? *)", "Month"),
    ("cron(0 10 * JANUARY ? *)", "Month"),
    ("cron(0 10 ? * MOO *)", "Day-of-week"),
    ("cron(0 10 ? * 8 *)", "Day-of-week"),
    ("cron(0 10 ? * 0 *)", "Day-of-week"),
    ("cron(0 10 ? * */2 *)", "Day-of-week"),
    ("cron(0 10 ? * 2#6 *)", "Day-of-week"),
    ("cron(0 10 ? * 2#1,3#2 *)", "Day-of-week"),
    ("cron(0 10 ? * 9L *)", "Day-of-week"),
    ("cron(0 10 * * ? 1969)", "Year"),
    ("cron(0 10 * * ? 2200)", "Year"),
    ("cron(0 10 * * ? 2030-2025)", "Year"),
])
def test_cron_invalid(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_cron(expression)
    with pytest.raises(ValueError):
        Scheduler("Fn", ScheduleEvent("Tick", expression), lambda *_: None, "us-east-1", 60)


# -- Scheduler ---------------------------------------------------------------------------------

TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def collect(event: ScheduleEvent, seconds: float, minute_seconds: float = 0.05,
            fire_delay: Any = None) -> tuple[list[dict[str, Any]], list[float]]:
    """Run a Scheduler for `seconds`; return the fired payloads and when (since start) they came."""
    payloads: list[dict[str, Any]] = []
    times: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()

        def fire(name: str, payload: bytes) -> None:
            assert name == "Janitor"
            assert isinstance(payload, bytes)
            times.append(loop.time() - started)
            payloads.append(json.loads(payload))
            if fire_delay is not None:
                time.sleep(fire_delay(len(times)))

        scheduler = Scheduler("Janitor", event, fire, "eu-west-1", minute_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(scheduler.run(), seconds)

    asyncio.run(main())
    return payloads, times


def test_scheduler_payload() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    payloads, times = collect(ScheduleEvent("Tick", "rate(1 minute)"), 0.33)
    assert 4 <= len(payloads) <= 7, times
    assert times[0] >= 0.04, "the first run comes one period after the start, not at once"
    for payload in payloads:
        assert set(payload) == {"version", "id", "detail-type", "source", "account", "time", "region",
                                "resources", "detail"}
        assert payload["version"] == "0"
        assert str(uuid.UUID(payload["id"], version=4)) == payload["id"]
        assert payload["detail-type"] == "Scheduled Event"
        assert payload["source"] == "aws.events"
        assert payload["account"] == "000000000000"
        assert payload["region"] == "eu-west-1"
        assert payload["resources"] == ["arn:aws:events:eu-west-1:000000000000:rule/Janitor-Tick"]
        assert payload["detail"] == {}
        assert TIME_FORMAT.fullmatch(payload["time"]), payload["time"]
    assert len({p["id"] for p in payloads}) == len(payloads)
    stamps = [datetime.strptime(p["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) for p in payloads]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    # the simulated clock: the time advances by the nominal period, one minute per tick
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(stamps))
    assert before + timedelta(minutes=1) <= stamps[0] <= before + timedelta(minutes=1, seconds=2)


def test_scheduler_hours_use_the_nominal_period() -> None:
    payloads, _ = collect(ScheduleEvent("Tick", "rate(2 hours)"), 0.2, minute_seconds=0.0005)
    stamps = [datetime.strptime(p["time"], "%Y-%m-%dT%H:%M:%SZ") for p in payloads]
    assert len(stamps) >= 2
    assert all(b - a == timedelta(hours=2) for a, b in itertools.pairwise(stamps))


@pytest.mark.parametrize("value", [{"job": "cleanup", "limit": 10}, [1, 2, 3], "text", 0, False])
def test_scheduler_input_replaces_the_event(value: Any) -> None:
    payloads, _ = collect(ScheduleEvent("Custom", "rate(1 minute)", input=value), 0.18)
    assert len(payloads) >= 2
    assert all(p == value for p in payloads)


def test_scheduler_does_not_drift() -> None:
    """Each tick is due at start + n * period, however long the callback takes."""
    _, times = collect(ScheduleEvent("Tick", "rate(1 minute)"), 0.38, fire_delay=lambda n: 0.015)
    assert len(times) >= 6
    for n, at in enumerate(times, start=1):
        assert at == pytest.approx(n * 0.05, abs=0.03), times


def test_scheduler_skips_missed_ticks_instead_of_bursting() -> None:
    _, times = collect(ScheduleEvent("Tick", "rate(1 minute)"), 0.45,
                       fire_delay=lambda n: 0.16 if n == 1 else 0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) > 0.02, times


def test_scheduler_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="must be 'minute'"):
        Scheduler("Fn", ScheduleEvent("Tick", "rate(1 minutes)"), lambda *_: None, "us-east-1", 60)
    with pytest.raises(ValueError, match="minute_seconds"):
        Scheduler("Fn", ScheduleEvent("Tick", "rate(1 minute)"), lambda *_: None, "us-east-1", 0)


def test_scheduler_cron_is_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cron schedule fires at the wall-clock minute (here faked to be 0.15 s away), and the
    event's time is that minute, whatever minute_seconds says."""
    base = datetime(2024, 5, 1, 10, 14, 59, 850000, tzinfo=UTC)
    started = time.monotonic()

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> FakeDatetime:  # type: ignore[override]
            return base + timedelta(seconds=time.monotonic() - started)

    monkeypatch.setattr(schedule, "datetime", FakeDatetime)
    payloads, times = collect(ScheduleEvent("Daily", "cron(15 10 * * ? *)"), 0.6, minute_seconds=0.01)
    assert len(payloads) == 1, payloads
    assert 0.1 <= times[0] <= 0.45
    assert payloads[0]["time"] == "2024-05-01T10:15:00Z"
    assert payloads[0]["resources"] == ["arn:aws:events:eu-west-1:000000000000:rule/Janitor-Daily"]


def test_scheduler_cron_whose_years_are_over_stops() -> None:
    payloads, _ = collect(ScheduleEvent("Old", "cron(0 0 1 1 ? 2020)"), 0.1)
    assert payloads == []
