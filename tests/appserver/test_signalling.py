"""Availability signalling and INVITE admission against SIPp, over loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import CallFailed, UserAgent, simple_sdp
from tests.appserver.helpers import (
    admin_url,
    base_config,
    invite_expect_reject,
    options_expect,
    prober,
    running_appserver,
    scenario,
    sip_port,
    toml,
    wait_until,
)
from tests.sipp import free_port, needs_sipp, run_sipp

pytestmark = [needs_sipp]


async def sipp_expect(tmp_path: Path, port: int, xml: str, calls: int = 1, *extra: str) -> None:
    result = await run_sipp(
        "-sf", scenario(tmp_path, "s.xml", xml), f"127.0.0.1:{port}", "-m", str(calls),
        "-i", "127.0.0.1", "-p", str(free_port()), *extra, timeout=15,
    )  # fmt: skip
    assert result.ok, result.output[-2500:]


async def test_options_200_then_drain_503_then_undrain_200(tmp_path: Path) -> None:
    async with running_appserver(tmp_path) as server, prober(server) as probe:
        port = sip_port(server)
        await sipp_expect(tmp_path, port, options_expect(200))
        async with aiohttp.ClientSession() as http:
            async with http.post(admin_url(server) + "/drain", json={"code": 503}) as r:
                assert r.status == 200
            elapsed = await probe.wait_for_code(503, timeout=1.0)
            assert elapsed < 0.5  # "well under a second": the very next OPTIONS
            await sipp_expect(tmp_path, port, options_expect(503))
            async with http.post(admin_url(server) + "/undrain", json={}) as r:
                assert r.status == 200
        assert await probe.code() == 200
        await sipp_expect(tmp_path, port, options_expect(200))


async def test_drain_survives_a_restart(tmp_path: Path) -> None:
    async with running_appserver(tmp_path) as server:
        server.drain(480, "planned upgrade")
    async with running_appserver(tmp_path) as again, prober(again) as probe:
        assert await probe.code() == 480
        assert again.status()["maintenance"]["sources"][0]["reason"] == "planned upgrade"


async def test_editing_maint_response_applies_within_one_second(tmp_path: Path) -> None:
    async with running_appserver(tmp_path) as server, prober(server) as probe:
        assert await probe.code() == 200
        path = server.config_path
        cfg = base_config(sip_port(server), options={"maint_response": 502})
        cfg["admin"] = {"listen": server.config.admin.listen}
        cfg["media"] = server.config.media.model_dump()
        path.write_text(toml(cfg))
        elapsed = await probe.wait_for_code(502, timeout=3.0)
        assert elapsed < 1.0
        assert server.holder.version == 2
        await sipp_expect(tmp_path, sip_port(server), options_expect(502))


async def test_invalid_new_config_is_refused_and_old_keeps_serving(tmp_path: Path) -> None:
    async with (
        running_appserver(tmp_path, options={"maint_response": 480}) as server,
        prober(server) as probe,
    ):
        assert await probe.code() == 480
        for bad, expected in [
            ("[options]\nmaint_response = 700\n", "options.maint_response"),
            ('[channels]\nmax = "many"\n', "channels.max"),
            ("[options]\nunknown_key = 1\n", "options.unknown_key: unknown key"),
        ]:
            server.config_path.write_text(bad)
            await wait_until(lambda e=expected: (server.holder.last_error or "").find(e) >= 0, 3.0)
            assert await probe.code() == 480  # the last good config still serves
            assert server.status()["config"]["last_reload_error"] is not None
        assert server.holder.version == 1


async def test_busy_threshold_flips_200_to_486_then_busy_response(tmp_path: Path) -> None:
    async with (
        running_appserver(tmp_path, channels={"max": 3}, options={"busy_threshold": 2}) as server,
        prober(server) as probe,
        SipStack(["udp:127.0.0.1:0"]) as caller_stack,
    ):
        ua = UserAgent(caller_stack)
        port = sip_port(server)
        target = Target("udp", "127.0.0.1", port)
        assert await probe.code() == 200  # 3 free
        c1 = await ua.invite(
            f"sip:ivr@127.0.0.1:{port}", target=target, body=simple_sdp("127.0.0.1", 40000)
        )
        assert await probe.code() == 200  # 2 free: not < 2
        c2 = await ua.invite(
            f"sip:ivr@127.0.0.1:{port}", target=target, body=simple_sdp("127.0.0.1", 40002)
        )
        assert await probe.code() == 486  # 1 free < 2
        await sipp_expect(tmp_path, port, options_expect(486))
        server.config_path.write_text(
            server.config_path.read_text().replace(
                "busy_threshold = 2", "busy_threshold = 2\nbusy_response = 480"
            )
        )
        await probe.wait_for_code(480, timeout=2.0)
        await c1.bye()
        await c2.bye()
        await probe.wait_for_code(200, timeout=2.0)


async def test_invite_while_drained_gets_100_then_503_and_nothing_else(tmp_path: Path) -> None:
    async with running_appserver(tmp_path) as server:
        server.drain(None)
        await sipp_expect(tmp_path, sip_port(server), invite_expect_reject(503), 5)
        assert server.counters == {"rejected_maintenance": 5}


async def test_invite_beyond_channels_gets_server_busy_response_without_18x(tmp_path: Path) -> None:
    async with (
        running_appserver(
            tmp_path, channels={"max": 1}, invite={"server_busy_response": 486}
        ) as server,
        SipStack(["udp:127.0.0.1:0"]) as caller_stack,
    ):
        port = sip_port(server)
        call = await UserAgent(caller_stack).invite(
            f"sip:ivr@127.0.0.1:{port}",
            target=Target("udp", "127.0.0.1", port),
            body=simple_sdp("127.0.0.1", 40000),
        )
        await sipp_expect(tmp_path, port, invite_expect_reject(486), 3)
        await call.bye()
        assert server.counters["rejected_busy"] == 3


async def test_app_reject_before_any_18x(tmp_path: Path) -> None:
    async with running_appserver(
        tmp_path, app={"handler": "sipha.apps.reject:main", "settings": {"code": 480}}
    ) as server:
        await sipp_expect(tmp_path, sip_port(server), invite_expect_reject(480), 3)
        assert server.counters == {"rejected_app": 3}
        assert server.channels_used == 0


async def test_no_route_gets_404(tmp_path: Path) -> None:
    async with running_appserver(
        tmp_path,
        app={
            "handler": "tests.apps:hold",
            "route": [{"number": "^1\\d{3}$", "handler": "tests.apps:hold"}],
        },
    ) as server:
        await sipp_expect(tmp_path, sip_port(server), invite_expect_reject(404), 1, "-s", "ivr")
        assert server.counters == {"rejected_no_route": 1}


async def test_progress_not_controlled_by_app_sends_183_right_after_100(tmp_path: Path) -> None:
    async with running_appserver(
        tmp_path,
        app={"handler": "tests.apps:slow_reject", "settings": {"code": 486}},
        invite={"session_progress_controlled_by_app": False},
    ) as server:
        await sipp_expect(
            tmp_path, sip_port(server), invite_expect_reject(486, provisional="183"), 2
        )


@pytest.mark.parametrize(
    ("app", "expected"), [("crash_before_answer", 500), ("crash_after_answer", 200)]
)
async def test_application_errors_never_leak_a_channel(
    tmp_path: Path, app: str, expected: int
) -> None:
    async with (
        running_appserver(tmp_path, app={"handler": f"tests.apps:{app}"}) as server,
        SipStack(["udp:127.0.0.1:0"]) as caller_stack,
    ):
        ua = UserAgent(caller_stack)
        port = sip_port(server)
        target = Target("udp", "127.0.0.1", port)
        if expected == 500:
            with pytest.raises(CallFailed) as err:
                await ua.invite(
                    f"sip:ivr@127.0.0.1:{port}", target=target, body=simple_sdp("127.0.0.1", 40000)
                )
            assert err.value.status == 500
        else:
            call = await ua.invite(
                f"sip:ivr@127.0.0.1:{port}", target=target, body=simple_sdp("127.0.0.1", 40000)
            )
            await asyncio.wait_for(call.ended.wait(), 5)  # the platform sent BYE
            assert call.end_reason == "remote BYE"
        await wait_until(lambda: server.channels_used == 0)
        assert server.counters == {"app_error": 1}


async def test_admin_status_and_metrics(tmp_path: Path) -> None:
    async with running_appserver(tmp_path) as server, aiohttp.ClientSession() as http:
        async with http.get(admin_url(server) + "/status") as r:
            status = await r.json()
        assert status["options_code"] == 200 and status["channels"]["free"] == 10
        async with http.post(admin_url(server) + "/drain", json={"code": 99}) as r:
            assert r.status == 400
        server.drain(503)
        async with http.get(admin_url(server) + "/metrics") as r:
            text = await r.text()
        assert "sipha_maintenance 1.0" in text
        assert 'sipha_maintenance_source{source="drain"} 1.0' in text


async def test_sighup_reloads_the_config(tmp_path: Path) -> None:
    import os
    import signal

    async with running_appserver(tmp_path) as server, prober(server) as probe:
        assert await probe.code() == 200
        # stop the file watcher so that only SIGHUP can bring the edit in
        for task in list(server._tasks):
            if task.get_coro().__qualname__ == "ConfigHolder.watch":  # type: ignore[union-attr]
                task.cancel()
        await asyncio.sleep(0.1)
        text = server.holder.path.read_text().replace(
            "[channels]", "[options]\nmaint_response = 480\n[channels]"
        )
        server.holder.path.write_text(text)
        await asyncio.sleep(0.5)
        assert await probe.code() == 200  # not applied yet
        os.kill(os.getpid(), signal.SIGHUP)
        assert await probe.wait_for_code(480, timeout=2.0) < 0.5
