"""SIPp destination scenarios for the edge tests; each answers the edge's OPTIONS probes."""

from __future__ import annotations

from tests.sipp import ok_to_last

REPLY = """
      SIP/2.0 {code}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      {extra}Contact: <sip:dest@[local_ip]:[local_port];transport=[transport]>
      Content-Length: {length}
"""


# the offer or answer every scenario here carries (SIPp strips each line's indentation)
SDP = """v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000"""


def reply(code: str, extra: str = "", sdp: bool = False, rrs: bool = False) -> str:
    body = ""
    length = "0"
    if sdp:
        length = "[len]"
        body = "\n      " + SDP
    if rrs:
        extra += "[last_Record-Route:]\n      "
    return f"<send><![CDATA[\n{REPLY.format(code=code, extra=extra, length=length)}{body}\n\n    ]]></send>"


OPTIONS_BRANCH = """
  <label id="options"/>
  {reply}
"""


def destination(invite_flow: str, options_code: str = "200 OK") -> str:
    """A callee: OPTIONS get ``options_code``; INVITEs follow ``invite_flow``."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="edge test destination">
  <recv request="OPTIONS" optional="true" next="options"/>
  <recv request="INVITE" rrs="true"/>
{invite_flow}
{OPTIONS_BRANCH.format(reply=reply(options_code))}
  <label id="end"/>
  <nop/>
</scenario>
"""


ANSWER = f"""
  {reply("180 Ringing", rrs=True)}
  {reply("200 OK", sdp=True, rrs=True)}
  <recv request="ACK"/>
  <recv request="BYE"/>
  {reply("200 OK")}
  <nop next="end"/>
"""

REJECT_503 = f"""
  {reply("503 Service Unavailable")}
  <recv request="ACK"/>
  <nop next="end"/>
"""

RING_THEN_503 = f"""
  {reply("180 Ringing", rrs=True)}
  <pause milliseconds="100"/>
  {reply("503 Service Unavailable")}
  <recv request="ACK"/>
  <nop next="end"/>
"""

SILENT = """
  <pause milliseconds="8000"/>
  <nop next="end"/>
"""


def caller(expect: str, domain: str = "[remote_ip]:[remote_port]") -> str:
    """A caller through the edge; ``expect``: the responses it must see, in order, e.g.
    "180 503" (then it ACKs) or "200" (then ACK, BYE). Anything else fails the call.
    It calls sip:[service]@``domain`` (the edge's address unless a served domain)."""
    codes = expect.split()
    rrs = ' rrs="true"'
    recvs = "".join(f'  <recv response="{c}"{rrs if c == "200" else ""}/>\n' for c in codes)
    final = codes[-1]
    head = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@{domain}>{tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70"""
    if final == "200":
        after = f"""  <send><![CDATA[

      ACK [next_url] SIP/2.0
      [routes]
{head.format(domain=domain, tag="[peer_tag_param]", cseq="1 ACK")}
      Content-Length: 0

  ]]></send>
  <pause milliseconds="100"/>
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
      [routes]
{head.format(domain=domain, tag="[peer_tag_param]", cseq="2 BYE")}
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
"""
    else:
        after = f"""  <send ack_txn="invite"><![CDATA[

      ACK sip:[service]@{domain} SIP/2.0
{head.format(domain=domain, tag="[peer_tag_param]", cseq="1 ACK")}
      Content-Length: 0

  ]]></send>
"""
    txn = ' start_txn="invite"' if final != "200" else ""
    recvs = recvs.replace("/>", ' response_txn="invite"/>') if final != "200" else recvs
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="caller expecting {expect}">
  <send retrans="500"{txn}><![CDATA[

      INVITE sip:[service]@{domain} SIP/2.0
{head.format(domain=domain, tag="", cseq="1 INVITE")}
      Content-Type: application/sdp
      Content-Length: [len]

      {SDP}

  ]]></send>
  <recv response="100" optional="true"{' response_txn="invite"' if final != "200" else ""}/>
{recvs}{after}</scenario>
"""


# -- in a call: the edge's keep-alives (in-dialog OPTIONS) are answered until a BYE ----------
BYE = '  <recv request="BYE" next="bye"/>'
def talk(bye: str, options_delay_ms: int = 0) -> str:
    """In a call: answer the edge's keep-alive OPTIONS (after ``options_delay_ms``) until a
    BYE (checked by ``bye``) arrives; answer it."""
    pause = f'<pause milliseconds="{options_delay_ms}"/>' if options_delay_ms else ""
    return f"""
  <label id="talk"/>
  <recv request="OPTIONS" optional="true" next="ka"/>
{bye}
  <label id="ka"/>
  {pause}
  {ok_to_last("talk")}
  <label id="bye"/>
  {ok_to_last()}
"""


def callee(bye: str, options_delay_ms: int = 0) -> str:
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="callee that stays in the call">
  <recv request="OPTIONS" optional="true" next="probe"/>
  <recv request="INVITE" rrs="true"/>
  {reply("200 OK", sdp=True, rrs=True)}
  <recv request="ACK"/>
{talk(bye, options_delay_ms)}
  <nop next="end"/>
  <label id="probe"/>
  {reply("200 OK")}
  <label id="end"/>
  <nop/>
</scenario>
"""
