"""Server reply streams for protocol tests: OK, ERR, EOF, result sets, and a hypothesis strategy
for whole COM_QUERY replies (multi-results included)."""

from hypothesis import strategies as st
from pymysql.constants import SERVER_STATUS

from dbkeeper.protocol.packets import frame, lenenc_int

MORE = SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS
AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT


def ok(status=AUTOCOMMIT, affected=0):
    return b"\x00" + lenenc_int(affected) + b"\x00" + status.to_bytes(2, "little") + b"\x00\x00"


def eof(status=AUTOCOMMIT):
    return b"\xfe\x00\x00" + status.to_bytes(2, "little")


def err():
    return b"\xff\x7a\x04#42S02Table 'x' doesn't exist"


def column(name=b"c"):
    return (b"\x03def\x00\x00\x00" + bytes((len(name),)) + name
            + b"\x00\x0c\x21\x00\x0b\x00\x00\x00\x08\x80\x00\x00\x00\x00")


def text_result(rows, columns=1, status=AUTOCOMMIT):
    packets = [lenenc_int(columns)] + [column() for _ in range(columns)] + [eof()]
    packets += [b"".join(lenenc_int(len(v)) + v for v in row) for row in rows]
    return packets + [eof(status)]


def stream(packets):
    return b"".join(frame(p, i + 1) for i, p in enumerate(packets))


row_values = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=1), max_size=20)
one_result = st.one_of(
    st.builds(lambda: [ok()]),
    st.builds(lambda: [err()]),
    row_values.map(text_result),
)


@st.composite
def query_reply(draw):
    """A COM_QUERY reply: one or more results (multi-statements), possibly ending in an error."""
    results = draw(st.lists(one_result, min_size=1, max_size=4))
    packets = []
    for index, result in enumerate(results):
        last = index == len(results) - 1
        if result[0][:1] == b"\xff":
            packets += result
            break
        if not last:
            result = list(result)
            result[-1] = ok(AUTOCOMMIT | MORE) if result[-1][:1] == b"\x00" else eof(AUTOCOMMIT | MORE)
        packets += result
    return stream(packets)
