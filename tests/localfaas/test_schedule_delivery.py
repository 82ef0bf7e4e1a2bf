"""Schedule events delivered through the real host (`--minute-seconds 1`: rate(1 minute) ticks
every second)."""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATE = FIXTURES / "schedule_template.yaml"


def read_events(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_schedule_events_reach_the_function(localfaas: Any, tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    host = localfaas(TEMPLATE, overrides={"RecordFile": str(record)}, minute_seconds=1,
                     env={"AWS_REGION": "eu-west-1"})
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        events = read_events(record)
        scheduled = [e for e in events if isinstance(e, dict) and e.get("source") == "aws.events"]
        custom = [e for e in events if isinstance(e, dict) and e.get("kind") == "custom"]
        if len(scheduled) >= 2 and custom:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"not enough schedule events after 6 s: {events}\n{host.console()}")

    for event in scheduled:
        assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region",
                              "resources", "detail"}
        assert event["version"] == "0"
        assert event["detail-type"] == "Scheduled Event"
        assert event["source"] == "aws.events"
        assert event["account"] == "000000000000"
        assert event["region"] == "eu-west-1"
        assert event["resources"] == ["arn:aws:events:eu-west-1:000000000000:rule/Ticker-Tick"]
        assert event["detail"] == {}
        assert str(uuid.UUID(event["id"], version=4)) == event["id"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"]), event["time"]
    assert len({e["id"] for e in scheduled}) == len(scheduled)
    # Asynchronous invocations may finish out of order, but the scheduled times are whole
    # (simulated) minutes apart and distinct.
    stamps = sorted(datetime.strptime(e["time"], "%Y-%m-%dT%H:%M:%SZ") for e in scheduled)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(gap > timedelta(0) and gap % timedelta(minutes=1) == timedelta(0) for gap in gaps), stamps

    # Input replaces the event entirely; a disabled schedule never fires
    assert all(e == {"kind": "custom", "n": 1} for e in custom)
    assert not [e for e in read_events(record) if isinstance(e, dict) and e.get("kind") == "disabled"]
    console = host.console()
    assert "schedule Tick: rate(1 minute)" in console
    assert "schedule Nightly: cron(0 3 * * ? *)" in console
