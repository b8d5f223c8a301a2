"""Backend health probes, SIGTERM drain, admin token, `sipha ctl` and `sipha appserver`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import UserAgent, simple_sdp
from tests.appserver.helpers import (
    admin_url,
    base_config,
    prober,
    running_appserver,
    sip_port,
    toml,
    wait_until,
)
from tests.sipp import free_port


class Backend:
    """A real HTTP backend the appserver's [[health]] probe watches."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def health(_: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/health", health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def test_backend_down_means_maintenance_and_calls_in_progress_continue(
    tmp_path: Path,
) -> None:
    backend = Backend()
    await backend.start()
    interval, fall, rise = 0.2, 3, 2
    health = [{"name": "crm", "probe": f"http://127.0.0.1:{backend.port}/health", "interval": interval,
               "timeout": 0.2, "fall": fall, "rise": rise}]  # fmt: skip
    async with (
        running_appserver(
            tmp_path,
            health=health,
            app={"handler": "tests.apps:hold_for", "settings": {"seconds": 2.0}},
        ) as server,
        prober(server) as probe,
        SipStack(["udp:127.0.0.1:0"]) as caller_stack,
    ):
        port = sip_port(server)
        await wait_until(
            lambda: "crm" in server.health.states and server.health.states["crm"].successes > 0
        )
        assert await probe.code() == 200
        call = await UserAgent(caller_stack).invite(
            f"sip:ivr@127.0.0.1:{port}",
            target=Target("udp", "127.0.0.1", port),
            body=simple_sdp("127.0.0.1", 40000),
        )
        started = time.monotonic()
        await backend.stop()
        down_after = await probe.wait_for_code(503, timeout=5.0)
        assert down_after <= fall * interval + 0.5  # detection within fall x interval (+ margin)
        sources = server.status()["maintenance"]["sources"]
        assert sources[0]["name"] == "health:crm" and "crm" in sources[0]["reason"]
        # the call in progress is untouched: it ends naturally, by the app, ~2 s after answer
        assert not call.ended.is_set()
        await asyncio.wait_for(call.ended.wait(), 5)
        assert call.end_reason == "remote BYE"
        assert time.monotonic() - started >= 1.8
        await backend.start()
        up_after = await probe.wait_for_code(200, timeout=5.0)
        assert up_after <= rise * interval + 0.5
        text = server.metrics.render().decode()
        assert 'sipha_health_transitions_total{probe="crm",state="down"} 1.0' in text
        assert 'sipha_health_transitions_total{probe="crm",state="up"} 1.0' in text
        assert server.counters == {"answered": 1}
    await backend.stop()


async def test_a_report_probe_marks_the_server_degraded_and_calls_go_on(tmp_path: Path) -> None:
    # a backend every server shares is down: draining would refuse the whole site's calls
    closed = free_port()
    health = [{"name": "crm", "probe": f"tcp://127.0.0.1:{closed}", "interval": 0.1,
               "timeout": 0.2, "fall": 1, "rise": 1, "action": "report"}]  # fmt: skip
    async with (
        running_appserver(tmp_path, health=health,
                          app={"handler": "tests.apps:hold_for", "settings": {"seconds": 0.2}})
        as server,
        prober(server) as probe,
        SipStack(["udp:127.0.0.1:0"]) as caller_stack,
    ):  # fmt: skip
        await wait_until(lambda: bool(server.degraded), timeout=3.0)
        assert await probe.code() == 200  # OPTIONS stay 200: the SBC keeps sending calls
        port = sip_port(server)
        call = await UserAgent(caller_stack).invite(
            f"sip:ivr@127.0.0.1:{port}", target=Target("udp", "127.0.0.1", port),
            body=simple_sdp("127.0.0.1", 40000),
        )  # fmt: skip
        await asyncio.wait_for(call.ended.wait(), 5)
        assert server.counters == {"answered": 1}
        assert "sipha_degraded 1.0" in server.metrics.render().decode()
        rc, out, _ = await run_cli("ctl", "--admin", admin_url(server), "status")
        assert rc == 0 and "degraded" in out and "backend crm down" in out, out
        assert "DOWN (report)" in out and "OPTIONS answer" in out and "200" in out
        status = server.status()
        assert status["maintenance"]["active"] is False
        assert status["degraded"]["active"] is True
        # the backend returns: no longer degraded
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", closed)
        await wait_until(lambda: not server.degraded, timeout=3.0)
        assert "sipha_degraded 0.0" in server.metrics.render().decode()
        listener.close()


async def test_tcp_probe(tmp_path: Path) -> None:
    closed = free_port()
    health = [
        {
            "name": "db",
            "probe": f"tcp://127.0.0.1:{closed}",
            "interval": 0.1,
            "timeout": 0.2,
            "fall": 1,
            "rise": 1,
        }
    ]
    async with running_appserver(tmp_path, health=health) as server, prober(server) as probe:
        await probe.wait_for_code(503, timeout=3.0)
        assert "refused" in server.health.states["db"].last_reason
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", closed)
        await probe.wait_for_code(200, timeout=3.0)
        listener.close()


async def test_admin_token_required_when_configured(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("s3cret-token-0123456789\n")
    async with (
        running_appserver(tmp_path, admin={"token_file": "admin.token"}) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(admin_url(server) + "/status") as r:
            assert r.status == 401
        async with http.post(
            admin_url(server) + "/drain", headers={"Authorization": "Bearer wrong"}
        ) as r:
            assert r.status == 401
        assert not server.availability.in_maintenance
        ok = {"Authorization": "Bearer s3cret-token-0123456789"}
        async with http.get(admin_url(server) + "/status", headers=ok) as r:
            assert r.status == 200


async def run_cli(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sipha.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_ctl_status_drain_undrain(tmp_path: Path) -> None:
    async with running_appserver(tmp_path) as server:
        url = admin_url(server)
        rc, out, _ = await run_cli(
            "ctl", "--admin", url, "drain", "--code", "480", "--reason", "maintenance window"
        )
        assert rc == 0 and "480" in out and "maintenance window" in out
        assert server.options_code() == 480
        rc, out, _ = await run_cli("ctl", "--admin", url, "status", "--json")
        assert rc == 0 and '"options_code": 480' in out
        rc, out, _ = await run_cli("ctl", "--admin", url, "undrain")
        assert rc == 0 and server.options_code() == 200
    rc, _, err = await run_cli("ctl", "--admin", f"http://127.0.0.1:{free_port()}", "status")
    assert rc == 1 and "cannot reach" in err and "Traceback" not in err
    rc, _, err = await run_cli("ctl", "drain", "--code", "700")
    assert rc == 2 and len(err.strip().splitlines()) == 1


async def test_appserver_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[invite]\nmaint_response = 99\n")
    rc, _, err = await run_cli("appserver", "-c", str(path))
    assert rc == 2
    assert err.strip().count("\n") == 0 and "invite.maint_response" in err and str(path) in err


async def test_sigterm_drains_waits_for_calls_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config(port, app={"handler": "tests.apps:hold_for", "settings": {"seconds": 1.5}},
                      server={"shutdown_grace": 10})  # fmt: skip
    path = tmp_path / "appserver.toml"
    path.write_text(toml(cfg))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipha.cli", "appserver", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    async with SipStack(["udp:127.0.0.1:0"]) as stack:
        from tests.appserver.helpers import Prober

        probe = Prober(stack, port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if await asyncio.wait_for(probe.code(), 1) == 200:
                    break
            except (TimeoutError, OSError):
                pass
            assert time.monotonic() < deadline, "appserver did not come up"
            await asyncio.sleep(0.1)
        call = await UserAgent(stack).invite(
            f"sip:ivr@127.0.0.1:{port}",
            target=Target("udp", "127.0.0.1", port),
            body=simple_sdp("127.0.0.1", 40000),
        )
        proc.send_signal(signal.SIGTERM)
        assert await probe.wait_for_code(503, timeout=2.0) < 1.0  # no new calls
        await asyncio.wait_for(call.ended.wait(), 5)  # the call ran to its natural end
        assert call.end_reason == "remote BYE"
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()[-1000:]
    assert "shutting down: 1 call(s) in progress" in err.decode()


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "192.0.2.1:8080"])
def test_admin_beyond_loopback_needs_a_token(tmp_path: Path, listen: str) -> None:
    from sipha.appserver.config import AppServerConfig
    from sipha.config import ConfigError, load_config

    path = tmp_path / "a.toml"
    path.write_text(f'[admin]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match="token_file is required"):
        load_config(path, AppServerConfig)
