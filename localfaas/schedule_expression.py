"""EventBridge schedule expressions, parsed and evaluated without a clock or a loop: `rate(N unit)`
to its period, `cron(...)` to its fields and the next run after a given time.

- `cron(Min Hour Day-of-month Month Day-of-week Year)`: UTC, minute resolution. Supported: values,
  `a-b` ranges (wrapping ones like `FRI-MON` too, except in Year), lists, `*`, `/` steps, `?`,
  JAN-DEC, SUN-SAT (1 = Sunday), `L`, `LW`, `nW` in day-of-month, `L` (= 7, Saturday), `nL` and
  one `n#k` in day-of-week. An expression whose last run (Year) has passed has no next run.

The template reader validates with it and the Scheduler (localfaas/schedule.py) runs on it.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_RATE = re.compile(r"rate\(\s*(\S+)\s+(\S+)\s*\)")
_CRON = re.compile(r"cron\((.*)\)")
_UNIT_MINUTES = {"minute": 1, "hour": 60, "day": 1440}
_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}


class ScheduleExhausted(LookupError):
    """A cron expression has no run after the given time (its Year field is in the past)."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None
    steps: bool = True
    cyclic: bool = True


_MINUTES = _Field("Minutes", 0, 59)
_HOURS = _Field("Hours", 0, 23)
_DOM = _Field("Day-of-month", 1, 31)
_MONTH = _Field("Month", 1, 12, _MONTHS)
_DOW = _Field("Day-of-week", 1, 7, _DAYS, steps=False)
_YEAR = _Field("Year", 1970, 2199, cyclic=False)


@dataclass(frozen=True)
class CronFields:
    """A parsed cron expression. Days are chosen by day-of-month (`by_dom`) or day-of-week."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    years: tuple[int, ...]
    by_dom: bool
    dom_days: frozenset[int] = frozenset()
    dom_last: bool = False
    dom_nearest_weekday: frozenset[int] = frozenset()  # nW; 0 stands for LW
    dow_days: frozenset[int] = frozenset()  # 1 = Sunday ... 7 = Saturday
    dow_last: frozenset[int] = frozenset()  # nL: the last such weekday of the month
    dow_nth: tuple[int, int] | None = None  # n#k: (weekday, k)

    def days(self, year: int, month: int) -> list[int]:
        """The days of `month` that match, in order."""
        last = calendar.monthrange(year, month)[1]
        days: set[int] = set()
        if self.by_dom:
            days |= {d for d in self.dom_days if d <= last}
            if self.dom_last:
                days.add(last)
            for target in self.dom_nearest_weekday:
                day = _nearest_weekday(year, month, target or last, last)
                if day is not None:
                    days.add(day)
        else:
            for day in range(1, last + 1):
                weekday = _aws_weekday(year, month, day)
                if (weekday in self.dow_days
                        or (weekday in self.dow_last and day + 7 > last)
                        or self.dow_nth == (weekday, (day - 1) // 7 + 1)):
                    days.add(day)
        return sorted(days)


def _aws_weekday(year: int, month: int, day: int) -> int:
    return (calendar.weekday(year, month, day) + 1) % 7 + 1  # Python: Monday 0; AWS: Sunday 1


def _nearest_weekday(year: int, month: int, target: int, last: int) -> int | None:
    if target > last:
        return None
    weekday = _aws_weekday(year, month, target)
    if weekday == 7:  # Saturday: the Friday before, or the Monday after if that leaves the month
        return target - 1 if target > 1 else target + 2
    if weekday == 1:  # Sunday: the Monday after, or the Friday before at the month's end
        return target + 1 if target < last else target - 2
    return target


def _value(text: str, field: _Field) -> int:
    value = field.names.get(text) if field.names else None
    if value is None:
        if not text.isdigit():
            raise ValueError(f"cron {field.name} field: {text!r} is not a value")
        value = int(text)
    if not field.low <= value <= field.high:
        raise ValueError(f"cron {field.name} field: {value} is outside {field.low}-{field.high}")
    return value


def _numbers(item: str, field: _Field) -> set[int]:
    """One list item: `*`, `a`, `a-b`, with an optional `/step`."""
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not field.steps:
            raise ValueError(f"cron {field.name} field: '/' is not allowed")
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"cron {field.name} field: bad step in {item!r}")
        step = int(step_text)
    if base == "*":
        low, high = field.low, field.high
    elif "-" in base:
        first, _, second = base.partition("-")
        low, high = _value(first, field), _value(second, field)
    else:
        low = _value(base, field)
        high = field.high if slash else low
    if low <= high:
        return set(range(low, high + 1, step))
    if not field.cyclic:
        raise ValueError(f"cron {field.name} field: range {base!r} runs backwards")
    wrapped = [*range(low, field.high + 1), *range(field.low, high + 1)]
    return set(wrapped[::step])


def _simple(text: str, field: _Field) -> tuple[int, ...]:
    return tuple(sorted(set().union(*(_numbers(item, field) for item in text.split(",")))))


def parse_cron(expression: str) -> CronFields:
    """Parse `cron(...)` (or just its six fields); raise ValueError naming the bad field."""
    match = _CRON.fullmatch(expression.strip())
    parts = (match.group(1) if match else expression).split()
    if len(parts) != 6:
        raise ValueError(f"cron expression {expression!r} needs 6 fields "
                         f"(Minutes Hours Day-of-month Month Day-of-week Year), got {len(parts)}")
    minutes, hours, dom, month, dow, year = (part.upper() for part in parts)
    if (dom == "?") == (dow == "?"):
        raise ValueError(f"cron expression {expression!r}: exactly one of Day-of-month and "
                         "Day-of-week must be '?'")
    fields: dict[str, Any] = {
        "minutes": _simple(minutes, _MINUTES), "hours": _simple(hours, _HOURS),
        "months": _simple(month, _MONTH), "years": _simple(year, _YEAR), "by_dom": dow == "?",
    }
    if dow == "?":
        days: set[int] = set()
        nearest: set[int] = set()
        for item in dom.split(","):
            if item == "L":
                fields["dom_last"] = True
            elif item == "LW":
                nearest.add(0)
            elif item.endswith("W"):
                nearest.add(_value(item[:-1], _DOM))
            else:
                days |= _numbers(item, _DOM)
        fields.update(dom_days=frozenset(days), dom_nearest_weekday=frozenset(nearest))
    else:
        days, last = set(), set()
        for item in dow.split(","):
            if item == "L":
                days.add(7)
            elif "#" in item:
                weekday, _, nth = item.partition("#")
                if fields.get("dow_nth") or not nth.isdigit() or not 1 <= int(nth) <= 5:
                    raise ValueError(f"cron Day-of-week field: bad '#' in {dow!r} "
                                     "(one 'weekday#1..5' only)")
                fields["dow_nth"] = (_value(weekday, _DOW), int(nth))
            elif item.endswith("L"):
                last.add(_value(item[:-1], _DOW))
            else:
                days |= _numbers(item, _DOW)
        fields.update(dow_days=frozenset(days), dow_last=frozenset(last))
    return CronFields(**fields)


def next_cron_time(expr_fields: CronFields | str, after: datetime) -> datetime:
    """The first run strictly after `after` (naive means UTC), at minute resolution, in UTC.
    Raises ScheduleExhausted when there is none (the Year field ends before it)."""
    fields = parse_cron(expr_fields) if isinstance(expr_fields, str) else expr_fields
    after = after.replace(tzinfo=UTC) if after.tzinfo is None else after.astimezone(UTC)
    start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for year in (y for y in fields.years if y >= start.year):
        for month in fields.months:
            if (year, month) < (start.year, start.month):
                continue
            for day in fields.days(year, month):
                if (year, month, day) < (start.year, start.month, start.day):
                    continue
                for hour in fields.hours:
                    for minute in fields.minutes:
                        candidate = datetime(year, month, day, hour, minute, tzinfo=UTC)
                        if candidate >= start:
                            return candidate
    raise ScheduleExhausted(f"cron schedule has no run after {after:%Y-%m-%dT%H:%M:%SZ}")


def parse_rate(expression: str) -> int:
    """`rate(N unit)` -> its period in minutes; ValueError if AWS would reject it."""
    match = _RATE.fullmatch(expression.strip())
    if not match:
        raise ValueError(f"rate expression {expression!r} must look like rate(5 minutes)")
    value_text, unit = match.groups()
    if not value_text.isdigit() or int(value_text) < 1:
        raise ValueError(f"rate expression {expression!r}: value must be a positive integer")
    value = int(value_text)
    singular = unit.removesuffix("s")
    if singular not in _UNIT_MINUTES:
        raise ValueError(f"rate expression {expression!r}: unit must be minute(s), hour(s) or day(s)")
    if (unit == singular) != (value == 1):
        wanted = singular if value == 1 else singular + "s"
        raise ValueError(f"rate expression {expression!r}: with value {value} the unit must be "
                         f"{wanted!r}")
    return value * _UNIT_MINUTES[singular]


def parse_schedule(expression: str) -> int | CronFields:
    """Validate a Schedule expression: the rate's period in minutes, or the parsed cron."""
    text = expression.strip()
    if text.startswith("rate("):
        return parse_rate(text)
    if text.startswith("cron("):
        return parse_cron(text)
    raise ValueError(f"schedule expression {expression!r} must be rate(...) or cron(...)")
