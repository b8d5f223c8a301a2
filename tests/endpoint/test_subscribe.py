"""SUBSCRIBE/NOTIFY (RFC 6665) and the SDK's refresh rule, against real peers: two sipha
edge nodes behind one DNS name (127.0.0.2, 127.0.0.3) with a pool whose server is a SIPp
notifier. A node is frozen (SIGSTOP) before a refresh: with ``reg_interval = N`` the
refresh is sent again N s later through the other node; with ``reg_interval = 0`` it is
not sent again and the subscription ends with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipha.endpoint import NotifyEvent, Phone, Subscription, SubscriptionEvent
from sipha.endpoint.subscription import Attempt
from sipha.sip.transaction import Target
from sipha.sip.uri import format_hostport
from tests.appserver.helpers import toml
from tests.dnsserver import DnsServer
from tests.edge.scenarios import reply
from tests.sipp import free_port, needs_sipp, sipp_background

from .helpers import (
    PASSWORD,
    REALM,
    Node,
    Recorder,
    conn,
    edge_node,
    free_port_on,
    phone_config,
    running_phone,
    users_file,
)
from .test_phone_cli import sipha

pytestmark = needs_sipp

A, B = "127.0.0.2", "127.0.0.3"
TIMEOUT_MS = 1000
SHORT = 3  # s the notifier grants: refreshed at 2.4 s, gone before a failed one is retried
LONG = 15  # refreshed at 12 s; a failed refresh (1 s) retried 1 s later is still in time

BUSY_FOR = 2  # s, the Retry-After of a busy notifier


def notify(cseq: int, state: str, event: str = "presence") -> str:
    """A NOTIFY in the subscription's dialog (SIPp keeps the SUBSCRIBE's Record-Route)."""
    return f"""
  <send><![CDATA[
      NOTIFY [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: <sip:presence@{REALM}>;tag=[pid]SIPpTag01[call_number]
      To: [$subscriber]
      [last_Call-ID:]
      CSeq: {cseq} NOTIFY
      Contact: <sip:notifier@[local_ip]:[local_port]>
      Max-Forwards: 70
      Event: {event}
      Subscription-State: {state}
      Content-Type: text/plain
      Content-Length: [len]

      open
  ]]></send>
"""


def notifier(
    expires: int,
    state: str | None = None,
    wrong_event: bool = False,
    early: bool = False,
    busy_first: bool = False,
) -> str:
    """A presence notifier: SUBSCRIBE -> 200 (Expires) -> NOTIFY (``state``, by default
    active) -> each refresh 200 (Expires); the edge's OPTIONS probes are answered in a
    branch of their own. ``wrong_event``: then a NOTIFY for another event package, which
    must be refused with 489 (RFC 6665 §4.1.3). ``early``: NOTIFYs (another package, then
    presence) before the 200 to the SUBSCRIBE (RFC 6665 §4.1.2.4). ``busy_first``: the
    first SUBSCRIBE is answered 503 with Retry-After."""
    state = state or f"active;expires={expires}"
    grant = f"Expires: {expires}\n      "
    first = reply("200 OK", extra=grant, rrs=True)
    flow = f"""{first}{notify(1, state)}
  <recv response="200"/>"""
    if early:
        # both NOTIFYs go out before the 200 to the SUBSCRIBE, which is sent only once
        # they were answered; SIPp's [last_*] would then be those answers, so the 200 is
        # built from the SUBSCRIBE's headers kept in variables. Each NOTIFY waits for its
        # answer: an answer that comes back while SIPp still sends the next is "unexpected"
        flow = f"""{notify(1, state, event="dialog")}
  <recv response="489"/>{notify(2, state)}
  <recv response="200"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      Via: [$via1]
      Via: [$via2]
      From: [$from]
      To: [$to];tag=[pid]SIPpTag01[call_number]
      Call-ID: [$callid]
      CSeq: [$cseq]
      Record-Route: [$rr]
      {grant}Contact: <sip:notifier@[local_ip]:[local_port]>
      Content-Length: 0

  ]]></send>"""
    if wrong_event:
        flow += f"""{notify(2, state, event="dialog")}
  <recv response="489"/>"""
    keep = ""  # SIPp refuses a scenario with a variable it never uses: only when early
    if early:
        keep = "".join(
            f'\n      <ereg regexp="[^ ].*" search_in="hdr" header="{h}:"{occ} assign_to="{v}"/>'
            for h, occ, v in (("Via", ' occurrence="1"', "via1"), ("Via", ' occurrence="2"', "via2"),
                              ("From", "", "from"), ("To", "", "to"), ("Call-ID", "", "callid"),
                              ("CSeq", "", "cseq"), ("Record-Route", "", "rr"))
        )  # fmt: skip
    # unrolled, not a loop: SIPp matches a request against the next <recv> in sequence,
    # so a SUBSCRIBE arriving before a <nop next=...> jump ran would be "unexpected"
    refreshes = "".join(
        f'<recv request="SUBSCRIBE"/>{reply("200 OK", extra=grant)}' for _ in range(12)
    )
    busy = ""
    if busy_first:  # the first SUBSCRIBE of the call: 503 with Retry-After
        refuse = reply("503 Service Unavailable", extra=f"Retry-After: {BUSY_FOR}\n      ")
        busy = f'<recv request="SUBSCRIBE"/>{refuse}'
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="presence notifier">
  <recv request="OPTIONS" optional="true" next="options"/>
  {busy}
  <recv request="SUBSCRIBE" rrs="true">
    <action>
      <ereg regexp="&lt;.*" search_in="hdr" header="From:" assign_to="subscriber"/>{keep}
    </action>
  </recv>
  {flow}
  {refreshes}
  <nop next="end"/>
  <label id="options"/>
  {reply("200 OK")}
  <label id="end"/>
  <nop/>
</scenario>
"""


class Rig:
    def __init__(self, nodes: dict[str, Node], phone: Phone, rec: Recorder, expires: int) -> None:
        self.nodes, self.phone, self.rec, self.expires = nodes, phone, rec, expires

    async def freeze_next_hop(self, sub: Subscription) -> str:
        """Freeze the node the next in-dialog SUBSCRIBE will go through; its host:port."""
        targets = await self.phone.route_targets(sub.dialog, sub.conn)
        target = self.phone.pick(targets)
        assert target is not None
        self.nodes[target.host].freeze()
        return format_hostport(target.host, target.port)


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    redis_url: str,
    reg_interval: int,
    expires: int = SHORT,
    state: str | None = None,
    wrong_event: bool = False,
    early: bool = False,
    busy_first: bool = False,
) -> AsyncIterator[Rig]:
    port = free_port_on(A, B)
    notifier_port = free_port()
    scenario = tmp_path / "notifier.xml"
    scenario.write_text(notifier(expires, state, wrong_event, early, busy_first))
    pool = {
        "name": "presence",
        "match": "^sip:presence@",
        "probe_interval": 1.0,
        "destination": [{"uri": f"sip:127.0.0.1:{notifier_port}"}],
    }
    users = users_file(tmp_path, {"1001": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A, B)
        async with (
            sipp_background("-sf", str(scenario), "-i", "127.0.0.1", "-p", str(notifier_port),
                            "-trace_msg", "-message_file", str(tmp_path / "notifier.log"), "-trace_err", "-error_file", str(tmp_path / "notifier.err"),
                            timeout=120),
            edge_node(tmp_path, A, port, redis_url, users, [pool]) as na,
            edge_node(tmp_path, B, port, redis_url, users, [pool]) as nb,
            running_phone(
                phone_config(dns.address, [conn("1001", port, reg_interval=reg_interval)],
                             sip_transaction_timeout=TIMEOUT_MS)
            ) as (phone, rec),
        ):  # fmt: skip
            await phone.wait_registered(0)
            try:
                yield Rig({A: na, B: nb}, phone, rec, expires)
            finally:
                na.thaw()
                nb.thaw()


async def subscribed(r: Rig) -> Subscription:
    sub = await r.phone.subscribe("presence", "presence", expires=60)
    await sub.wait_for("active", 10)
    note = await r.rec.wait(event="notify", subscription=sub.id)
    assert isinstance(note, NotifyEvent)
    assert note.body.strip() == "open" and note.content_type == "text/plain"
    assert note.subscription_state == f"active;expires={r.expires}"
    first = sub.attempts[0]
    assert (first.in_dialog, first.expires, first.outcome) == (False, 60, "200 OK")
    # the route set is the shared name: either node can carry the refresh
    assert sub.dialog is not None and str(sub.dialog.route_set[0].uri).startswith(f"sip:{REALM}")
    return sub


async def test_subscribe_notify_and_refresh_at_80_percent(tmp_path: Path, redis_url: str) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1) as r:
        sub = await subscribed(r)
        refreshed = await _attempts(sub, 2, SHORT + 2)
        gap = refreshed[1].ts - refreshed[0].ts
        assert SHORT * 0.8 - 0.2 <= gap <= SHORT * 0.8 + 0.5, gap
        assert refreshed[1].in_dialog and refreshed[1].outcome == "200 OK"
        assert sub.state == "active"
        await sub.unsubscribe()
        assert sub.state == "terminated" and sub.reason == "by the application"
        last = sub.attempts[-1]
        assert (last.in_dialog, last.expires, last.outcome) == (True, 0, "200 OK")
        assert r.phone.subscriptions == {}
        # a subscription lives on its connection: disabling that ends it (Expires: 0 first)
        other = await r.phone.subscribe("presence", "presence", 0, expires=60)
        await r.rec.wait(event="notify", subscription=other.id)  # SIPp's script is in order
        await r.phone.disable_connection(0)
        assert (other.state, other.reason) == ("terminated", "connection 0 disabled")
        assert (other.attempts[-1].expires, other.attempts[-1].outcome) == (0, "200 OK")


async def test_failed_refresh_goes_to_the_other_proxy_after_reg_interval(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1, expires=LONG) as r:
        sub = await subscribed(r)
        # SIPp (UDP) answers every request of a call to where the call's first message
        # came from, not to the request's Via: so the refresh must fail on the *other*
        # node and succeed on the first one. A penalty on the first node sends it there.
        first = sub.attempts[0].proxy
        host, port = first.split(":")
        r.phone.blacklist.fail(Target("udp", host, int(port)), r.phone.now)
        frozen = await r.freeze_next_hop(sub)
        assert frozen != first
        lost = await r.rec.wait(timeout=LONG, event="subscription", state="unavailable")
        assert isinstance(lost, SubscriptionEvent) and lost.reason == "408 Request Timeout"
        await r.rec.wait(timeout=4, after=lost.ts, event="subscription", state="active")
        failed, retried = sub.attempts[1:3]
        assert (failed.proxy, failed.outcome) == (frozen, "408 Request Timeout")
        # still within the granted 15 s: the same subscription, refreshed in its dialog
        assert (retried.proxy, retried.in_dialog, retried.outcome) == (first, True, "200 OK")
        waited = retried.ts - failed.ts
        print(
            f"measured: SUBSCRIBE refresh re-sent via the other node {waited * 1000:.0f} ms "
            f"after it went to the frozen one ({TIMEOUT_MS} ms time-out + reg_interval 1 s)"
        )
        assert 1.9 <= waited <= 2.6, waited
        assert len(sub.notifies) == 1  # no new subscription was needed


async def test_expired_subscription_is_taken_again_on_the_other_proxy(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1) as r:
        sub = await subscribed(r)
        first_call = sub.call_id
        frozen = await r.freeze_next_hop(sub)
        lost = await r.rec.wait(timeout=SHORT + 2, event="subscription", state="unavailable")
        await r.rec.wait(timeout=4, after=lost.ts, event="subscription", state="active")
        failed, retried = sub.attempts[1:3]
        assert (failed.proxy, failed.outcome) == (frozen, "408 Request Timeout")
        # the 3 s had run out by the retry: a new subscription (new Call-ID), new NOTIFY
        assert retried.proxy != frozen and not retried.in_dialog and retried.outcome == "200 OK"
        assert sub.call_id != first_call
        await r.rec.wait(timeout=3, after=lost.ts, event="notify", subscription=sub.id)
        assert len(sub.notifies) == 2
        # and the next refresh keeps away from the frozen node (its penalty)
        nxt = await _attempts(sub, 4, SHORT + 2)
        assert nxt[3].proxy != frozen and nxt[3].outcome == "200 OK"


async def test_reg_interval_zero_does_not_resend_a_failed_refresh(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url, reg_interval=0) as r:
        sub = await subscribed(r)
        await r.freeze_next_hop(sub)
        end = await r.rec.wait(timeout=SHORT + 3, event="subscription", state="terminated")
        assert isinstance(end, SubscriptionEvent)
        assert end.reason == "408 Request Timeout; not re-sent (reg_interval = 0)"
        sent = len(sub.attempts)
        with pytest.raises(TimeoutError):
            await _attempts(sub, sent + 1, 2.5)  # longer than a refresh period
        assert [a.outcome for a in sub.attempts] == ["200 OK", "408 Request Timeout"]
        assert sub.id not in r.phone.subscriptions


async def test_notifier_ending_with_rejected_ends_the_subscription(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1, state="terminated;reason=rejected") as r:
        sub = await r.phone.subscribe("presence", "presence")
        end = await r.rec.wait(event="subscription", subscription=sub.id, state="terminated")
        assert isinstance(end, SubscriptionEvent) and end.reason == "notifier: rejected"
        note = await r.rec.wait(event="notify", subscription=sub.id)
        assert isinstance(note, NotifyEvent)
        assert note.subscription_state == "terminated;reason=rejected"
        with pytest.raises(TimeoutError):
            await _attempts(sub, 2, SHORT)  # never refreshed, never taken again
        assert sub.id not in r.phone.subscriptions


async def test_deactivated_subscribes_again_at_once_but_at_most_once_a_second(
    tmp_path: Path, redis_url: str
) -> None:
    # RFC 6665 §4.1.3: "deactivated" -> retry at once with a new subscription. This
    # notifier deactivates every subscription it grants: the phone must not storm it.
    async with rig(tmp_path, redis_url, reg_interval=1, state="terminated;reason=deactivated") as r:
        sub = await r.phone.subscribe("presence", "presence")
        sent = await _attempts(sub, 4, 5)
        assert all(not a.in_dialog and a.outcome == "200 OK" for a in sent[:4])
        assert sent[1].ts - sent[0].ts < 0.5  # the first time: at once
        for a, b in itertools.pairwise(sent[1:4]):
            assert b.ts - a.ts >= 0.95, [x.ts for x in sent]  # then once a second
        again = [e for e in r.rec.events if isinstance(e, SubscriptionEvent)
                 and e.reason == "terminated (deactivated): subscribing again"]  # fmt: skip
        assert len(again) >= 1 and sub.state in ("pending", "active")
        assert len({n.ts for n in sub.notifies}) >= 3


async def test_busy_notifier_is_asked_again_after_its_retry_after(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1, busy_first=True) as r:
        sub = await r.phone.subscribe("presence", "presence", expires=60)
        busy = await r.rec.wait(event="subscription", subscription=sub.id, state="unavailable")
        assert isinstance(busy, SubscriptionEvent) and busy.reason == "503 Service Unavailable"
        await sub.wait_for("active", 10)
        first, second = sub.attempts[:2]
        assert first.outcome == "503 Service Unavailable" and second.outcome == "200 OK"
        assert first.proxy == second.proxy  # the proxy answered: no penalty, no failover
        waited = second.ts - first.ts
        # reg_interval (1 s) alone would retry after 1 s; the Retry-After (2 s) wins
        assert BUSY_FOR - 0.1 <= waited <= BUSY_FOR + 0.6, waited


async def test_notify_for_another_event_package_gets_489(tmp_path: Path, redis_url: str) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1, wrong_event=True) as r:
        sub = await subscribed(r)
        # the notifier's NOTIFY for "dialog" in this presence subscription: refused, unseen
        sent = await _attempts(sub, 2, SHORT + 2)  # the refresh comes after it
        assert (sent[1].in_dialog, sent[1].outcome) == (True, "200 OK")
        log = (tmp_path / "notifier.log").read_text()
        assert "SIP/2.0 489 Bad Event" in log and "CSeq: 2 NOTIFY" in log
        assert [n.subscription_state for n in sub.notifies] == [f"active;expires={SHORT}"]
        assert sub.state == "active"


async def test_notify_before_the_2xx_creates_the_dialog(tmp_path: Path, redis_url: str) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1, early=True) as r:
        sub = await r.phone.subscribe("presence", "presence", expires=60)
        await sub.wait_for("active", 10)
        first = next(e for e in r.rec.events if isinstance(e, SubscriptionEvent))
        # "active" from the NOTIFY's Subscription-State: the notifier sent its 200 only
        # after our answer to that NOTIFY, so the NOTIFY made the dialog (§4.1.2.4)
        assert (first.state, first.reason) == ("active", "active")
        assert [n.subscription_state for n in sub.notifies] == [f"active;expires={SHORT}"]
        assert (await _attempts(sub, 1, 5))[0].outcome == "200 OK"
        # the edge record-routed the NOTIFY: the dialog it made goes through the edge
        assert sub.dialog is not None
        assert str(sub.dialog.route_set[0].uri).startswith(f"sip:{REALM}")
        # that dialog (its route set, its CSeq) carries the refresh
        sent = await _attempts(sub, 2, SHORT + 2)
        assert (sent[1].in_dialog, sent[1].outcome) == (True, "200 OK")
        log = (tmp_path / "notifier.log").read_text()
        assert "SIP/2.0 489 Bad Event" in log  # the NOTIFY for "dialog", before any dialog


async def test_phone_cli_subscribes_and_prints_notify(tmp_path: Path, redis_url: str) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1) as r:
        conn0 = r.phone.config.connection[0]
        cfg = tmp_path / "cli-phone.toml"
        cfg.write_text(toml({
            "policy": {"sip_transaction_timeout": TIMEOUT_MS},
            "dns": {"nameservers": r.phone.config.dns.nameservers, "hosts_file": ""},
            "connection": [conn0.model_dump(exclude_none=True)],
        }))  # fmt: skip
        proc = await sipha("phone", "-c", str(cfg), "--subscribe", "presence", "presence")
        try:
            assert proc.stdout is not None
            seen: list[dict[str, object]] = []
            async with asyncio.timeout(15):
                while not any(e["event"] == "notify" for e in seen):
                    seen.append(json.loads(await proc.stdout.readline()))
            subs = [e for e in seen if e["event"] == "subscription"]
            assert subs and subs[0]["state"] == "active" and subs[0]["package"] == "presence"
            assert subs[0]["uri"] == f"sip:presence@{REALM}"
            note = seen[-1]
            assert note["body"] == "open\r\n" and note["subscription"] == subs[0]["subscription"]
        finally:
            proc.terminate()
            out, _ = await proc.communicate()
        assert proc.returncode == 0
        last = [json.loads(line) for line in out.decode().splitlines()]
        ended = [e for e in last if e["event"] == "subscription"]
        assert ended and ended[-1]["state"] == "terminated"
        assert ended[-1]["reason"] == "by the application"


async def test_subscribe_argument_errors(tmp_path: Path, redis_url: str) -> None:
    async with rig(tmp_path, redis_url, reg_interval=1) as r:
        with pytest.raises(ValueError, match="one token"):
            await r.phone.subscribe("presence; id=1", "presence")
        with pytest.raises(ValueError, match="at least 1 s"):
            await r.phone.subscribe("presence", "presence", expires=0)
        with pytest.raises(LookupError, match="no enabled connection 7"):
            await r.phone.subscribe("presence", "presence", 7)


async def _attempts(sub: Subscription, count: int, timeout: float) -> list[Attempt]:
    """The subscription's SUBSCRIBEs once there are ``count`` of them."""
    async with asyncio.timeout(timeout):
        while len(sub.attempts) < count:
            await asyncio.sleep(0.05)
    return sub.attempts
