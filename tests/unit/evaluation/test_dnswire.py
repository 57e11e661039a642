"""The DNS codec and transport: names, queries, replies, spoofing, truncation."""

from __future__ import annotations

import functools
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RR, SOA, TXT, A, DNSRecord

from spfmilter.evaluation import dnswire
from spfmilter.evaluation.dnswire import (
    NOERROR,
    BadName,
    Reply,
    WireError,
    encode_name,
    make_query,
    name_text,
    parse_reply,
)
from testkit.dnsserver import pointer_chain
from testkit.net import udp_and_tcp_on_one_port


def test_encode_name_plain_and_root() -> None:
    assert encode_name("Example.COM.") == b"\x07Example\x03COM\x00"
    assert encode_name("") == b"\x00"
    assert encode_name(".") == b"\x00"


def test_encode_name_keeps_macro_characters_and_converts_u_labels() -> None:
    # RFC 7208 section 7.3: %_ expands to a space, which stays in the label.
    assert encode_name("a b.example") == b"\x03a b\x07example\x00"
    assert encode_name("bücher.test") == b"\x0dxn--bcher-kva\x04test\x00"


@pytest.mark.parametrize(
    "name",
    ["a..b", ".a", "a" * 64 + ".example", ".".join(["a" * 63] * 4), "\udcff.example", "x\u0080y."],
)
def test_names_that_cannot_be_on_the_wire(name: str) -> None:
    with pytest.raises(BadName):
        encode_name(name)


def test_longest_name_fits() -> None:
    name = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters, 255 octets
    assert len(encode_name(name)) == 255


def test_name_text_escapes_what_is_not_plain() -> None:
    assert name_text(b"\x03A b\x07Example\x00") == "a b.example"
    assert name_text(b"\x04a.\\\n\x02\xff!\x00") == "a\\046\\092\\010.\\255!"
    assert name_text(b"\x00") == ""


def test_query_layout() -> None:
    query = make_query(0x1234, encode_name("example.org"), 16)
    qid, flags, qd, an, ns, ar = struct.unpack("!6H", query[:12])
    assert (qid, flags, qd, an, ns, ar) == (0x1234, 0x0100, 1, 0, 0, 1)
    parsed = DNSRecord.parse(query)
    assert str(parsed.q.qname) == "example.org."
    assert parsed.q.qtype == QTYPE.TXT
    assert parsed.ar[0].rtype == QTYPE.OPT and parsed.ar[0].rclass == dnswire.EDNS_PAYLOAD
    plain = make_query(7, encode_name("example.org"), 1, edns=False)
    assert struct.unpack("!H", plain[10:12]) == (0,) and len(plain) == len(query) - 11


def test_reply_layout() -> None:
    # What the warm-up and the test DNS server build replies with, read by dnslib.
    question = dnswire.make_question(encode_name("example.org"), 16)
    txt_record = dnswire.make_record(dnswire.QUESTION_NAME, 16, 60, b"\x06v=spf1")
    a_record = dnswire.make_record(dnswire.QUESTION_NAME, 1, 61, bytes([192, 0, 2, 1]))
    parsed = DNSRecord.parse(dnswire.make_reply(0x4321, question, [txt_record, a_record]))
    assert (parsed.header.id, parsed.header.qr, parsed.header.rd, parsed.header.ra) == (
        0x4321,
        1,
        1,
        1,
    )
    assert str(parsed.q.qname) == "example.org." and parsed.q.qtype == QTYPE.TXT
    assert [(str(rr.rname), rr.rtype, rr.ttl) for rr in parsed.rr] == [
        ("example.org.", QTYPE.TXT, 60),
        ("example.org.", QTYPE.A, 61),
    ]
    assert str(parsed.rr[1].rdata) == "192.0.2.1"
    truncated = DNSRecord.parse(dnswire.make_reply(7, question, truncated=True))
    assert truncated.header.tc == 1 and not truncated.rr


def reply_for(query: bytes, *answers: RR, authority: tuple[RR, ...] = (), rcode: int = 0) -> bytes:
    record = DNSRecord.parse(query).reply()
    record.header.rcode = rcode
    for rr in answers:
        record.add_answer(rr)
    for rr in authority:
        record.add_auth(rr)
    wire: bytes = record.pack()
    return wire


QNAME = encode_name("example.org")


def test_parse_every_type() -> None:
    query = make_query(1, QNAME, 16)
    soa = SOA("ns.example.org", "host.example.org", (1, 2, 3, 4, 300))
    data = reply_for(
        query,
        RR("example.org", QTYPE.A, rdata=A("192.0.2.1"), ttl=60),
        RR("example.org", QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=61),
        RR("example.org", QTYPE.MX, rdata=MX("Mail.Example.org", 10), ttl=62),
        RR("example.org", QTYPE.PTR, rdata=PTR("p.example.org"), ttl=63),
        RR("Example.ORG", QTYPE.TXT, rdata=TXT([b"v=spf1 ", b"-all"]), ttl=64),
        RR("example.org", QTYPE.CNAME, rdata=CNAME("c.example.org"), ttl=65),
        RR("example.org", 99, rdata=TXT([b"v=spf1 -all"]), ttl=66),
        RR("example.org", QTYPE.NS, rdata=CNAME("ns.example.org"), ttl=67),  # dropped
        authority=(RR("example.org", QTYPE.SOA, rdata=soa, ttl=900),),
    )
    reply = parse_reply(data, 1, QNAME, 16)
    assert reply is not None
    assert reply.rcode == 0 and not reply.truncated and reply.size == len(data)
    values = [(rr.owner, rr.rtype, rr.ttl, rr.value) for rr in reply.answer]
    assert values == [
        ("example.org", 1, 60, "192.0.2.1"),
        ("example.org", 28, 61, "2001:db8::1"),
        ("example.org", 15, 62, (10, "mail.example.org")),
        ("example.org", 12, 63, "p.example.org"),
        ("example.org", 16, 64, (b"v=spf1 ", b"-all")),
        ("example.org", 5, 65, "c.example.org"),
        ("example.org", 99, 66, (b"v=spf1 -all",)),
    ]
    assert [(rr.rtype, rr.ttl, rr.value) for rr in reply.authority] == [(6, 900, 300)]


def test_replies_to_other_queries_are_not_ours() -> None:
    query = make_query(9, QNAME, 16)
    good = reply_for(query)
    assert parse_reply(good, 9, QNAME, 16) is not None
    assert parse_reply(good, 10, QNAME, 16) is None  # another ID
    assert parse_reply(good, 9, encode_name("example.com"), 16) is None  # another name
    assert parse_reply(good, 9, QNAME, 1) is None  # another type
    assert parse_reply(query, 9, QNAME, 16) is None  # the query itself (QR clear)
    assert parse_reply(good[:11], 9, QNAME, 16) is None
    # RFC 4343: the echo may differ in case.
    upper = reply_for(make_query(9, encode_name("EXAMPLE.org"), 16))
    assert parse_reply(upper, 9, QNAME, 16) is not None


def test_truncated_flag_and_rcode() -> None:
    data = bytearray(reply_for(make_query(3, QNAME, 16), rcode=3))
    data[2] |= 0x02
    # RFC 2181 section 9: nothing of a truncated message is used, but its
    # response code and size are those of the message.
    assert parse_reply(bytes(data), 3, QNAME, 16) == Reply(3, (), (), len(data), truncated=True)


def header(qid: int, an: int) -> bytes:
    return struct.pack("!6H", qid, 0x8180, 1, an, 0, 0) + QNAME + struct.pack("!HH", 1, 1)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xc0", "truncated compression pointer"),
        (b"\xc0\x40", "forward compression pointer"),
        (b"\x80", "unknown label type"),
        (b"\x05ab", "label runs past"),
        (b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x05\x01\x02\x03\x04\x05", "malformed A"),
        (b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x09\x01\x02", "runs past the message"),
        (b"\x00\x00\x01\x00\x01\x00\x00", "message ends early"),
        (b"\x00\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x02\x05a", "message ends early"),
    ],
)
def test_malformed_replies(body: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        parse_reply(header(5, 1) + body, 5, QNAME, 1)


def test_compression_loop_and_long_names_are_refused() -> None:
    # A pointer to itself would loop forever if pointers could point forward.
    own_offset = len(header(5, 1))
    loop = struct.pack("!H", 0xC000 | own_offset)
    with pytest.raises(WireError, match="forward"):
        parse_reply(header(5, 1) + loop, 5, QNAME, 1)
    long_name = b"\x3f" + b"a" * 63
    with pytest.raises(WireError, match="longer than 255"):
        parse_reply(header(5, 1) + long_name * 5 + b"\x00", 5, QNAME, 1)


def test_other_classes_and_unknown_types_are_skipped() -> None:
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 3, 60, 4) + b"\x01\x02\x03\x04"  # class CH
    unknown = b"\xc0\x0c" + struct.pack("!HHIH", 257, 1, 60, 2) + b"\x00\x00"
    ttl_top_bit = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0x80000001, 4) + b"\x09\x09\x09\x09"
    reply = parse_reply(header(5, 3) + rr + unknown + ttl_top_bit, 5, QNAME, 1)
    assert reply is not None
    # RFC 2181 section 8: a TTL with the top bit set counts as zero.
    assert [(rr.value, rr.ttl) for rr in reply.answer] == [("9.9.9.9", 0)]


# --- the transport, against servers on loopback ---------------------------


Handler = Callable[[bytes, Callable[[bytes], None]], None]


def reply_to(sock: socket.socket, peer: tuple[str, int], data: bytes) -> None:
    sock.sendto(data, peer)


@pytest.fixture
def udp_server() -> Iterator[Callable[[Handler], tuple[str, int]]]:
    sockets: list[socket.socket] = []
    stop = threading.Event()

    def start(handler: Handler) -> tuple[str, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        sockets.append(sock)

        def serve() -> None:
            while not stop.is_set():
                try:
                    data, peer = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return
                handler(data, functools.partial(reply_to, sock, peer))

        threading.Thread(target=serve, daemon=True).start()
        address: tuple[str, int] = sock.getsockname()
        return address

    yield start
    stop.set()
    for sock in sockets:
        sock.close()


def test_spoofed_replies_are_ignored(udp_server: Callable[[Handler], tuple[str, int]]) -> None:
    def handler(query: bytes, send: Callable[[bytes], None]) -> None:
        qid = struct.unpack("!H", query[:2])[0]
        other = make_query(qid ^ 1, QNAME, 16)
        send(reply_for(other, RR("example.org", QTYPE.TXT, rdata=TXT([b"forged"]))))
        wrong = make_query(qid, encode_name("example.com"), 16)
        send(reply_for(wrong, RR("example.com", QTYPE.TXT, rdata=TXT([b"forged"]))))
        send(reply_for(query, RR("example.org", QTYPE.TXT, rdata=TXT([b"genuine"]))))

    server = udp_server(handler)
    reply = dnswire.exchange(server, QNAME, 16, time.monotonic() + 2)
    assert [rr.value for rr in reply.answer] == [(b"genuine",)]


def test_silent_server_times_out(udp_server: Callable[[Handler], tuple[str, int]]) -> None:
    server = udp_server(lambda query, send: None)
    started = time.monotonic()
    with pytest.raises(dnswire.Unreachable, match="timeout"):
        dnswire.exchange(server, QNAME, 16, started + 0.2)
    assert time.monotonic() - started < 1.5


def test_formerr_is_retried_without_edns(udp_server: Callable[[Handler], tuple[str, int]]) -> None:
    seen: list[int] = []

    def handler(query: bytes, send: Callable[[bytes], None]) -> None:
        arcount = struct.unpack("!H", query[10:12])[0]
        seen.append(arcount)
        send(reply_for(query, rcode=1 if arcount else 0))

    reply = dnswire.exchange(udp_server(handler), QNAME, 16, time.monotonic() + 2)
    assert reply.rcode == 0 and seen == [1, 0]


def test_truncated_answer_is_fetched_over_tcp() -> None:
    big = TXT([b"x" * 255] * 8)
    udp, tcp = udp_and_tcp_on_one_port()
    tcp.listen()
    with udp, tcp:
        port = udp.getsockname()[1]

        def serve() -> None:
            query, peer = udp.recvfrom(65535)
            truncated = bytearray(reply_for(query))
            truncated[2] |= 0x02
            udp.sendto(bytes(truncated), peer)
            conn, _ = tcp.accept()
            with conn:
                size = struct.unpack("!H", conn.recv(2))[0]
                query = conn.recv(size)
                answer = reply_for(query, RR("example.org", QTYPE.TXT, rdata=big))
                conn.sendall(struct.pack("!H", len(answer)) + answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        reply = dnswire.exchange(("127.0.0.1", port), QNAME, 16, time.monotonic() + 5)
        thread.join(5)
    assert not reply.truncated
    assert reply.answer[0].value == tuple([b"x" * 255] * 8)


def test_refused_connection_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(dnswire.Unreachable):
        dnswire.exchange(("127.0.0.1", port), QNAME, 16, time.monotonic() + 1)


def test_system_nameservers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
        "nameserver not-an-address\noptions timeout:1\n"
    )
    assert dnswire.system_nameservers(str(conf)) == (("192.0.2.53", 53), ("fe80::1", 53))
    empty = tmp_path / "empty"
    empty.write_text("")
    assert dnswire.system_nameservers(str(empty)) == (("127.0.0.1", 53),)
    assert dnswire.system_nameservers(str(tmp_path / "missing")) == (("127.0.0.1", 53),)


# --- what hostile replies cost and how they are read ----------------------


def cpu(parse: Callable[[], object]) -> float:
    """The least CPU time of five runs of `parse`."""
    times = []
    for _ in range(5):
        started = time.process_time()
        parse()
        times.append(time.process_time() - started)
    return min(times)


def test_names_are_read_once_in_linear_time_and_as_if_written_in_full() -> None:
    # As many records as a section may hold, owned by a chain of pointers,
    # cost about what as many owned by one pointer to the question do.
    # Read naively, the n-th owner walked n pointers: about 40 times as much.
    question = QNAME + struct.pack("!HH", 16, 1)
    count = 1024  # as many as a section may hold
    chain = pointer_chain(5, question, 12 + len(question) + 12 * count)
    flat = struct.pack("!6H", 5, 0x8180, 1, count, 0, 0) + question
    flat += (b"\xc0\x0c" + struct.pack("!HHIH", 10, 1, 60, 0)) * count
    assert len(chain) == len(flat)
    assert cpu(lambda: parse_reply(chain, 5, QNAME, 16)) < 5 * cpu(
        lambda: parse_reply(flat, 5, QNAME, 16)
    )
    reply = parse_reply(chain, 5, QNAME, 16)
    assert reply is not None and reply.answer == () and not reply.oversized
    # Owners that point into the middle of earlier names, and names inside
    # record data that point at owners: each text as if written in full.
    head = struct.pack("!6H", 5, 0x8180, 1, 4, 0, 0) + QNAME + struct.pack("!HH", 15, 1)
    first = b"\x04mail\xc0\x0c"  # mail.example.org, at offset len(head)
    mx = len(head)
    records = (
        first + struct.pack("!HHIH", 15, 1, 60, 4) + b"\x00\x0a" + struct.pack("!H", 0xC000 | mx)
    )
    records += b"\x03sub" + struct.pack("!H", 0xC000 | mx) + struct.pack("!HHIH", 15, 1, 60, 8)
    records += b"\x00\x14\x03two" + struct.pack("!H", 0xC000 | (mx + 5))
    records += struct.pack("!H", 0xC000 | (mx + 5)) + struct.pack("!HHIH", 15, 1, 60, 4)
    records += b"\x00\x1e" + struct.pack("!H", 0xC000 | 12)
    records += b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 60, 4) + b"\x00\x28" + b"\xc0\x0c"
    reply = parse_reply(head + records, 5, QNAME, 15)
    assert reply is not None
    assert [(rr.owner, rr.value) for rr in reply.answer] == [
        ("mail.example.org", (10, "mail.example.org")),
        ("sub.mail.example.org", (20, "two.example.org")),
        ("example.org", (30, "example.org")),
        ("example.org", (40, "example.org")),
    ]


def test_a_name_of_more_pointers_than_labels_a_name_can_have_is_refused() -> None:
    # RFC 1035 section 4.1.4 sets no bound; no encoder points at a pointer.
    head = struct.pack("!6H", 5, 0x8180, 1, 1, 0, 0) + QNAME + struct.pack("!HH", 1, 1)

    def chained(hops: int) -> bytes:
        # A NULL record whose data is `hops` - 1 pointers each to the one
        # before, the first to the question; then an A record owned by a
        # pointer to the last of them.
        data = bytearray()
        start = len(head) + 12
        for n in range(hops - 1):
            data += struct.pack("!H", 0xC000 | (start + 2 * (n - 1) if n else 12))
        null = b"\xc0\x0c" + struct.pack("!HHIH", 10, 1, 60, len(data)) + bytes(data)
        last = start + 2 * (hops - 2)
        a = (
            struct.pack("!H", 0xC000 | last)
            + struct.pack("!HHIH", 1, 1, 60, 4)
            + b"\x01\x02\x03\x04"
        )
        counted = bytearray(head)
        counted[7] = 2
        return bytes(counted) + null + a

    reply = parse_reply(chained(dnswire.MAX_POINTERS), 5, QNAME, 1)
    assert reply is not None and reply.answer[0].owner == "example.org"
    with pytest.raises(WireError, match=r"^too many compression pointers$"):
        parse_reply(chained(dnswire.MAX_POINTERS + 1), 5, QNAME, 1)


def test_reading_stops_past_the_records_an_answer_may_have() -> None:
    # 5,000 TXT records on a name of 123 labels: refused unread.
    name = encode_name(".".join(["a"] * 121 + ["example", "org"]))
    head = struct.pack("!6H", 5, 0x8180, 1, 5000, 0, 0) + name + struct.pack("!HH", 16, 1)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, 1) + b"\x00"
    started = time.process_time()
    reply = parse_reply(head + record * 5000, 5, name, 16)
    assert time.process_time() - started < 0.1
    assert reply == Reply(NOERROR, (), (), len(head + record * 5000), oversized=True)
    # 1,000 of them: refused whole, so only the first 257 are read; what
    # follows them (here garbage) is not looked at.
    head = head[:6] + struct.pack("!H", 1000) + head[8:]
    data = head + record * 300 + b"\xff" * 100
    reply = parse_reply(data, 5, name, 16)
    assert reply is not None
    assert (reply.rcode, reply.authority, reply.size, reply.oversized) == (
        NOERROR,
        (),
        len(data),
        True,
    )
    assert len(reply.answer) == dnswire.MAX_ANSWER_RECORDS + 1
    assert reply.answer[0].owner == name_text(name)
    # Records of other types do not count, and 256 of the asked one are read whole.
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 2) + b"\xc0\x0c"
    head = struct.pack("!6H", 5, 0x8180, 1, 556, 0, 0) + name + struct.pack("!HH", 16, 1)
    reply = parse_reply(head + cname * 300 + record * 256, 5, name, 16)
    assert reply is not None and not reply.oversized and len(reply.answer) == 556
    # Other sections of more records than a reply holds are malformed.
    for counts in ((0, 1025, 0), (0, 0, 1025)):
        head = struct.pack("!6H", 5, 0x8180, 1, *counts) + name + struct.pack("!HH", 16, 1)
        with pytest.raises(WireError, match="more than 1024 records in a section"):
            parse_reply(head + record * 1025, 5, name, 16)


def test_a_reply_under_another_opcode_is_not_the_answer() -> None:
    query = make_query(9, QNAME, 16)
    update = bytearray(reply_for(query, RR("example.org", QTYPE.TXT, rdata=TXT([b"forged"]))))
    update[2] |= 5 << 3  # opcode UPDATE (RFC 2136)
    assert parse_reply(bytes(update), 9, QNAME, 16) is None


def with_opt(data: bytes, ttl: int, count: int = 1) -> bytes:
    """`data` with `count` OPT records of this TTL in its additional section."""
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, ttl, 0)
    return data[:10] + struct.pack("!H", count) + data[12:] + opt * count


def test_the_extended_rcode_of_the_opt_record_counts() -> None:
    # RFC 6891 section 6.1.3: the OPT TTL's top 8 bits are the upper bits of
    # the response code: 1 over NOERROR is BADVERS (16), not NOERROR.
    query = make_query(9, QNAME, 16)
    plain = reply_for(query)
    reply = parse_reply(with_opt(plain, 0x01000000), 9, QNAME, 16)
    assert reply is not None and reply.rcode == 16
    reply = parse_reply(with_opt(plain, 0x00008000), 9, QNAME, 16)  # version 0, DO bit
    assert reply is not None and reply.rcode == 0
    with pytest.raises(WireError, match=r"^more than one OPT record$"):
        parse_reply(with_opt(plain, 0, 2), 9, QNAME, 16)
    with pytest.raises(WireError, match="message ends early"):
        parse_reply(with_opt(plain, 0)[:-3], 9, QNAME, 16)


def test_a_truncated_reply_is_not_read_beyond_its_question() -> None:
    data = bytearray(reply_for(make_query(3, QNAME, 16)))
    data[2] |= 0x02
    data[7] = 9  # nine answers claimed, none there
    reply = parse_reply(bytes(data) + b"\xc0", 3, QNAME, 16)
    assert reply is not None and reply.truncated and reply.answer == ()


def test_a_malformed_or_foreign_datagram_does_not_end_the_wait(
    udp_server: Callable[[Handler], tuple[str, int]],
) -> None:
    # RFC 5452: anyone can send datagrams with a guessed ID; the server's
    # own reply, coming after them, is the answer.
    def handler(query: bytes, send: Callable[[bytes], None]) -> None:
        genuine = reply_for(query, RR("example.org", QTYPE.TXT, rdata=TXT([b"genuine"])))
        send(genuine[:-3])  # the right ID, malformed
        update = bytearray(genuine)
        update[2] |= 5 << 3
        send(bytes(update))
        send(genuine)

    reply = dnswire.exchange(udp_server(handler), QNAME, 16, time.monotonic() + 2)
    assert [rr.value for rr in reply.answer] == [(b"genuine",)]


def test_only_malformed_datagrams_until_the_deadline_say_so(
    udp_server: Callable[[Handler], tuple[str, int]],
) -> None:
    def handler(query: bytes, send: Callable[[bytes], None]) -> None:
        send(reply_for(query, RR("example.org", QTYPE.TXT, rdata=TXT([b"x"])))[:-3])

    started = time.monotonic()
    with pytest.raises(WireError, match="message ends early"):
        dnswire.exchange(udp_server(handler), QNAME, 16, started + 0.3)
    assert time.monotonic() - started >= 0.3


def test_sections_of_as_many_records_as_a_reply_holds_are_read() -> None:
    # 1024 records in the authority and in the additional section (one of
    # them the OPT record, RFC 6891 section 6.1.1) are within the bound.
    count = dnswire.MAX_SECTION_RECORDS
    head = struct.pack("!6H", 5, 0x8180, 1, 0, count, count) + QNAME + struct.pack("!HH", 16, 1)
    address = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01"
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x01000000, 0)
    reply = parse_reply(head + address * count + address * (count - 1) + opt, 5, QNAME, 16)
    assert reply is not None and reply.rcode == 16  # BADVERS: the OPT record was read
    assert len(reply.authority) == count and reply.authority[-1].value == "192.0.2.1"


def test_the_opt_record_may_follow_other_additional_records_and_carry_options() -> None:
    # RFC 6891 section 6.1.2: the OPT record's data is a list of options,
    # none of which spfmilter uses; records before it are skipped whole.
    plain = reply_for(make_query(9, QNAME, 16))
    glue = b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + b"\x20\x01\x0d\xb8" + b"\x00" * 12
    padding = struct.pack("!HH", 12, 6) + b"\x00" * 6  # RFC 7830 padding option
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x01000000, len(padding)) + padding
    data = plain[:10] + struct.pack("!H", 2) + plain[12:] + glue + opt
    reply = parse_reply(data, 9, QNAME, 16)
    assert reply is not None and reply.rcode == 16


def test_a_pointer_forward_is_refused_even_to_a_name_read_before() -> None:
    # RFC 1035 section 4.1.4: a pointer designates a prior occurrence of a
    # name.  The second owner below points back into the first record's
    # data, whose one label spans that owner and the next one, so the root
    # label after them has been read when the third owner points at it.
    head = struct.pack("!6H", 5, 0x8180, 1, 3, 0, 0) + QNAME + struct.pack("!HH", 1, 1)
    label_at = len(head) + 12  # the first record's one octet of data
    first = b"\xc0\x0c" + struct.pack("!HHIH", 10, 1, 60, 1) + b"\x10"  # NULL, data 16
    second = struct.pack("!H", 0xC000 | label_at) + struct.pack("!HHIH", 10, 1, 60, 2) + b"zz"
    root_at = label_at + 1 + 16  # right after the 16 octets of that label
    third = struct.pack("!H", 0xC000 | root_at) + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01" * 4
    data = head + first + second + third
    assert data[root_at] == 0 and root_at > len(head + first + second)
    with pytest.raises(WireError, match=r"^forward compression pointer$"):
        parse_reply(data, 5, QNAME, 1)


def test_owners_that_point_at_owners_that_are_pointers() -> None:
    # A pointer to a pointer to the question's name is that name (RFC 1035
    # section 4.1.4), its length included: 242 octets of labels before it
    # make a name of exactly 255 octets (section 3.1).
    head = struct.pack("!6H", 5, 0x8180, 1, 4, 0, 0) + QNAME + struct.pack("!HH", 1, 1)
    second = len(head) + 16  # the second record's owner

    def a(owner: bytes, last: int) -> bytes:
        return owner + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, last])

    labels = (b"\x3f" + b"x" * 63) * 3 + b"\x31" + b"y" * 49
    assert len(labels) == 242
    records = a(b"\xc0\x0c", 1) + a(b"\xc0\x0c", 2)
    records += a(struct.pack("!H", 0xC000 | second), 3)
    records += a(labels + struct.pack("!H", 0xC000 | second), 4)
    reply = parse_reply(head + records, 5, QNAME, 1)
    assert reply is not None
    owners = [rr.owner for rr in reply.answer]
    assert owners[:3] == ["example.org"] * 3
    assert owners[3] == ".".join(["x" * 63] * 3 + ["y" * 49, "example.org"])


def test_a_name_ending_in_one_read_before_is_not_walked_again() -> None:
    # 1000 owners, each a label and a pointer to a name of 122 labels read
    # once, cost a few times what 1000 owners of one pointer each do.  Were
    # each walked to its root label, it would cost over 100 times as much.
    count = 1000
    head = struct.pack("!6H", 5, 0x8180, 1, 1 + count, 0, 0) + QNAME + struct.pack("!HH", 16, 1)
    first = head + b"\x01x" * 120 + b"\xc0\x0c" + struct.pack("!HHIH", 10, 1, 60, 0)
    pointer = struct.pack("!H", 0xC000 | len(head))
    labelled = first + (b"\x01y" + pointer + struct.pack("!HHIH", 10, 1, 60, 0)) * count
    flat = first + (b"\xc0\x0c" + struct.pack("!HHIH", 10, 1, 60, 2) + b"\x00\x00") * count
    assert len(labelled) == len(flat)
    assert cpu(lambda: parse_reply(labelled, 5, QNAME, 16)) < 10 * cpu(
        lambda: parse_reply(flat, 5, QNAME, 16)
    )
