"""A real DNS server on loopback for the tests: dnspython answers from a dict of records.

It runs in a thread so that blocking test code (a subprocess running ``sipha phone``) and
the asyncio code under test both get answers. It serves UDP only, which is what stub
resolvers use for answers this small, and counts the queries it saw.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    """``records`` maps (name, type) to a list of rdata texts, e.g.
    ``("edge.test", "A"): ["127.0.0.2", "127.0.0.3"]``."""

    def __init__(self, host: str = "127.0.0.1", ttl: int = 60) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.ttl = ttl
        self.queries: Counter[tuple[str, str]] = Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rdtype.upper()), []).extend(values)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - a test server ignores garbage
                continue
            self.sock.sendto(self._answer(query).to_wire(), addr)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        q = query.question[0]
        name = str(q.name).lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.queries[(name, rdtype)] += 1
        values = self.records.get((name, rdtype))
        if values:
            resp.answer.append(
                dns.rrset.from_text_list(q.name, self.ttl, dns.rdataclass.IN, q.rdtype, values)
            )
        elif not any(n == name for n, _ in self.records):
            resp.set_rcode(dns.rcode.NXDOMAIN)
        return resp
