#!/usr/bin/env python3
"""Readiness probes for scripts/services, using only the Python standard library.

  probe.py kafka HOST PORT      Kafka Metadata request (v4): ready when the broker lists itself.
  probe.py cql HOST PORT        CQL native protocol v4: OPTIONS -> SUPPORTED, STARTUP -> READY,
                                then QUERY "SELECT release_version, cluster_name FROM system.local".

Prints one line describing the service on success (exit 0); prints the reason on stderr and
exits 1 when the service does not answer (yet).
"""
import socket
import struct
import sys

TIMEOUT = 5.0


class NotReady(Exception):
    pass


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise NotReady("connection closed by peer")
        buf += chunk
    return buf


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise NotReady("short response")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def string16(self):  # Kafka STRING/NULLABLE_STRING, CQL [string]
        n = self.i16()
        return None if n < 0 else self.take(n).decode("utf-8", "replace")

    def bytes32(self):  # CQL [bytes]
        n = self.i32()
        return None if n < 0 else self.take(n)


def s16(text):
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


# --------------------------------------------------------------------------- Kafka

def kafka(host, port):
    correlation = 7
    header = struct.pack(">hhi", 3, 4, correlation) + s16("kairos-services-probe")  # Metadata v4
    body = struct.pack(">i", 0) + struct.pack(">b", 0)  # no topics, no auto-creation
    request = header + body
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", recv_exact(sock, 4))[0]
        r = Reader(recv_exact(sock, size))
    if r.i32() != correlation:
        raise NotReady("unexpected correlation id")
    r.i32()  # throttle_time_ms
    brokers = []
    for _ in range(r.i32()):
        node_id, host_, port_ = r.i32(), r.string16(), r.i32()
        r.string16()  # rack
        brokers.append("%d@%s:%d" % (node_id, host_, port_))
    cluster_id = r.string16()
    controller = r.i32()
    if not brokers:
        raise NotReady("broker has not registered yet (no brokers in metadata)")
    return "kafka cluster_id=%s brokers=%s controller=%d" % (cluster_id, ",".join(brokers), controller)


# --------------------------------------------------------------------------- CQL

CQL_VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_OPTIONS, OP_SUPPORTED, OP_QUERY, OP_RESULT = 0x05, 0x06, 0x07, 0x08


def cql_call(sock, stream, opcode, body=b""):
    sock.sendall(struct.pack(">BBhBi", CQL_VERSION, 0, stream, opcode, len(body)) + body)
    version, _flags, _stream, op, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    if version & 0x7F != CQL_VERSION or not version & 0x80:
        raise NotReady("not a CQL v4 response (version byte 0x%02x)" % version)
    r = Reader(recv_exact(sock, length))
    if op == OP_ERROR:
        code = r.i32()
        raise NotReady("CQL error 0x%04x: %s" % (code, r.string16()))
    return op, r


def cql(host, port):
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        op, _ = cql_call(sock, 1, OP_OPTIONS)
        if op != OP_SUPPORTED:
            raise NotReady("OPTIONS answered with opcode 0x%02x, not SUPPORTED" % op)
        op, _ = cql_call(sock, 2, OP_STARTUP, struct.pack(">h", 1) + s16("CQL_VERSION") + s16("3.0.0"))
        if op == OP_AUTHENTICATE:
            return "cql SUPPORTED (authentication required; query skipped)"
        if op != OP_READY:
            raise NotReady("STARTUP answered with opcode 0x%02x, not READY" % op)
        query = b"SELECT release_version, cluster_name FROM system.local"
        body = struct.pack(">i", len(query)) + query + struct.pack(">hb", 0x0001, 0)  # ONE, no flags
        op, r = cql_call(sock, 3, OP_QUERY, body)
    if op != OP_RESULT or r.i32() != 2:  # kind 2 = Rows
        raise NotReady("query did not return rows")
    flags, ncols = r.i32(), r.i32()
    if flags & 0x0002:
        r.bytes32()  # paging state
    if not flags & 0x0004:  # metadata present
        if flags & 0x0001:
            r.string16(), r.string16()  # global keyspace, table
        for _ in range(ncols):
            if not flags & 0x0001:
                r.string16(), r.string16()
            r.string16()  # column name
            if r.i16() == 0x0000:  # custom type carries a class name
                r.string16()
    if r.i32() < 1:
        raise NotReady("system.local is empty")
    values = [(v or b"").decode("utf-8", "replace") for v in (r.bytes32() for _ in range(ncols))]
    return "cassandra release_version=%s cluster_name=%s" % (values[0], values[1])


def main(argv):
    if len(argv) != 4 or argv[1] not in ("kafka", "cql"):
        sys.stderr.write(__doc__)
        return 2
    probe = kafka if argv[1] == "kafka" else cql
    try:
        print(probe(argv[2], int(argv[3])))
        return 0
    except (OSError, NotReady, struct.error) as exc:
        sys.stderr.write("%s %s:%s not ready: %s\n" % (argv[1], argv[2], argv[3], exc))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
