"""The CloudWatch Embedded Metric Format, as its specification states it ("Specification: Embedded
metric format", Amazon CloudWatch User Guide), as a JSON schema, plus the rule a schema cannot
say: every dimension and metric a directive names is a member of the root (its "target members")
with the right type."""

from __future__ import annotations

import jsonschema

UNITS = ["Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
         "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
         "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
         "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"]

SCHEMA = {
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},  # ms since the epoch
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "additionalProperties": False,
                        "properties": {
                            "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "Dimensions": {"type": "array", "items": {
                                "type": "array", "maxItems": 30,
                                "items": {"type": "string", "minLength": 1, "maxLength": 250}}},
                            "Metrics": {"type": "array", "maxItems": 100, "items": {
                                "type": "object", "required": ["Name"], "additionalProperties": False,
                                "properties": {
                                    "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                    "Unit": {"enum": UNITS},
                                    "StorageResolution": {"enum": [1, 60]}}}},
                        },
                    },
                },
            },
        },
    },
}


def validate(document: dict) -> None:
    """Raises (jsonschema.ValidationError or AssertionError) when `document` is not valid EMF."""
    jsonschema.validate(document, SCHEMA)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for name in dimension_set:
                assert isinstance(document.get(name), str), f"dimension {name} has no string value at the root"
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            assert values and len(values) <= 100, metric["Name"]
            assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values), metric["Name"]


def metric(document: dict, name: str) -> float:
    """The sum of a metric's values in one EMF line (0 when absent)."""
    value = document.get(name, 0)
    return sum(value) if isinstance(value, list) else value
