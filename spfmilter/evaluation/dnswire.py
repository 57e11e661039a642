"""DNS messages on the wire: the stub resolver's codec and transport.

This module owns the bytes spfmilter exchanges with a recursive resolver:
building a query (RFC 1035 section 4.1, with an EDNS0 OPT record, RFC 6891),
sending it over UDP and again over TCP when the reply is truncated (RFC 7766
section 5), and parsing the reply's answer and authority sections for the
record types SPF needs (A, AAAA, MX, PTR, TXT, SPF, CNAME, SOA).  A reply is
accepted only if it answers the query that was sent: it comes from the
server asked (a connected socket), carries the random query ID and echoes
the question under the QUERY opcode (RFC 5452 section 9); a datagram that
is not such a reply, malformed ones included, is ignored while the
server's own reply may still come.  The response code includes the EDNS
extended bits (RFC 6891 section 6.1.3).

Parsing costs time linear in the message, whatever its content: each name
is read once however often compression points at it (RFC 1035 section
4.1.4), pointers may only point backwards, and reading an answer section
stops at the first record of the asked type beyond what the resolver
accepts (MAX_ANSWER_RECORDS), since such an answer is refused whole; a
section of more records than an acceptable reply holds is not read at all.
A message is at most 65535 octets, so no reply costs more than
milliseconds.
"""

from __future__ import annotations

import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# RFC 1035 section 3.2.2 and RFC 3596 / RFC 7208 section 3.1 type codes.
QTYPES = {"A": 1, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SPF": 99}
TYPE_NAMES = {code: name for name, code in QTYPES.items()}
CLASS_IN = 1
OPT = 41

# RFC 1035 section 4.1.1 response codes, and RFC 6891 section 9's BADVERS
# (an extended code: its upper bits travel in the OPT record).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN = 0, 1, 2, 3
RCODE_NAMES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}

# Records of the asked type read from one answer section.  An SPF evaluation
# loops over them (RFC 7208 sections 5.3-5.5 compare the client with every
# address), so their number bounds its CPU; a hostile zone can otherwise
# return thousands per query.  Real SPF data has a handful.  The resolver
# refuses an answer with more, so reading stops at the first one past it.
MAX_ANSWER_RECORDS = 256

# Records one section may hold.  The largest answer accepted, 256 records of
# the asked type behind a CNAME chain, with a DNAME (RFC 6672) and a
# signature (RFC 4034) beside each, stays well below; an answer section of
# more is refused unread like one of too many records of the asked type,
# and another section of more is malformed.
MAX_SECTION_RECORDS = 1024

# Compression pointers followed for one name.  Names already read are not
# read again, so this bounds no cost; it refuses what no encoder writes: a
# name has at most 127 labels, and each pointer of a compressed name leads
# to at least one label (RFC 1035 section 4.1.4).
MAX_POINTERS = 127

# The EDNS0 payload size of DNS flag day 2020: large enough for most SPF
# answers over UDP, small enough to avoid IP fragmentation.
EDNS_PAYLOAD = 1232
MAX_MESSAGE = 65535

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_QUESTION_TAIL = struct.Struct("!HH")
_FLAG_QR = 0x8000
_OPCODE_SHIFT, _OPCODE_MASK = 11, 0xF  # QUERY is opcode 0 (RFC 1035 section 4.1.1)
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_FLAG_RA = 0x0080
# A name compressed to the question's (RFC 1035 section 4.1.4): it starts
# right after the header.
QUESTION_NAME = b"\xc0\x0c"
# An OPT pseudo-record: root owner, type 41, class = payload size, no options.
_OPT_RECORD = b"\x00" + struct.pack("!HHIH", OPT, EDNS_PAYLOAD, 0, 0)
# Printable ASCII that stands for itself in a name's text form; anything else
# (dots and backslashes inside a label, controls, 8-bit) is written \DDD.
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("."), ord("\\")}


class BadName(ValueError):
    """A name that cannot be put on the wire (RFC 1035 section 2.3.4)."""


class WireError(Exception):
    """A reply that is not a well-formed DNS message."""


class Unreachable(Exception):
    """No reply from the server in time, or the server refused the connection."""


@dataclass(frozen=True, slots=True)
class RR:
    """One resource record: owner name (text, lower-case), type, TTL, value.

    `value` is an address (str) for A and AAAA, a name (str) for CNAME and
    PTR, (preference, exchange) for MX, the character-strings (tuple of
    bytes) for TXT and SPF, and the minimum field (int) for SOA.
    """

    owner: str
    rtype: int
    ttl: int
    value: object


@dataclass(frozen=True, slots=True)
class Reply:
    """What a server answered: the response code (extended bits included),
    the answer and authority sections (other classes and types dropped),
    the message size, whether it was truncated (then no section is read),
    and whether the answer section holds more than MAX_ANSWER_RECORDS
    records of the asked type or MAX_SECTION_RECORDS in all (then `answer`
    has what was read of it, and `authority` nothing)."""

    rcode: int
    answer: tuple[RR, ...]
    authority: tuple[RR, ...]
    size: int
    truncated: bool = False
    oversized: bool = False


def encode_name(name: str) -> bytes:
    """A name in wire format (RFC 1035 section 3.1); raises BadName.

    Labels are taken as they are (macro expansion can put spaces or other
    printable characters in them, RFC 7208 section 7.3); a label with
    non-ASCII characters is converted to its A-label (IDNA, RFC 3490).
    """
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            try:
                raw = label.encode("idna")
            except UnicodeError:
                raise BadName(f"not a valid internationalized label: {label!r}") from None
        if not 0 < len(raw) <= 63:
            raise BadName("empty label" if not raw else f"label longer than 63 octets: {label!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise BadName("name longer than 255 octets")
    return bytes(out)


def name_text(wire: bytes) -> str:
    """The text form of a wire-format name, lower-cased, without the root dot."""
    labels = []
    offset = 0
    while wire[offset]:
        length = wire[offset]
        labels.append(_label_text(wire[offset + 1 : offset + 1 + length]))
        offset += length + 1
    return ".".join(labels)


def _label_text(label: bytes) -> str:
    if all(b in _PLAIN for b in label):
        return label.decode("ascii").lower()
    return "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in label.lower())


def make_question(qname: bytes, qtype: int) -> bytes:
    """A question section of one question, class IN (RFC 1035 section 4.1.2)."""
    return qname + _QUESTION_TAIL.pack(qtype, CLASS_IN)


def make_query(qid: int, qname: bytes, qtype: int, *, edns: bool = True) -> bytes:
    """A recursive query for one question (RFC 1035 section 4.1)."""
    header = _HEADER.pack(qid, _FLAG_RD, 1, 0, 0, 1 if edns else 0)
    return header + make_question(qname, qtype) + (_OPT_RECORD if edns else b"")


def make_record(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """A resource record of class IN (RFC 1035 section 4.1.3); `owner` is a
    name in wire format or a compression pointer."""
    return owner + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def make_reply(
    qid: int, question: bytes, records: Sequence[bytes] = (), *, truncated: bool = False
) -> bytes:
    """A recursive resolver's reply to the query `qid` with this question
    section: `records`, each whole in wire format, as its answer section."""
    flags = _FLAG_QR | _FLAG_RD | _FLAG_RA | (_FLAG_TC if truncated else 0)
    return _HEADER.pack(qid, flags, 1, len(records), 0, 0) + question + b"".join(records)


class _Parser:
    """Reads one message; every read is bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        # Offset -> (text, octets, end of its own bytes) of the name that
        # starts there, for every label and pointer read so far: a name that
        # compression points at again is not walked again.
        self._names: dict[int, tuple[str, int, int]] = {}

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise WireError("message ends early")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def name(self) -> str:
        """A possibly compressed name at the current offset (RFC 1035 4.1.4)."""
        data, names = self.data, self._names
        position = self.offset
        if data[position : position + 1] >= b"\xc0" and position + 1 < len(data):
            # The usual case, one pointer to a name read before.
            target = ((data[position] & 0x3F) << 8) | data[position + 1]
            known = names.get(target) if target < position else None
            if known is not None:
                names[position] = (known[0], known[1], position + 2)
                self.offset = position + 2
                return known[0]
        # What this walk reads before the root or a name read before:
        # (offset, label text or None for a pointer, octets of the label).
        steps: list[tuple[int, str | None, int]] = []
        octets = pointers = 0
        while True:
            known = names.get(position)
            if known is not None:
                text, tail, stop = known
                break
            if position >= len(data):
                raise WireError("name runs past the message")
            length = data[position]
            if length & 0xC0 == 0xC0:
                if position + 1 >= len(data):
                    raise WireError("truncated compression pointer")
                target = ((length & 0x3F) << 8) | data[position + 1]
                # Only backward pointers (RFC 1035 section 4.1.4 points to a
                # prior occurrence).  A label followed by a pointer back to
                # it still loops: the 255-octet bound and MAX_POINTERS end it.
                if target >= position:
                    raise WireError("forward compression pointer")
                pointers += 1
                if pointers > MAX_POINTERS:
                    raise WireError("too many compression pointers")
                steps.append((position, None, 0))
                position = target
                continue
            if length & 0xC0:
                raise WireError("unknown label type")
            if length == 0:
                text, tail, stop = "", 1, position + 1
                names[position] = (text, tail, stop)
                break
            raw = data[position + 1 : position + 1 + length]
            if len(raw) != length:
                raise WireError("label runs past the message")
            octets += length + 1
            # RFC 1035 section 3.1: 255 octets, the root label's one included.
            if octets + 1 > 255:
                raise WireError("name longer than 255 octets")
            steps.append((position, _label_text(raw), length + 1))
            position += length + 1
        if octets + tail > 255:
            raise WireError("name longer than 255 octets")
        # Remember the name at every offset this walk read, last first: its
        # text, its octets, and where its own bytes end (after its first
        # pointer or its root label).
        for offset, label, size in reversed(steps):
            if label is None:
                stop = offset + 2
            else:
                text = f"{label}.{text}" if text else label
                tail += size
            names[offset] = (text, tail, stop)
        self.offset = names[self.offset][2]
        return text

    def skip_name(self) -> None:
        self.name()

    def fixed(self) -> tuple[int, int, int, int]:
        """A record's type, class, TTL and data length (RFC 1035 4.1.3)."""
        if self.offset + _RR_FIXED.size > len(self.data):
            raise WireError("message ends early")
        fields: tuple[int, int, int, int] = _RR_FIXED.unpack_from(self.data, self.offset)
        self.offset += _RR_FIXED.size
        return fields

    def record(self) -> RR | None:
        """One resource record; None for classes and types SPF does not use."""
        owner = self.name()
        rtype, rclass, ttl, rdlength = self.fixed()
        end = self.offset + rdlength
        if end > len(self.data):
            raise WireError("record data runs past the message")
        # RFC 2181 section 8: a TTL with the top bit set is zero.
        ttl = 0 if ttl & 0x80000000 else ttl
        value: object = None
        if rclass == CLASS_IN and rtype in TYPE_NAMES:
            value = self._rdata(rtype, rdlength)
            if self.offset != end:
                raise WireError(f"malformed {TYPE_NAMES[rtype]} record")
        self.offset = end
        return None if value is None else RR(owner, rtype, ttl, value)

    def extended_rcode(self, count: int) -> int:
        """The upper 8 bits of the response code, from the OPT record among
        the `count` additional records (RFC 6891 section 6.1.3); 0 without."""
        upper = None
        for _ in range(count):
            self.skip_name()
            rtype, _, ttl, rdlength = self.fixed()
            if rtype == OPT:
                # RFC 6891 section 6.1.1: at most one OPT record.
                if upper is not None:
                    raise WireError("more than one OPT record")
                upper = ttl >> 24
            self.offset += rdlength
            if self.offset > len(self.data):
                raise WireError("record data runs past the message")
        return upper or 0

    def _rdata(self, rtype: int, rdlength: int) -> object:
        if rtype in (1, 28):
            family, size = (socket.AF_INET, 4) if rtype == 1 else (socket.AF_INET6, 16)
            if rdlength != size:
                raise WireError(f"malformed {TYPE_NAMES[rtype]} record")
            return socket.inet_ntop(family, self.take(size))
        if rtype in (5, 12):
            return self.name()
        if rtype == 15:
            (preference,) = struct.unpack("!H", self.take(2))
            return preference, self.name()
        if rtype in (16, 99):
            end = self.offset + rdlength
            strings = []
            while self.offset < end:
                strings.append(self.take(self.take(1)[0]))
            return tuple(strings)
        # SOA (RFC 1035 section 3.3.13): the minimum is the last field.
        self.skip_name()
        self.skip_name()
        return struct.unpack("!5I", self.take(20))[4]


def parse_reply(data: bytes, qid: int, qname: bytes, qtype: int) -> Reply | None:
    """The reply in `data` if it answers (qid, qname, qtype), else None.

    Raises WireError when a message that claims to answer is malformed.
    """
    if len(data) < _HEADER.size:
        return None
    rid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    opcode = flags >> _OPCODE_SHIFT & _OPCODE_MASK
    if rid != qid or not flags & _FLAG_QR or opcode != 0 or qdcount != 1:
        return None
    parser = _Parser(data)
    parser.offset = _HEADER.size
    # The question must be echoed, names compared without regard to case
    # (RFC 4343); an echo that differs is somebody else's reply.
    echoed = data[parser.offset : parser.offset + len(qname)]
    if echoed.lower() != qname.lower():
        return None
    parser.offset += len(qname)
    if parser.take(4) != _QUESTION_TAIL.pack(qtype, CLASS_IN):
        return None
    rcode = flags & 0x000F
    if flags & _FLAG_TC:
        # Asked again over TCP: nothing here is used, and a truncated
        # message may end mid-record (RFC 2181 section 9).
        return Reply(rcode, (), (), len(data), truncated=True)
    if nscount > MAX_SECTION_RECORDS or arcount > MAX_SECTION_RECORDS:
        raise WireError(f"more than {MAX_SECTION_RECORDS} records in a section")
    if ancount > MAX_SECTION_RECORDS:
        return Reply(rcode, (), (), len(data), oversized=True)
    answer: list[RR] = []
    of_type = 0
    for _ in range(ancount):
        rr = parser.record()
        if rr is None:
            continue
        answer.append(rr)
        if rr.rtype == qtype:
            of_type += 1
            if of_type > MAX_ANSWER_RECORDS:
                return Reply(rcode, tuple(answer), (), len(data), oversized=True)
    authority = tuple(rr for rr in (parser.record() for _ in range(nscount)) if rr is not None)
    rcode |= parser.extended_rcode(arcount) << 4
    return Reply(rcode, tuple(answer), authority, len(data))


@dataclass(frozen=True, slots=True)
class _Ask:
    """One question to one server, until a deadline (a clock() time)."""

    server: tuple[str, int]
    qname: bytes
    qtype: int
    deadline: float
    clock: Callable[[], float]

    def remaining(self) -> float:
        left = self.deadline - self.clock()
        if left <= 0:
            raise Unreachable("timeout")
        return left


def exchange(
    server: tuple[str, int],
    qname: bytes,
    qtype: int,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> Reply:
    """Ask `server` one question: UDP, then TCP if truncated.

    Raises Unreachable when no acceptable reply arrives before `deadline`
    (a clock() time) and WireError for a malformed one.
    """
    ask = _Ask(server, qname, qtype, deadline, clock)
    qid = secrets.randbits(16)
    query = make_query(qid, qname, qtype)
    reply = _udp(ask, query, qid)
    if reply.rcode == FORMERR:
        # RFC 6891 section 7: a server that does not know EDNS may answer
        # FORMERR; ask once more without the OPT record.
        qid = secrets.randbits(16)
        query = make_query(qid, qname, qtype, edns=False)
        reply = _udp(ask, query, qid)
    if reply.truncated:
        reply = _tcp(ask, query, qid)
    return reply


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _udp(ask: _Ask, query: bytes, qid: int) -> Reply:
    with socket.socket(_family(ask.server[0]), socket.SOCK_DGRAM) as sock:
        try:
            # A connected socket only receives datagrams from the server; the
            # kernel picks a random source port (RFC 5452 section 9.2).
            sock.connect(ask.server)
            sock.send(query)
            malformed: WireError | None = None
            while True:
                try:
                    sock.settimeout(ask.remaining())
                    data = sock.recv(MAX_MESSAGE)
                except (TimeoutError, Unreachable):
                    if malformed is not None:
                        raise malformed from None
                    raise Unreachable("timeout") from None
                try:
                    reply = parse_reply(data, qid, ask.qname, ask.qtype)
                except WireError as error:
                    # RFC 5452 section 9.1: a datagram with a guessed ID and
                    # a forged source can come first; the server's own reply
                    # is still awaited.  Said only if none comes in time.
                    malformed = error
                    continue
                if reply is not None:
                    return reply
        except OSError as error:
            raise Unreachable(error.strerror or str(error)) from None


def _tcp(ask: _Ask, query: bytes, qid: int) -> Reply:
    try:
        with socket.create_connection(ask.server, timeout=ask.remaining()) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            (size,) = struct.unpack("!H", _read(sock, 2, ask))
            data = _read(sock, size, ask)
    except TimeoutError:
        raise Unreachable("timeout") from None
    except OSError as error:
        raise Unreachable(error.strerror or str(error)) from None
    reply = parse_reply(data, qid, ask.qname, ask.qtype)
    if reply is None:
        raise WireError("the TCP reply does not answer the query")
    return reply


def _read(sock: socket.socket, size: int, ask: _Ask) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        sock.settimeout(ask.remaining())
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise WireError("connection closed mid-message")
        chunks += chunk
    return bytes(chunks)


def system_nameservers(path: str = "/etc/resolv.conf") -> tuple[tuple[str, int], ...]:
    """The `nameserver` entries of resolv.conf(5); 127.0.0.1 when none.

    glibc's own default applies when the file has none (or is missing).
    """
    servers = []
    try:
        with open(path, encoding="ascii", errors="replace") as lines:
            for line in lines:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    address = words[1].split("%", 1)[0]
                    try:
                        socket.inet_pton(_family(address), address)
                    except OSError:
                        continue
                    servers.append((address, 53))
    except OSError:
        pass
    return tuple(servers) or (("127.0.0.1", 53),)
