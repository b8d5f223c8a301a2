"""Digest authentication: RFC vectors, client/server round trips, stale and replay."""

from __future__ import annotations

import pytest

from sipha.sip import Headers, Request, Response
from sipha.sip.auth import (
    AuthOutcome,
    DigestClient,
    DigestServer,
    _response,
    ha1,
    parse_challenge,
)


def test_rfc7616_example_sha256_and_md5() -> None:
    # RFC 7616 §3.9.1 worked example (HTTP, same digest arithmetic as SIP)
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    for alg, expected in [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ]:
        h1 = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life")
        got = _response(alg, h1, nonce, "GET", "/dir/index.html", "auth", "00000001", cnonce)
        assert got == expected


def test_parse_challenge_with_quoted_commas() -> None:
    scheme, p = parse_challenge('Digest realm="a, b", nonce="n", qop="auth,auth-int", stale=true')
    assert scheme == "Digest"
    assert p == {"realm": "a, b", "nonce": "n", "qop": "auth,auth-int", "stale": "true"}


def register() -> Request:
    h = Headers.of(
        ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx"),
        ("From", "<sip:alice@example.test>;tag=1"),
        ("To", "<sip:alice@example.test>"),
        ("Call-ID", "c1"),
        ("CSeq", "1 REGISTER"),
    )
    return Request("REGISTER", "sip:example.test", h)


USERS = {"alice": "secret"}


def lookup(user: str, realm: str, alg: str) -> str | None:
    pw = USERS.get(user)
    return None if pw is None else ha1(alg, user, realm, pw)


def challenge(server: DigestServer, now: float, stale: bool = False) -> Response:
    resp = Response(401)
    for v in server.challenge(now, stale=stale):
        resp.headers.add("WWW-Authenticate", v)
    return resp


@pytest.mark.parametrize("algorithms", [("SHA-256", "MD5"), ("MD5",), ("SHA-256",)])
def test_round_trip(algorithms: tuple[str, ...]) -> None:
    server = DigestServer("example.test", algorithms=algorithms)
    req = register()
    assert server.verify(req, 0.0, lookup).outcome is AuthOutcome.MISSING
    assert DigestClient("alice", "secret").authorize(req, challenge(server, 0.0))
    assert f"algorithm={algorithms[0]}" in (req.headers.get("Authorization") or "")
    result = server.verify(req, 1.0, lookup)
    assert result.ok and result.username == "alice"


def test_wrong_password_and_unknown_user_fail() -> None:
    server = DigestServer("example.test")
    for user, pw in [("alice", "wrong"), ("mallory", "secret")]:
        req = register()
        DigestClient(user, pw).authorize(req, challenge(server, 0.0))
        assert server.verify(req, 1.0, lookup).outcome is AuthOutcome.FAILED


def test_expired_nonce_is_stale_with_right_password_only() -> None:
    server = DigestServer("example.test", nonce_ttl=30.0)
    req = register()
    DigestClient("alice", "secret").authorize(req, challenge(server, 0.0))
    assert server.verify(req, 31.0, lookup).outcome is AuthOutcome.STALE
    assert "stale=true" in server.challenge(31.0, stale=True)[0]
    bad = register()
    DigestClient("alice", "nope").authorize(bad, challenge(server, 0.0))
    assert server.verify(bad, 31.0, lookup).outcome is AuthOutcome.FAILED


def test_replayed_nonce_count_is_refused_and_next_count_accepted() -> None:
    server = DigestServer("example.test")
    client = DigestClient("alice", "secret")
    chal = challenge(server, 0.0)
    req = register()
    client.authorize(req, chal)
    assert server.verify(req, 1.0, lookup).ok
    replay = server.verify(req, 2.0, lookup)
    assert replay.outcome is AuthOutcome.FAILED and "replayed" in replay.reason
    again = register()
    client.authorize(again, chal)  # same nonce, nc=00000002
    assert "nc=00000002" in (again.headers.get("Authorization") or "")
    assert server.verify(again, 3.0, lookup).ok


def test_forged_nonce_and_wrong_uri_fail() -> None:
    server = DigestServer("example.test")
    other = DigestServer("example.test")  # different secret
    req = register()
    DigestClient("alice", "secret").authorize(req, challenge(other, 0.0))
    assert server.verify(req, 1.0, lookup).reason == "nonce not issued here"
    req2 = register()
    DigestClient("alice", "secret").authorize(req2, challenge(server, 0.0))
    req2.uri = Request("REGISTER", "sip:other.test").uri
    assert server.verify(req2, 1.0, lookup).reason == "digest uri differs from Request-URI"


def test_proxy_authenticate_407() -> None:
    server = DigestServer("example.test")
    resp = Response(407)
    for v in server.challenge(0.0):
        resp.headers.add("Proxy-Authenticate", v)
    req = register()
    assert DigestClient("alice", "secret").authorize(req, resp)
    assert "Proxy-Authorization" in req.headers and "Authorization" not in req.headers
    assert server.verify(req, 1.0, lookup, proxy=True).ok


def _answer(server: DigestServer, *, qop: str | None, algorithm: str = "MD5") -> Request:
    """Credentials written by hand, as an old or hostile client would."""
    nonce = server.make_nonce(0.0)
    h1 = ha1(algorithm.removesuffix("-sess"), "alice", "example.test", "secret")
    req = register()
    resp = _response(algorithm, h1, nonce, "REGISTER", req.uri_text, qop, "00000001", "cn")
    value = (f'Digest username="alice", realm="example.test", nonce="{nonce}", '
             f'uri="{req.uri_text}", response="{resp}", algorithm={algorithm}')  # fmt: skip
    if qop:
        value += f', qop={qop}, nc=00000001, cnonce="cn"'
    req.headers.add("Authorization", value)
    return req


def test_an_answer_without_qop_is_refused_when_qop_was_offered() -> None:
    # RFC 7616 §3.4: the RFC 2069 form has no nonce count, so it could be replayed
    server = DigestServer("example.test")
    assert 'qop="auth"' in server.challenge(0.0)[0]
    result = server.verify(_answer(server, qop=None), 1.0, lookup)
    assert result.outcome is AuthOutcome.FAILED and "qop" in result.reason
    assert server.verify(_answer(server, qop="auth"), 1.0, lookup).ok  # the control


def test_sess_algorithms_are_never_accepted_because_never_offered() -> None:
    server = DigestServer("example.test")
    result = server.verify(_answer(server, qop="auth", algorithm="MD5-sess"), 1.0, lookup)
    assert result.outcome is AuthOutcome.FAILED and "not offered" in result.reason


def test_without_qop_by_configuration_each_nonce_is_accepted_once() -> None:
    server = DigestServer("example.test", qop=False)
    assert "qop" not in server.challenge(0.0)[0]
    req = _answer(server, qop=None)
    assert server.verify(req, 1.0, lookup).ok
    replay = server.verify(req, 2.0, lookup)  # the same header again: a fresh nonce, not 200
    assert replay.outcome is AuthOutcome.STALE and replay.reason == "nonce already used"
    offered_qop = server.verify(_answer(server, qop="auth"), 1.0, lookup)
    assert offered_qop.outcome is AuthOutcome.FAILED  # qop answers a challenge we never made
