"""Authoritative DNS server for spfmilter's integration tests.

This module owns the fake DNS that integration and conformance tests resolve
against: a server answering over UDP and TCP on one loopback port from zone
data in the format of the openspf RFC 7208 test suite (rfc7208-tests.yml), a
loader for YAML files in that format, and a small CLI::

    python -m testkit.dnsserver ZONE.yaml [--port N] [--delay SECONDS]

Zone data maps a domain name to a list of entries.  An entry is a one-key
mapping ``{TYPE: value}`` with TYPE one of A, AAAA, MX (value
``[preference, exchange]``), PTR, CNAME, TXT and SPF (value a string, or a
list of strings forming one record), or one of these marker strings:

TIMEOUT
    Queries for the name are dropped unless the name has records of the
    asked type (directly or through a CNAME).  The suite needs that nuance:
    its "spftimeout" test has a TXT record next to TIMEOUT and expects the
    TXT lookup to succeed.  A name holding only TIMEOUT never answers.
SERVFAIL
    Our extension: the same queries are answered with rcode SERVFAIL.

More markers of ours make hostile replies to queries for the name itself
(not through a CNAME or a wildcard):

BADVERS
    The reply's OPT record carries extended RCODE bits 1 (RFC 6891 section
    6.1.3): with NOERROR in the header, the code is BADVERS (16).
MALFORMED_FIRST
    Over UDP, a malformed message with the query's ID (its one answer
    record breaks off) goes out before the reply, as anyone guessing the ID
    could send it (RFC 5452).
POINTER_CHAIN
    Over UDP the reply is truncated; over TCP it is 3,072 NULL records
    (1,024 in each section, 37 KB) whose owners are a chain of compression
    pointers (pointer_chain), whatever the zone holds.

Another extension, ``{FOREIGN: [owner, TYPE, value]}``, adds a record of
another owner to every answer for the name, in the answer section: what a
resolver that does not scrub its replies passes on, or a spoofed reply.
And ``{UPDATE_FIRST: value}`` sends, over UDP and before the reply, a reply
under opcode UPDATE (RFC 2136) with the query's ID whose answer is a TXT
record of that value.  ``{TTL: seconds}`` gives the name's records a TTL
of their own instead of the server's.

A name whose first label is ``*`` is a wildcard (RFC 4592 section 2):
``*.load.example`` answers, with the asked name as owner, for every name
below ``load.example`` that the zone data does not hold (neither as an owner
name nor as an ancestor of one), so tests can query any number of distinct
names without listing them.  Markers work there too.

A value of ``NONE`` (the suite's ``TXT: NONE``) serves nothing.  It only
marks the name as having TXT data of its own, which keeps ``spf_as_txt``
from copying the name's SPF records to TXT: the suite's reference driver
copies SPF to TXT only at names without any TXT entry, and the "Selecting
records" tests (SPF +all next to TXT -all) depend on that.

``delay`` holds every answer back for that many seconds, like a distant
authoritative server (benchmarks use it); UDP answers wait in a queue for a
sender thread, so delayed queries overlap instead of queueing behind each other.

dnslib provides the wire format only; the socket loops are written here.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import ipaddress
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeAlias

import yaml
from dnslib import (
    AAAA,
    CLASS,
    CNAME,
    EDNS0,
    MX,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TXT,
    A,
    DNSBuffer,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSLabelError,
    DNSRecord,
)

from spfmilter.evaluation import dnswire

# dnslib ships no type hints; these aliases say what each Any stands for.
_Message: TypeAlias = Any  # dnslib.DNSRecord
_Record: TypeAlias = Any  # dnslib.RR
_RData: TypeAlias = Any  # an instance of a dnslib.RD subclass
_Name: TypeAlias = Any  # dnslib.DNSLabel

ZoneData: TypeAlias = Mapping[str, Sequence[object]]
"""Zone data as in the suite's ``zonedata:`` blocks."""

QueryLogEntry: TypeAlias = tuple[str, str, str]
"""(lower-cased name without trailing dot, type such as "TXT", "udp"/"tcp")."""

_Key: TypeAlias = tuple[bytes, ...]  # lower-cased labels, leftmost first

_LOG = logging.getLogger(__name__)

# The zones the tests and the benchmarks serve.
ZONES = Path(__file__).parent / "zones"

_POLL_SECONDS = 0.1  # how long a blocked socket call waits before rechecking stop
_BIND_ATTEMPTS = 20  # the free UDP port may be taken for TCP; try other ports
_MAX_MESSAGE = 65535  # largest DNS message, and largest TCP frame
_UDP_LIMIT = 512  # RFC 1035 4.2.1 limit when the query carries no EDNS0 OPT
_EDNS_PAYLOAD = 1232  # the payload size we advertise back (DNS Flag Day 2020)
_CNAME_LIMIT = 10  # most CNAME records put into one answer
_TXT_CHUNK = 255  # longest character-string (RFC 1035 3.3)
_UDP_RECEIVE_BUFFER = 4 * 1024 * 1024  # asked for; the kernel caps it at rmem_max
# Records in each section of a POINTER_CHAIN reply: as many as a sane reply
# could hold (spfmilter reads no more from one section).
_CHAIN_SECTION = 1024


class _Failure(enum.Enum):
    """What a marker entry makes the server do for a name it cannot answer."""

    TIMEOUT = "TIMEOUT"
    SERVFAIL = "SERVFAIL"


class _Hostile(enum.Enum):
    """What a marker entry makes the server do to its replies for the name."""

    BADVERS = "BADVERS"
    MALFORMED_FIRST = "MALFORMED_FIRST"
    POINTER_CHAIN = "POINTER_CHAIN"


@dataclass(frozen=True)
class _Node:
    """The records at one owner name, ready to put on the wire."""

    records: Mapping[int, tuple[_RData, ...]]
    failure: _Failure | None
    foreign: tuple[tuple[_Name, int, _RData], ...] = ()  # owner, type, data
    hostile: frozenset[_Hostile] = frozenset()
    update_first: _RData | None = None  # the TXT data of the UPDATE decoy
    ttl: int | None = None  # of its records, instead of the server's


@dataclass(frozen=True)
class _Zone:
    """Compiled zone data: swapped as a whole, never mutated."""

    nodes: Mapping[_Key, _Node]
    names: frozenset[_Key]  # owner names and their ancestors: these exist


@dataclass(frozen=True)
class _Answer:
    """The outcome of resolving a question against a zone."""

    rcode: int
    records: list[_Record]
    negative: bool  # no data at the final name: the reply carries the SOA


# ---------------------------------------------------------------- zone data


def load_zone_file(path: str | os.PathLike[str]) -> dict[str, list[object]]:
    """Read a YAML file holding one mapping of names to entry lists."""
    with open(path, encoding="utf-8") as stream:
        data = yaml.safe_load(stream)
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: expected a mapping of names to entries")
    return data


def _text_labels(name: str) -> tuple[bytes, ...]:
    """Split a presentation-format name into raw labels (UTF-8, no escapes)."""
    name = name.removesuffix(".")
    return tuple(name.encode("utf-8").split(b".")) if name else ()


def _key(labels: Sequence[bytes]) -> _Key:
    # bytes.lower() folds ASCII only, which is DNS case-insensitivity
    # (RFC 4343); other octets must match exactly.
    return tuple(label.lower() for label in labels)


def _domain(value: object) -> _Name:
    labels = _text_labels(str(value))
    # dnslib would write an empty label as a premature root label and
    # corrupt the rest of the message, so refuse it here.
    if b"" in labels:
        raise ValueError("empty label")
    return DNSLabel(labels)


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + _TXT_CHUNK] for i in range(0, len(data), _TXT_CHUNK)] or [b""]


def _character_strings(value: object) -> list[bytes]:
    strings = value if isinstance(value, list) else [value]
    chunks = [chunk for text in strings for chunk in _chunks(str(text).encode("utf-8"))]
    # A TXT record holds at least one character-string and dnspython rejects
    # one with none, so the suite's "SPF: []" becomes one empty string.
    return chunks or [b""]


def _address4(value: object) -> _RData:
    return A(tuple(ipaddress.IPv4Address(str(value)).packed))


def _address6(value: object) -> _RData:
    # ipaddress rather than dnslib's parser: it also accepts "::ffff:1.2.3.4".
    return AAAA(tuple(ipaddress.IPv6Address(str(value)).packed))


def _mail_exchanger(value: object) -> _RData:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError("MX value must be [preference, exchange]")
    preference, exchange = value
    return MX(_domain(exchange), int(preference))


def _pointer(value: object) -> _RData:
    return PTR(_domain(value))


def _alias(value: object) -> _RData:
    return CNAME(_domain(value))


def _text(value: object) -> _RData:
    return TXT(_character_strings(value))


_BUILDERS: Mapping[str, tuple[int, Callable[[object], _RData]]] = {
    "A": (QTYPE.A, _address4),
    "AAAA": (QTYPE.AAAA, _address6),
    "MX": (QTYPE.MX, _mail_exchanger),
    "PTR": (QTYPE.PTR, _pointer),
    "CNAME": (QTYPE.CNAME, _alias),
    "TXT": (QTYPE.TXT, _text),
    "SPF": (QTYPE.SPF, _text),
}


def _split_entry(name: str, entry: object) -> tuple[str, object]:
    if not (isinstance(entry, Mapping) and len(entry) == 1):
        raise ValueError(f"{name}: entry {entry!r} is not a marker or a one-key mapping")
    ((rtype, value),) = entry.items()
    if rtype not in _BUILDERS:
        raise ValueError(f"{name}: unsupported record type {rtype!r}")
    return rtype, value


def _make_rdata(name: str, rtype: str, value: object) -> _RData | None:
    """Build one record's data, or None (logged) if DNS cannot carry it.

    The suite holds deliberately odd values; a record that cannot be encoded
    is left out so that the rest of the name still answers.
    """
    try:
        rdata = _BUILDERS[rtype][1](value)
        rdata.pack(DNSBuffer())  # dnslib checks label lengths only when packing
    except (ValueError, TypeError, DNSError, DNSLabelError) as exc:
        _LOG.warning("%s: skipping %s %r: %s", name, rtype, value, exc)
        return None
    return rdata


def _compile_node(name: str, entries: Sequence[object], spf_as_txt: bool) -> _Node:
    records: dict[int, list[_RData]] = {}
    failure: _Failure | None = None
    hostile: set[_Hostile] = set()
    update_first: _RData | None = None
    ttl: int | None = None
    has_own_txt = False
    foreign: list[tuple[_Name, int, _RData]] = []
    for entry in entries:
        if isinstance(entry, Mapping) and "FOREIGN" in entry:
            owner, rtype, value = entry["FOREIGN"]
            rdata = _make_rdata(owner, rtype, value)
            if rdata is not None:
                foreign.append((DNSLabel(owner), _BUILDERS[rtype][0], rdata))
            continue
        if isinstance(entry, Mapping) and "UPDATE_FIRST" in entry:
            update_first = _make_rdata(name, "TXT", entry["UPDATE_FIRST"])
            continue
        if isinstance(entry, Mapping) and "TTL" in entry:
            ttl = int(entry["TTL"])
            continue
        if isinstance(entry, str):
            if entry in _Hostile.__members__:
                hostile.add(_Hostile(entry))
                continue
            try:
                failure = _Failure(entry)
            except ValueError:
                raise ValueError(f"{name}: unknown marker {entry!r}") from None
            continue
        rtype, value = _split_entry(name, entry)
        has_own_txt = has_own_txt or rtype == "TXT"
        rdata = None if value == "NONE" else _make_rdata(name, rtype, value)
        if rdata is not None:
            records.setdefault(_BUILDERS[rtype][0], []).append(rdata)
    if spf_as_txt and not has_own_txt and QTYPE.SPF in records:
        records[QTYPE.TXT] = records[QTYPE.SPF]
    return _Node(
        {qtype: tuple(rdatas) for qtype, rdatas in records.items()},
        failure,
        tuple(foreign),
        frozenset(hostile),
        update_first,
        ttl,
    )


def _compile_zone(zone: ZoneData, spf_as_txt: bool) -> _Zone:
    # Spellings of one name ("Example.com", "example.com.") share one node.
    merged: dict[_Key, tuple[str, list[object]]] = {}
    for name, entries in zone.items():
        if not isinstance(entries, list):
            raise ValueError(f"{name}: expected a list of entries, got {entries!r}")
        merged.setdefault(_key(_text_labels(str(name))), (str(name), []))[1].extend(entries)
    nodes = {
        key: _compile_node(name, entries, spf_as_txt) for key, (name, entries) in merged.items()
    }
    names = frozenset(key[i:] for key in nodes for i in range(len(key) + 1))
    return _Zone(nodes, names)


# ---------------------------------------------------------------- answering


def _resolve(zone: _Zone, qname: _Name, qtype: int, ttl: int) -> _Answer | None:
    """Answer like an authoritative server; None means stay silent.

    CNAMEs are followed inside the zone data, as an authoritative server
    does for targets in its own zones, until a loop or _CNAME_LIMIT records.
    """
    answers: list[_Record] = []
    owner = qname
    seen: set[_Key] = set()
    while True:
        key = _key(owner.label)
        seen.add(key)
        node = _node(zone, key)
        if node is None:
            rcode = RCODE.NOERROR if key in zone.names else RCODE.NXDOMAIN
            return _Answer(rcode, answers, negative=True)
        if qtype in node.records:
            own = ttl if node.ttl is None else node.ttl
            answers += [_record(owner, qtype, rdata, own) for rdata in node.records[qtype]]
            answers += [_record(name, rtype, rdata, ttl) for name, rtype, rdata in node.foreign]
            return _Answer(RCODE.NOERROR, answers, negative=False)
        if QTYPE.CNAME not in node.records:
            return _unanswerable(node.failure, answers)
        alias = node.records[QTYPE.CNAME][0]
        answers.append(_record(owner, QTYPE.CNAME, alias, ttl))
        owner = alias.label
        if _key(owner.label) in seen or len(answers) >= _CNAME_LIMIT:
            return _Answer(RCODE.NOERROR, answers, negative=True)


def _node(zone: _Zone, key: _Key) -> _Node | None:
    """The node that answers for key: its own, or a wildcard's."""
    node = zone.nodes.get(key)
    if node is None and key not in zone.names:
        node = _wildcard(zone, key)
    return node


def _wildcard(zone: _Zone, key: _Key) -> _Node | None:
    """The wildcard node that answers for key, a name the zone does not hold.

    RFC 4592 section 3.3.1: only the wildcard child of the closest encloser
    (the nearest ancestor that exists) applies.
    """
    for start in range(1, len(key) + 1):
        if key[start:] in zone.names:
            return zone.nodes.get((b"*", *key[start:]))
    return None


def _unanswerable(failure: _Failure | None, answers: list[_Record]) -> _Answer | None:
    if failure is _Failure.TIMEOUT:
        return None
    if failure is _Failure.SERVFAIL:
        return _Answer(RCODE.SERVFAIL, [], negative=False)
    return _Answer(RCODE.NOERROR, answers, negative=True)


def _record(owner: _Name, rtype: int, rdata: _RData, ttl: int) -> _Record:
    return RR(owner, rtype, ttl=ttl, rdata=rdata)


def _soa(ttl: int) -> _Record:
    # The server plays authority for every name, so its one made-up SOA is
    # owned by the root: resolvers take the negative-caching TTL from an SOA
    # whose owner is a superdomain of the query name (RFC 2308).
    times = (1, 3600, 600, 86400, ttl)  # serial refresh retry expire minimum
    return _record(".", QTYPE.SOA, SOA("ns.test.invalid.", "hostmaster.test.invalid.", times), ttl)


def _parse_query(data: bytes) -> _Message | None:
    """Return the query in data, or None (logged) if we do not answer it."""
    try:
        request = DNSRecord.parse(data)
    except Exception as exc:  # dnslib raises assorted types on garbage input
        _LOG.debug("ignoring unparsable message: %r", exc)
        return None
    header = request.header
    if (
        header.qr
        or header.opcode != OPCODE.QUERY
        or len(request.questions) != 1
        or request.q.qclass != CLASS.IN
    ):
        _LOG.debug("ignoring a message that is not a one-question IN query")
        return None
    return request


def _client_opt(request: _Message) -> _Record | None:
    return next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)


def _reply(request: _Message, answer: _Answer, ttl: int, extended_rcode: int = 0) -> _Message:
    header = DNSHeader(id=request.header.id, qr=1, aa=1, rd=request.header.rd, rcode=answer.rcode)
    reply = DNSRecord(header, questions=[request.q], rr=answer.records)
    if answer.negative:
        reply.add_auth(_soa(ttl))
    if _client_opt(request) is not None:
        # RFC 6891 6.1.1: echo OPT
        reply.add_ar(EDNS0(udp_len=_EDNS_PAYLOAD, ext_rcode=extended_rcode))
    return reply


def _question(data: bytes) -> bytes:
    """The question section of a one-question query, as sent (uncompressed)."""
    end = 12
    while data[end]:
        end += data[end] + 1
    return data[12 : end + 5]


def pointer_chain(
    qid: int, question: bytes, size: int = _MAX_MESSAGE, per_section: int = _CHAIN_SECTION
) -> bytes:
    """A reply of at most `size` octets to a query with this ID and question
    section: NULL records (a type SPF does not use) with empty data, up to
    `per_section` in each of the answer, authority and additional sections,
    each owned by a pointer to the previous record's owner as far as a
    pointer reaches (offset 16383, RFC 1035 section 4.1.4), then by a
    pointer to the last of those.  Valid DNS; read naively, one owner takes
    as many hops as there are records before it in the first 16 KiB."""
    records = bytearray()
    previous = 12  # the question's name
    counts = [0, 0, 0]
    section = 0
    while 12 + len(question) + len(records) + 12 <= size and section < len(counts):
        here = 12 + len(question) + len(records)
        records += struct.pack("!HHHIH", 0xC000 | previous, QTYPE.NULL, CLASS.IN, 60, 0)
        counts[section] += 1
        section += counts[section] == per_section
        if here < 0x4000:
            previous = here
    header = struct.pack("!6H", qid, 0x8180, 1, *counts)  # QR, RD, RA
    return header + question + bytes(records)


def _malformed(qid: int, question: bytes) -> bytes:
    """A reply with this ID whose one answer record breaks off."""
    return dnswire.make_reply(qid, question, [dnswire.QUESTION_NAME + b"\x00"])


def _update(request: _Message, text: _RData) -> bytes:
    """A reply under opcode UPDATE with the query's ID and a TXT answer."""
    header = DNSHeader(id=request.header.id, qr=1, opcode=OPCODE.UPDATE, aa=1, rd=1)
    record = DNSRecord(header, questions=[request.q])
    record.add_answer(RR(request.q.qname, QTYPE.TXT, ttl=60, rdata=text))
    data: bytes = record.pack()
    return data


def _wire(request: _Message, reply: _Message, transport: str) -> bytes:
    """Pack reply; over UDP, send only a TC stub if it exceeds the limit."""
    data: bytes = reply.pack()
    opt = _client_opt(request)
    limit = max(_UDP_LIMIT, opt.rclass) if opt is not None else _UDP_LIMIT
    if transport == "udp" and len(data) > limit:
        reply.header.tc = 1
        reply.rr, reply.auth = [], []
        data = reply.pack()
    return data


def _take_messages(pending: bytearray) -> list[bytes]:
    """Remove and return the complete length-prefixed messages in pending."""
    messages = []
    while len(pending) >= 2:
        end = 2 + int.from_bytes(pending[:2], "big")
        if len(pending) < end:
            break
        messages.append(bytes(pending[2:end]))
        del pending[:end]
    return messages


def _bind_once(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Hundreds of clients asking at once must not overflow the kernel's
        # queue for this socket: a dropped query looks like a DNS timeout.
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RECEIVE_BUFFER)
        udp.bind((host, port))
        # Lets a fixed --port be reused at once after a restart.
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, udp.getsockname()[1]))
        tcp.listen()
    except OSError:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def _bind(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind a UDP and a TCP socket to one port (a free one if port is 0)."""
    for _ in range(0 if port else _BIND_ATTEMPTS - 1):
        try:
            return _bind_once(host, port)
        except OSError:  # the free UDP port's TCP twin is taken: try another
            continue
    return _bind_once(host, port)


def _send_datagram(sock: socket.socket, reply: bytes, peer: Any) -> None:
    try:
        sock.sendto(reply, peer)
    except OSError as exc:
        _LOG.debug("udp reply to %s failed: %s", peer, exc)


# ---------------------------------------------------------------- server


class DNSTestServer:
    """Serve zone data over UDP and TCP on one port of host.

    Use as a context manager, or call start() and stop().  Daemon threads
    do the serving; each blocked socket call wakes every _POLL_SECONDS to
    check for stop(), so stop() returns within a fraction of a second.
    """

    def __init__(
        self,
        zone: ZoneData | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: int = 300,
        spf_as_txt: bool = False,
        delay: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port  # the bound port once started
        self.ttl = ttl
        self.delay = delay  # seconds each answer is held back; may change while running
        # UDP answers held back by delay: (when due, answer, peer), due in order
        # as long as delay does not change.
        self._held: queue.SimpleQueue[tuple[float, bytes, Any]] = queue.SimpleQueue()
        self.queries: list[QueryLogEntry] = []
        self._lock = threading.Lock()
        self._zone = _compile_zone(zone or {}, spf_as_txt)
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    @property
    def nameserver(self) -> str:
        """The address as "HOST:PORT"."""
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._sockets:
            raise RuntimeError("DNSTestServer is already running")
        self._stopping.clear()
        udp, tcp = _bind(self.host, self.port)
        self.port = udp.getsockname()[1]
        self._sockets = [udp, tcp]
        for sock in self._sockets:
            sock.settimeout(_POLL_SECONDS)
        self._spawn(self._serve_udp, udp)
        self._spawn(self._send_held, udp)
        self._spawn(self._accept_tcp, tcp)

    def stop(self) -> None:
        self._stopping.set()
        # Join in start order: the TCP acceptor is joined before the
        # connection threads it may have started just before stopping.
        while True:
            with self._lock:
                if not self._threads:
                    break
                thread = self._threads.pop(0)
            thread.join()
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def set_zone(self, zone: ZoneData, spf_as_txt: bool = False) -> None:
        """Replace the zone data; queries see either the old or the new."""
        compiled = _compile_zone(zone, spf_as_txt)
        with self._lock:
            self._zone = compiled

    def clear_queries(self) -> None:
        with self._lock:
            self.queries.clear()

    def _spawn(self, target: Callable[[socket.socket], None], sock: socket.socket) -> None:
        thread = threading.Thread(
            target=target, args=(sock,), name=f"dnsserver-{target.__name__}", daemon=True
        )
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve_udp(self, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                data, peer = sock.recvfrom(_MAX_MESSAGE)
            except TimeoutError:
                continue
            for reply in self._handle(data, "udp"):
                if self.delay > 0:
                    self._held.put((time.monotonic() + self.delay, reply, peer))
                else:
                    _send_datagram(sock, reply, peer)

    def _send_held(self, sock: socket.socket) -> None:
        """Send the UDP answers that delay holds back, each when it is due."""
        while not self._stopping.is_set():
            try:
                due, reply, peer = self._held.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            # The artificial latency itself, not a wait for readiness.
            time.sleep(max(0.0, due - time.monotonic()))
            _send_datagram(sock, reply, peer)

    def _accept_tcp(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            self._spawn(self._serve_tcp, conn)

    def _serve_tcp(self, conn: socket.socket) -> None:
        """Answer queries on one connection until the client or stop() ends it."""
        with conn:
            conn.settimeout(_POLL_SECONDS)
            pending = bytearray()
            try:
                while not self._stopping.is_set():
                    try:
                        chunk = conn.recv(_MAX_MESSAGE)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    pending += chunk
                    for message in _take_messages(pending):
                        for reply in self._handle(message, "tcp"):
                            if self.delay > 0:
                                time.sleep(self.delay)  # the artificial latency
                            conn.sendall(len(reply).to_bytes(2, "big") + reply)
            except OSError as exc:  # the client went away mid-exchange
                _LOG.debug("tcp connection ended: %s", exc)

    def _handle(self, data: bytes, transport: str) -> list[bytes]:
        try:
            return self._respond(data, transport)
        except Exception:  # a bug here must not end the serving thread
            _LOG.exception("failed to answer a %s query", transport)
            return []

    def _respond(self, data: bytes, transport: str) -> list[bytes]:
        """The messages to send, in order: decoys, then the reply."""
        request = _parse_query(data)
        if request is None:
            return []
        question = request.q
        name = b".".join(question.qname.label).lower().decode("utf-8", "backslashreplace")
        with self._lock:
            self.queries.append((name, QTYPE.get(question.qtype), transport))
            zone = self._zone
        node = zone.nodes.get(_key(question.qname.label))
        hostile = node.hostile if node is not None else frozenset()
        qid = request.header.id
        if _Hostile.POINTER_CHAIN in hostile:
            if transport == "udp":  # TC set: ask again over TCP
                return [dnswire.make_reply(qid, _question(data), truncated=True)]
            return [pointer_chain(qid, _question(data))]
        answer = _resolve(zone, question.qname, question.qtype, self.ttl)
        if answer is None:
            _LOG.debug("not answering %s %s: TIMEOUT", name, QTYPE.get(question.qtype))
            return []
        extended = 1 if _Hostile.BADVERS in hostile else 0
        reply = _wire(request, _reply(request, answer, self.ttl, extended), transport)
        decoys = []
        if transport == "udp" and node is not None:
            if node.update_first is not None:
                decoys.append(_update(request, node.update_first))
            if _Hostile.MALFORMED_FIRST in hostile:
                decoys.append(_malformed(qid, _question(data)))
        return [*decoys, reply]


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.dnsserver",
        description="Serve a YAML zone file (openspf test-suite format) on 127.0.0.1.",
    )
    parser.add_argument("zone", help="YAML file mapping names to record lists")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds each answer is held back (default: 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with DNSTestServer(load_zone_file(args.zone), port=args.port, delay=args.delay) as server:
        print(f"listening on {server.nameserver}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it ends
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
