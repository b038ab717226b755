"""Structured values decoded from a fuzzer's flat input bytes.

Every target reads its input through `Draw`, so an input file means the same thing to the
coverage-guided engine (atheris), to the corpus replay in the tests and to the coverage
measurement: decoding is deterministic and never fails (an exhausted input reads as zeros, which
every target treats as "stop").
"""

from __future__ import annotations


class Draw:
    def __init__(self, data: bytes):
        self._data = data
        self._position = 0

    @property
    def exhausted(self) -> bool:
        return self._position >= len(self._data)

    def byte(self) -> int:
        if self._position >= len(self._data):
            return 0
        value = self._data[self._position]
        self._position += 1
        return value

    def int_in(self, low: int, high: int) -> int:
        """An integer in [low, high], from as few bytes as the range needs."""
        span = high - low
        if span <= 0:
            return low
        value = 0
        width = (span.bit_length() + 7) // 8
        for _ in range(width):
            value = value << 8 | self.byte()
        return low + value % (span + 1)

    def log_int(self, high: int) -> int:
        """0..high, spread over magnitudes: small values as likely as huge ones (long runs of
        whitespace, big repeat counts) -- what exposes super-linear parsing."""
        bits = self.int_in(0, high.bit_length())
        return min(high, self.int_in(0, (1 << bits) - 1)) if bits else 0

    def boolean(self) -> bool:
        return self.byte() & 1 == 1

    def pick(self, choices):
        return choices[self.int_in(0, len(choices) - 1)]

    def raw(self, most: int) -> bytes:
        size = self.int_in(0, most)
        piece = self._data[self._position:self._position + size]
        self._position += len(piece)
        return piece

    def rest(self) -> bytes:
        piece = self._data[self._position:]
        self._position = len(self._data)
        return piece
