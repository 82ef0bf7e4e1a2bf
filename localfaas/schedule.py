"""SAM `Type: Schedule` events: the loop that fires the scheduled event (docs/lambda_behaviours.md
§6) at a function. The expressions themselves are parsed in localfaas/schedule_expression.py.

- `rate(N unit)`: first run one period after start, then every period without drift (tick n is
  due at start + n * period; ticks missed while the process stalled are skipped, not burst).
  `minute_seconds` compresses time for development: a schedule "minute" lasts that many real
  seconds, and the event's `time` comes from a simulated clock that starts at the real start
  time and advances by the nominal period per tick (with the default 60 it is the real time).
- `cron(...)`: wall-clock UTC, minute resolution; `minute_seconds` does NOT apply to cron.
  A cron schedule whose last run (Year) has passed simply stops.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from localfaas.aws import ACCOUNT_ID, rule_arn
from localfaas.schedule_expression import CronFields, ScheduleExhausted, next_cron_time, parse_schedule
from localfaas.template import ScheduleEvent


class Scheduler:
    """Fires one Schedule event of one function: `fire(function_name, payload)` at each due time."""

    def __init__(self, function_name: str, event: ScheduleEvent, fire: Callable[[str, bytes], None],
                 region: str, minute_seconds: float = 60.0) -> None:
        if minute_seconds <= 0:
            raise ValueError(f"minute_seconds must be positive, got {minute_seconds}")
        self.function_name = function_name
        self.event = event
        self.fire = fire
        self.region = region
        self.minute_seconds = minute_seconds
        self.rule_name = f"{function_name}-{event.name}"
        self.rule_arn = rule_arn(region, self.rule_name)
        self.schedule = parse_schedule(event.expression)

    def payload(self, scheduled: datetime) -> bytes:
        if self.event.input is not None:
            return json.dumps(self.event.input).encode()
        return json.dumps({
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT_ID,
            "time": scheduled.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self.region,
            "resources": [self.rule_arn],
            "detail": {},
        }).encode()

    async def run(self) -> None:
        if isinstance(self.schedule, int):
            await self._run_rate(self.schedule)
        else:
            await self._run_cron(self.schedule)

    async def _run_rate(self, minutes: int) -> None:
        loop = asyncio.get_running_loop()
        period = minutes * self.minute_seconds
        started, started_wall = loop.time(), datetime.now(UTC)
        tick = 1
        while True:
            await asyncio.sleep(max(0.0, started + tick * period - loop.time()))
            self.fire(self.function_name, self.payload(started_wall + timedelta(minutes=minutes * tick)))
            tick = max(tick + 1, int((loop.time() - started) // period) + 1)

    async def _run_cron(self, fields: CronFields) -> None:
        now = datetime.now(UTC)
        while True:
            try:
                due = next_cron_time(fields, now)
            except ScheduleExhausted:
                return
            # Sleep in slices and re-read the wall clock, so clock changes and suspends are noticed.
            while (remaining := (due - datetime.now(UTC)).total_seconds()) > 0:
                await asyncio.sleep(min(remaining, 30.0))
            self.fire(self.function_name, self.payload(due))
            now = max(due, datetime.now(UTC))
