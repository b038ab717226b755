"""A function that does nothing: integration tests talk to the extension directly."""


def handler(event, context):
    return {"ok": True}
