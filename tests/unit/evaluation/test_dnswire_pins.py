"""DNS wire behaviour that mutation testing found unpinned: the reasons
given for names and replies refused (they reach the log as "malformed
reply: ..."), name length at its RFC 1035 bounds, compression pointers
beyond offset 255, unsigned fields, deadlines at their boundaries, the TCP
path's failures (refused, silent, closing early, not answering, a reply in
pieces, a reply above 32 KiB), 16-bit query IDs, and resolv.conf lines that
are blank, bare or not ASCII.

Servers run on loopback only.  tests/unit/test_dnswire.py holds the codec's
and transport's main paths.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spfmilter.evaluation import dnswire
from spfmilter.evaluation.dnswire import BadName, Unreachable, WireError, encode_name, name_text
from testkit.net import udp_and_tcp_on_one_port

QNAME = encode_name("example.org")
A = 1
TXT = 16


def header(qid: int, answers: int, flags: int = 0x8180) -> bytes:
    """A reply header and the echoed question for (QNAME, A)."""
    return struct.pack("!6H", qid, flags, 1, answers, 0, 0) + QNAME + struct.pack("!HH", A, 1)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def wire_name(*labels: int) -> bytes:
    """A name of labels of these lengths (all 'a')."""
    return b"".join(bytes([n]) + b"a" * n for n in labels) + b"\x00"


def reply_to(query: bytes, answer: bytes = b"", count: int = 0, flags: int = 0x8180) -> bytes:
    """A reply to `query` (ID and question echoed) with `count` raw records."""
    qid = struct.unpack("!H", query[:2])[0]
    question_end = 12 + query[12:].index(b"\x00") + 5
    head = struct.pack("!6H", qid, flags, 1, count, 0, 0)
    return head + query[12:question_end] + answer


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a..b", "empty label"),
        ("a" * 64 + ".example", "label longer than 63 octets: '" + "a" * 64 + "'"),
        (".".join(["a" * 63] * 3 + ["a" * 62]), "name longer than 255 octets"),
        ("\udcff.example", "not a valid internationalized label: '\\udcff'"),
    ],
)
def test_a_name_refused_says_why(name: str, reason: str) -> None:
    # RFC 1035 section 2.3.4: labels of 63 octets, names of 255 with the root.
    with pytest.raises(BadName) as info:
        encode_name(name)
    assert str(info.value) == reason


def test_a_label_of_nothing_but_special_octets_is_escaped() -> None:
    assert name_text(b"\x01.\x00") == "\\046"
    assert name_text(b"\x02\x00\xff\x03abc\x00") == "\\000\\255.abc"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x01a", "name runs past the message"),
        (b"\xc0", "truncated compression pointer"),
        (b"\xc0\x40", "forward compression pointer"),
        (b"\x40", "unknown label type"),
        (b"\x05ab", "label runs past the message"),
        (
            b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x09\x01\x02",
            "record data runs past the message",
        ),
        (b"\xc0\x0c\x00\x01\x00\x01\x00", "message ends early"),
        (rr(b"\xc0\x0c", 15, b"\x00\x0a\x00\x00"), "malformed MX record"),
        (rr(b"\xc0\x0c", 1, b"\x01\x02\x03"), "malformed A record"),
        (wire_name(63, 63, 63, 63, 1), "name longer than 255 octets"),
        # Labels of 255 octets leave no room for the root label (RFC 1035
        # section 3.1): refused before whatever follows them is read.
        (wire_name(63, 63, 63, 62)[:-1], "name longer than 255 octets"),
        (rr(b"\xc0\x0c", TXT, b"\x05a"), "message ends early"),
    ],
)
def test_a_malformed_reply_says_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        dnswire.parse_reply(header(5, 1) + body, 5, QNAME, A)
    assert str(info.value) == reason


def test_a_name_of_255_octets_is_read_and_one_of_257_is_not() -> None:
    longest = wire_name(63, 63, 63, 61)  # 255 octets with the root label
    reply = dnswire.parse_reply(header(5, 1) + rr(longest, A, b"\x01\x02\x03\x04"), 5, QNAME, A)
    assert reply is not None and len(reply.answer[0].owner) == 253
    with pytest.raises(WireError, match=r"^name longer than 255 octets$"):
        dnswire.parse_reply(header(5, 1) + rr(wire_name(63, 63, 63, 63), A, b""), 5, QNAME, A)


def test_a_name_of_256_octets_is_refused() -> None:
    # RFC 1035 section 3.1: 255 octets, the root label's included.
    too_long = wire_name(63, 63, 63, 62)
    with pytest.raises(WireError, match=r"^name longer than 255 octets$"):
        dnswire.parse_reply(header(5, 1) + rr(too_long, A, b"\x01\x02\x03\x04"), 5, QNAME, A)


def test_a_compression_pointer_may_reach_beyond_offset_255() -> None:
    # A pointer holds 14 bits of offset (RFC 1035 section 4.1.4); a name
    # written after the first 256 octets is pointed to with 0xC1.. and up.
    padding = rr(b"\xc0\x0c", TXT, b"\xff" + b"x" * 255)
    start = len(header(5, 3)) + len(padding)
    assert start > 256
    first = rr(b"\x04mail\xc0\x0c", A, b"\xc0\x00\x02\x01")
    again = rr(struct.pack("!H", 0xC000 | start), A, b"\xc0\x00\x02\x02")
    reply = dnswire.parse_reply(header(5, 3) + padding + first + again, 5, QNAME, A)
    assert reply is not None
    assert [(r.owner, r.value) for r in reply.answer[1:]] == [
        ("mail.example.org", "192.0.2.1"),
        ("mail.example.org", "192.0.2.2"),
    ]


def test_a_name_ending_in_a_pointer_has_the_octets_of_the_name_pointed_at() -> None:
    # RFC 1035 sections 3.1 and 4.1.4: the name is its labels followed by
    # the name pointed at, 255 octets at most in all.  Here 193 octets
    # written in full, then 62 (255 in all) or 63 octets of labels before a
    # pointer to them.
    pointed_at = wire_name(63, 63, 63)
    start = len(header(5, 2))

    def reply(labels: bytes) -> dnswire.Reply | None:
        second = labels + struct.pack("!H", 0xC000 | start)
        data = header(5, 2) + rr(pointed_at, A, b"\x01\x02\x03\x04") + rr(second, A, b"\x05" * 4)
        return dnswire.parse_reply(data, 5, QNAME, A)

    longest = reply(wire_name(61)[:-1])
    assert longest is not None
    assert longest.answer[1].owner == ".".join(["a" * 61] + ["a" * 63] * 3)
    with pytest.raises(WireError) as info:
        reply(wire_name(62)[:-1])
    assert str(info.value) == "name longer than 255 octets"


def test_a_pointer_reads_exactly_the_offset_its_14_bits_hold() -> None:
    # RFC 1035 section 4.1.4: the offset is the 14 bits after the pointer's
    # two 1 bits.  Names are written in full at offsets that a pointer read
    # a bit or a byte off would designate instead: 12 (the question's), 268,
    # 524, and 16396 and 65292, which no pointer can reach.
    message = bytearray(header(5, 0))
    count = 0

    def add(record: bytes) -> None:
        nonlocal count
        message.extend(record)
        count += 1

    def pad_to(offset: int) -> None:
        add(rr(b"\xc0\x0c", 10, b"\x00" * (offset - len(message) - 12)))  # NULL

    for offset, label, last in ((268, b"one", 1), (524, b"two", 2), (16396, b"four", 4)):
        pad_to(offset)
        add(rr(bytes([len(label)]) + label + b"\xc0\x0c", A, bytes([192, 0, 2, last])))
    pad_to(65292)
    add(rr(b"\x03far\xc0\x0c", A, b"\xc0\x00\x02\x05"))
    for pointer, last in ((b"\xc0\x0c", 12), (b"\xc1\x0c", 13), (b"\xc2\x0c", 14)):
        add(rr(pointer, A, bytes([192, 0, 2, last])))
    struct.pack_into("!H", message, 6, count)
    assert len(message) <= dnswire.MAX_MESSAGE
    reply = dnswire.parse_reply(bytes(message), 5, QNAME, A)
    assert reply is not None
    assert [(r.owner, r.value) for r in reply.answer] == [
        ("one.example.org", "192.0.2.1"),
        ("two.example.org", "192.0.2.2"),
        ("four.example.org", "192.0.2.4"),
        ("far.example.org", "192.0.2.5"),
        ("example.org", "192.0.2.12"),
        ("one.example.org", "192.0.2.13"),
        ("two.example.org", "192.0.2.14"),
    ]


def test_a_reserved_label_type_is_no_pointer_to_a_name_read_before() -> None:
    # RFC 1035 section 4.1.4: only the top bits 11 make a pointer; 10 is
    # reserved.  80 0C is refused even when offset 12 holds a name read before.
    data = header(5, 2) + rr(b"\xc0\x0c", A, b"\x01\x01\x01\x01")
    data += rr(b"\x80\x0c", A, b"\x02\x02\x02\x02")
    with pytest.raises(WireError) as info:
        dnswire.parse_reply(data, 5, QNAME, A)
    assert str(info.value) == "unknown label type"


def test_a_pointer_into_the_header_reads_its_octets_as_a_name() -> None:
    # The offset counts from the start of the message (RFC 1035 section
    # 4.1.4), so a hostile reply may point at its header: with the ID 0x0361
    # and the usual flags, offset 0 holds the label 03 61 81 80 and offset 4
    # (QDCOUNT's upper octet) the root.  It is read as such octets, escaped;
    # a pointer to the question's name still reads that name.
    data = header(0x0361, 2) + rr(b"\xc0\x00", A, b"\x01\x01\x01\x01")
    data += rr(b"\xc0\x0c", A, b"\x02\x02\x02\x02")
    reply = dnswire.parse_reply(data, 0x0361, QNAME, A)
    assert reply is not None
    assert [r.owner for r in reply.answer] == ["a\\129\\128", "example.org"]


def test_the_pointers_a_name_may_follow_can_end_at_a_pointer_read_before() -> None:
    # An owner that is a pointer to the question's name, read after another
    # one, is itself a name read before: MAX_POINTERS pointers that end at
    # it, the first in the owner of the last record, are a name.
    second = len(header(5, 4)) + 12
    chain_at = second + 24  # after the second record and the chain's own fixed part
    chain = bytearray(struct.pack("!H", 0xC000 | second))
    for n in range(dnswire.MAX_POINTERS - 2):
        chain += struct.pack("!H", 0xC000 | (chain_at + 2 * n))
    data = header(5, 4) + rr(b"\xc0\x0c", 10, b"") + rr(b"\xc0\x0c", 10, b"")
    data += rr(b"\xc0\x0c", 10, bytes(chain))  # NULL: its data is no name to SPF
    assert len(data) - len(chain) == chain_at
    last = struct.pack("!H", 0xC000 | (len(data) - 2))
    reply = dnswire.parse_reply(data + rr(last, A, b"\x01\x02\x03\x04"), 5, QNAME, A)
    assert reply is not None and [r.owner for r in reply.answer] == ["example.org"]


def test_an_opt_record_whose_data_runs_past_the_message_says_so() -> None:
    # RFC 6891 section 6.1.2: RDLEN counts the options that follow.
    head = struct.pack("!6H", 5, 0x8180, 1, 0, 0, 1) + QNAME + struct.pack("!HH", A, 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 8) + struct.pack("!HH", 12, 0)
    with pytest.raises(WireError) as info:
        dnswire.parse_reply(head + opt, 5, QNAME, A)
    assert str(info.value) == "record data runs past the message"


def test_unsigned_fields_are_read_unsigned() -> None:
    mx = rr(b"\xc0\x0c", 15, b"\xff\xff\xc0\x0c")  # preference 65535
    soa = rr(b"\xc0\x0c", 6, b"\xc0\x0c\xc0\x0c" + struct.pack("!5I", 1, 2, 3, 4, 0xFFFFFFFF))
    reply = dnswire.parse_reply(header(5, 2) + mx + soa, 5, QNAME, A)
    assert reply is not None
    assert [r.value for r in reply.answer] == [(65535, "example.org"), 0xFFFFFFFF]


# --- the transport ------------------------------------------------------------------

Handler = Callable[[socket.socket, bytes, tuple[str, int]], None]


@pytest.fixture
def udp_and_tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A UDP and a TCP socket bound to one loopback port (TCP not listening)."""
    udp, tcp = udp_and_tcp_on_one_port()
    with udp, tcp:
        yield udp, tcp


def serve_udp(udp: socket.socket, handler: Handler) -> threading.Thread:
    def serve() -> None:
        udp.settimeout(5)
        try:
            query, peer = udp.recvfrom(65535)
        except OSError:
            return
        handler(udp, query, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def truncated(udp: socket.socket, query: bytes, peer: tuple[str, int]) -> None:
    udp.sendto(reply_to(query, flags=0x8380), peer)  # TC set


def serve_tcp(tcp: socket.socket, respond: Callable[[socket.socket, bytes], None]) -> None:
    tcp.listen()

    def serve() -> None:
        tcp.settimeout(5)
        try:
            conn, _ = tcp.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            size = struct.unpack("!H", conn.recv(2))[0]
            query = b""
            while len(query) < size:
                query += conn.recv(size - len(query))
            respond(conn, query)

    threading.Thread(target=serve, daemon=True).start()


def exchange_over_tcp(
    udp_and_tcp: tuple[socket.socket, socket.socket],
    respond: Callable[[socket.socket, bytes], None] | None,
    seconds: float = 3.0,
) -> dnswire.Reply:
    udp, tcp = udp_and_tcp
    serve_udp(udp, truncated)
    if respond is not None:
        serve_tcp(tcp, respond)
    return dnswire.exchange(udp.getsockname(), QNAME, A, time.monotonic() + seconds)


def a_reply(query: bytes, count: int = 1) -> bytes:
    records = b"".join(rr(b"\xc0\x0c", A, bytes([192, 0, 2, i % 256])) for i in range(count))
    return reply_to(query, records, count)


def test_a_reply_within_a_short_deadline_is_accepted(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    udp, _ = udp_and_tcp

    def answer(sock: socket.socket, query: bytes, peer: tuple[str, int]) -> None:
        sock.sendto(a_reply(query), peer)

    serve_udp(udp, answer)
    reply = dnswire.exchange(udp.getsockname(), QNAME, A, time.monotonic() + 0.5)
    assert [r.value for r in reply.answer] == ["192.0.2.0"]


def test_a_deadline_already_reached_is_a_timeout_without_waiting(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    udp, _ = udp_and_tcp
    with pytest.raises(Unreachable) as info:
        dnswire.exchange(udp.getsockname(), QNAME, A, 100.0, lambda: 100.0)
    assert str(info.value) == "timeout"


def test_a_deadline_reached_before_the_retry_over_tcp_is_a_timeout(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    # The truncated reply comes in time; by the clock, the deadline has
    # passed when the question would be asked again over TCP.
    udp, _ = udp_and_tcp
    serve_udp(udp, truncated)
    times = iter([0.0])
    with pytest.raises(Unreachable) as info:
        dnswire.exchange(udp.getsockname(), QNAME, A, 5.0, lambda: next(times, 5.0))
    assert str(info.value) == "timeout"


def test_a_silent_server_is_a_timeout(udp_and_tcp: tuple[socket.socket, socket.socket]) -> None:
    udp, _ = udp_and_tcp
    with pytest.raises(Unreachable) as info:
        dnswire.exchange(udp.getsockname(), QNAME, A, time.monotonic() + 0.2)
    assert str(info.value) == "timeout"


def closed_port() -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        address: tuple[str, int] = probe.getsockname()
    return address


def test_a_refused_query_says_so() -> None:
    with pytest.raises(Unreachable) as info:
        dnswire.exchange(closed_port(), QNAME, A, time.monotonic() + 1)
    assert str(info.value) == "Connection refused"


def test_a_refused_tcp_connection_says_so(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    with pytest.raises(Unreachable) as info:
        exchange_over_tcp(udp_and_tcp, None)
    assert str(info.value) == "Connection refused"


def test_a_tcp_server_that_never_accepts_is_a_timeout(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    udp, tcp = udp_and_tcp
    tcp.listen(0)
    fillers = []
    try:
        for _ in range(10):  # fill the accept queue: further connections hang
            try:
                fillers.append(socket.create_connection(tcp.getsockname(), timeout=0.1))
            except TimeoutError:
                break
        serve_udp(udp, truncated)
        started = time.monotonic()
        with pytest.raises(Unreachable) as info:
            dnswire.exchange(udp.getsockname(), QNAME, A, started + 0.3)
        assert str(info.value) == "timeout"
        assert time.monotonic() - started < 2
    finally:
        for sock in fillers:
            sock.close()


def test_a_tcp_server_that_never_answers_is_a_timeout(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    done = threading.Event()

    def silent(conn: socket.socket, query: bytes) -> None:
        done.wait(5)

    with pytest.raises(Unreachable) as info:
        exchange_over_tcp(udp_and_tcp, silent, seconds=0.3)
    done.set()
    assert str(info.value) == "timeout"


def test_a_tcp_connection_closed_mid_message_is_malformed(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    def half(conn: socket.socket, query: bytes) -> None:
        answer = a_reply(query)
        conn.sendall(struct.pack("!H", len(answer)) + answer[:10])

    with pytest.raises(WireError) as info:
        exchange_over_tcp(udp_and_tcp, half)
    assert str(info.value) == "connection closed mid-message"


def test_a_tcp_reply_to_another_query_is_refused(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    def other(conn: socket.socket, query: bytes) -> None:
        qid = struct.unpack("!H", query[:2])[0]
        answer = a_reply(struct.pack("!H", qid ^ 1) + query[2:])
        conn.sendall(struct.pack("!H", len(answer)) + answer)

    with pytest.raises(WireError) as info:
        exchange_over_tcp(udp_and_tcp, other)
    assert str(info.value) == "the TCP reply does not answer the query"


def test_a_tcp_reply_in_pieces_is_read_to_its_length_exactly(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    sent: list[int] = []

    def pieces(conn: socket.socket, query: bytes) -> None:
        answer = a_reply(query, 3)
        sent.append(len(answer))
        conn.sendall(struct.pack("!H", len(answer)) + answer[:20])
        time.sleep(0.05)  # let the client read the first piece on its own
        conn.sendall(answer[20:] + b"junk after the message")

    reply = exchange_over_tcp(udp_and_tcp, pieces)
    assert reply.size == sent[0]
    assert [r.value for r in reply.answer] == ["192.0.2.0", "192.0.2.1", "192.0.2.2"]


def test_a_tcp_reply_above_32_kib_is_read_whole(
    udp_and_tcp: tuple[socket.socket, socket.socket],
) -> None:
    # 33 KB in 800 records: no more than 256 of the asked type and 1024 in
    # all, or the answer would not be read whole.
    addresses = b"".join(rr(b"\xc0\x0c", A, bytes([192, 0, 2, i])) for i in range(250))
    texts = b"".join(rr(b"\xc0\x0c", TXT, b"\x28" + b"t" * 40) for _ in range(550))

    def big(conn: socket.socket, query: bytes) -> None:
        answer = reply_to(query, addresses + texts, 800)
        conn.sendall(struct.pack("!H", len(answer)) + answer)

    reply = exchange_over_tcp(udp_and_tcp, big)
    assert reply.size > 32767 and len(reply.answer) == 800 and not reply.oversized
    assert reply.answer[-1].value == (b"t" * 40,)


def test_query_ids_are_16_bits_also_on_the_retry_without_edns(
    udp_and_tcp: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The largest ID the generator can give must still fit the header.
    monkeypatch.setattr(secrets, "randbits", lambda bits: (1 << bits) - 1)
    udp, _ = udp_and_tcp
    seen: list[int] = []

    def handler(sock: socket.socket, query: bytes, peer: tuple[str, int]) -> None:
        seen.append(struct.unpack("!H", query[:2])[0])
        sock.sendto(reply_to(query, flags=0x8181), peer)  # FORMERR: no EDNS here
        query, peer = sock.recvfrom(65535)
        seen.append(struct.unpack("!H", query[:2])[0])
        sock.sendto(a_reply(query), peer)

    serve_udp(udp, handler)
    reply = dnswire.exchange(udp.getsockname(), QNAME, A, time.monotonic() + 3)
    assert seen == [0xFFFF, 0xFFFF] and reply.rcode == 0


# --- resolv.conf --------------------------------------------------------------------


def test_system_nameservers_default_to_etc_resolv_conf() -> None:
    assert dnswire.system_nameservers() == dnswire.system_nameservers("/etc/resolv.conf")


def test_resolv_conf_blank_bare_and_non_ascii_lines_are_skipped(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(
        b"# r\xc3\xa9solveur local\n\nnameserver\nnameserver 300.1.1.1\n"
        b"nameserver 192.0.2.53\nnameserver 2001:db8::53\n"
    )
    assert dnswire.system_nameservers(str(conf)) == (("192.0.2.53", 53), ("2001:db8::53", 53))


def test_resolv_conf_is_ascii_whatever_the_locale(tmp_path: Path) -> None:
    # As for glibc, only ASCII blanks separate words: a no-break space
    # (UTF-8 C2 A0) does not make "nameserver<NBSP>address" a nameserver line.
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(b"nameserver\xc2\xa0192.0.2.53\n")
    assert dnswire.system_nameservers(str(conf)) == (("127.0.0.1", 53),)


def test_a_scoped_address_is_cut_at_its_first_percent_sign(tmp_path: Path) -> None:
    # As glibc reads resolv.conf: the address ends at the first '%'.
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver fe80::1%eth0%junk\n")
    assert dnswire.system_nameservers(str(conf)) == (("fe80::1", 53),)


@pytest.mark.parametrize("truncated", [False, True])
def test_a_made_reply_is_a_plain_answer_truncated_only_when_asked(truncated: bool) -> None:
    qname = encode_name("example.org")
    qtype = dnswire.QTYPES["TXT"]
    record = dnswire.make_record(dnswire.QUESTION_NAME, qtype, 60, b"\x03v=x")
    data = dnswire.make_reply(7, dnswire.make_question(qname, qtype), [record], truncated=truncated)
    reply = dnswire.parse_reply(data, 7, qname, qtype)
    assert reply is not None
    assert (reply.rcode, reply.truncated) == (0, truncated)
    assert len(reply.answer) == (0 if truncated else 1)
