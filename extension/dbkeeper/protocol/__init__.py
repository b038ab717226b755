"""The MySQL wire protocol as pure functions and state machines: bytes in, decisions out, no I/O."""
