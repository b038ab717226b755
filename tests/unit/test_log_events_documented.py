"""Every log event the extension can emit is explained in README's troubleshooting table, so a
user reading CloudWatch can look any line up."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def emitted_events() -> set[str]:
    events = set()
    for source in (REPO / "extension" / "dbkeeper").rglob("*.py"):
        text = source.read_text()
        events |= set(re.findall(r'log\.(?:debug|info|warning|error)\(\s*"([a-z_]+)"', text))
        events |= set(re.findall(r'_reject\([^)]*?"([a-z_]+)"', text, re.S))
    return events


def test_every_emitted_event_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    events = emitted_events()
    assert {"registered", "upstream_connected", "shutdown_complete"} <= events  # the scan works
    undocumented = sorted(event for event in events if f"`{event}`" not in readme)
    assert not undocumented, f"log events missing from README.md: {undocumented}"
