"""The metrics lines: valid Embedded Metric Format, the shape Powertools' metrics utility writes,
deltas per period, written on activity only (no timer)."""

import json
import os

import jsonschema
import pytest

from dbkeeper.aws.metrics import Counters, EmfWriter
from tests import emf


class FakeBudget:
    held, max = 3, 8


def writer(**kwargs) -> EmfWriter:
    defaults = dict(namespace="dbkeeper", dimensions=(("service", "orders"),), every=100, interval=60.0)
    defaults.update(kwargs)
    return EmfWriter(Counters(), **defaults)


def busy(counters: Counters) -> None:
    counters.upstreams_opened += 2
    counters.closed("stale")
    counters.closed("shutdown")
    counters.sessions += 5
    counters.resets += 4
    counters.rejected_too_many += 1
    counters.pinned("prepared_statement")
    for ms in (0.2, 0.1, 40.0):
        counters.waited(ms)


def test_a_line_is_valid_emf_with_every_counter_as_a_metric():
    w = writer()
    busy(w.counters)
    w.counters.leases = FakeBudget()
    document = json.loads(w.line(now_ms=1_790_000_000_000))
    emf.validate(document)
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "dbkeeper"
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert document["service"] == "orders"
    assert {name: emf.metric(document, name) for name in (
        "UpstreamConnectionsOpened", "UpstreamConnectionsClosed", "UpstreamConnectionsClosedStale",
        "SessionsServed", "SessionResets", "TooManyConnectionsReturned", "SessionPinsPreparedStatement",
        "BorrowWaitP50", "BorrowWaitMax", "BudgetLeasesHeld", "BudgetLeasesMax")} == {
        "UpstreamConnectionsOpened": 2, "UpstreamConnectionsClosed": 2, "UpstreamConnectionsClosedStale": 1,
        "SessionsServed": 5, "SessionResets": 4, "TooManyConnectionsReturned": 1, "SessionPinsPreparedStatement": 1,
        "BorrowWaitP50": 0.2, "BorrowWaitMax": 40.0, "BudgetLeasesHeld": 3, "BudgetLeasesMax": 8}
    units = {m["Name"]: m["Unit"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["BorrowWaitMax"] == "Milliseconds" and units["SessionsServed"] == "Count"


def test_the_shape_is_what_powertools_metrics_writes(monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "dbkeeper")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "orders")
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    ours = writer()
    ours.counters.sessions = 5
    ours.counters.waited(1.5)
    mine = json.loads(ours.line())
    theirs = Metrics()
    for metric in mine["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
        theirs.add_metric(name=metric["Name"], unit=MetricUnit(metric["Unit"]), value=mine[metric["Name"]][0])
    reference = theirs.serialize_metric_set()
    emf.validate(reference)
    # the same members, types and directive; ours adds dbkeeper's log fields (EMF allows extra members)
    assert reference["_aws"]["CloudWatchMetrics"] == mine["_aws"]["CloudWatchMetrics"]
    assert {k: v for k, v in mine.items() if k not in ("_aws", "ts", "level", "event", "ext")} == \
        {k: v for k, v in reference.items() if k != "_aws"}


def test_lines_carry_deltas_and_an_idle_period_writes_nothing(tmp_path):
    read, write = os.pipe()
    w = writer(every=3, fd=write)
    w.counters.upstreams_opened = 1
    w.flush()  # the first line (e.g. at SHUTDOWN) is written even when little happened
    for _ in range(2):
        w.counters.sessions += 1
        w.session_ended()
    assert w.lines_written == 1  # 2 sessions < every=3, and 60 s have not passed
    w.counters.sessions += 1
    w.session_ended()
    w.flush()  # nothing new since: no line
    os.close(write)
    lines = [json.loads(line) for line in os.read(read, 1 << 20).splitlines()]
    assert [emf.metric(line, "SessionsServed") for line in lines] == [0, 3]
    assert [emf.metric(line, "UpstreamConnectionsOpened") for line in lines] == [1, 0]
    assert all(line["event"] == "metrics" for line in lines)


def test_the_interval_is_checked_at_session_end_only(monkeypatch):
    import dbkeeper.aws.metrics as metrics

    clock = [1000.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    read, write = os.pipe()
    w = writer(every=1000, interval=60.0, fd=write)
    w.counters.sessions += 1
    w.session_ended()
    clock[0] += 61  # a freeze, or a quiet minute: nothing is written while nothing happens
    assert w.lines_written == 0
    w.counters.sessions += 1
    w.session_ended()
    assert w.lines_written == 1
    os.close(write)
    os.close(read)


@pytest.mark.parametrize("broken", [
    {"_aws": {"CloudWatchMetrics": []}},  # no Timestamp
    {"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "n", "Dimensions": [["service"]],
                                                      "Metrics": [{"Name": "A", "Unit": "Count"}]}]}, "A": [1]},
    {"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "n", "Dimensions": [[]],
                                                      "Metrics": [{"Name": "A", "Unit": "Things"}]}]}, "A": [1]},
])
def test_the_validator_rejects_what_the_specification_forbids(broken):
    with pytest.raises((AssertionError, jsonschema.ValidationError)):
        emf.validate(broken)
