"""A web page cannot drive the admin API through the operator's browser (finding 10).

A cross-site form or fetch to http://127.0.0.1:<admin>/drain used to drain the server
(no token on loopback, any Host, any Content-Type). Now: POSTs must be JSON, an Origin
must be the API's own, and the Host header must name the listener (DNS rebinding).
The browser test is real: headless Chromium opens an attacker's page on another port.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.appserver.helpers import admin_url, running_appserver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


async def test_host_origin_and_content_type_are_checked(tmp_path: Path) -> None:
    async with running_appserver(tmp_path) as server, aiohttp.ClientSession() as http:
        url = admin_url(server)
        port = url.rsplit(":", 1)[1]
        async with http.post(url + "/drain", json={}, headers={"Host": "rebound.evil.test"}) as r:
            assert r.status == 421  # DNS rebinding: the browser sends the attacker's name
        async with http.post(url + "/drain", json={}, headers={"Origin": "http://evil.test"}) as r:
            assert r.status == 403
        async with http.post(url + "/drain", data="code=503",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:  # fmt: skip
            assert r.status == 415
        async with http.post(url + "/drain", data='{"code": 503}',
                             headers={"Content-Type": "text/plain"}) as r:  # fmt: skip
            assert r.status == 415
        async with http.get(url + "/status", headers={"Host": "evil.test"}) as r:
            assert r.status == 421  # reading is refused too: a rebound page could read it
        assert not server.availability.in_maintenance
        # what ctl, curl and the API's own page send is accepted
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            async with http.post(url + "/drain", json={"reason": "ok"},
                                 headers={"Host": host, "Origin": f"http://{host}"}) as r:  # fmt: skip
                assert r.status == 200
        assert server.availability.in_maintenance


async def test_a_cross_site_page_in_chromium_cannot_drain(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            raise RuntimeError("chromium missing: make test installs Debian's chromium")
        pytest.skip("chromium not installed")
    from playwright.async_api import async_playwright

    async with running_appserver(tmp_path) as server:
        target = admin_url(server)
        page_html = f"""<!doctype html><body>
<form id="f" method="POST" action="{target}/drain" enctype="text/plain">
<input name='{{"code": 503, "reason": "pwned", "x": "' value='"}}'></form>
<script>
fetch("{target}/drain", {{method: "POST", mode: "no-cors", body: '{{"code": 503}}',
                          headers: {{"Content-Type": "text/plain"}}}})
  .finally(() => {{ document.title = "fetched"; document.getElementById("f").submit(); }});
</script></body>"""
        seen: list[int] = []

        async def evil(_: web.Request) -> web.Response:
            return web.Response(text=page_html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", evil)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        evil_url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM,
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync"],
                )  # fmt: skip
                page = await browser.new_page()
                page.on("response", lambda r: seen.append(r.status) if "/drain" in r.url else None)
                async with page.expect_navigation(url=f"{target}/drain", timeout=10000):
                    await page.goto(evil_url)
                await browser.close()
        finally:
            await runner.cleanup()
        assert seen and all(code in (403, 415) for code in seen), seen  # the form's answer
        assert not server.availability.in_maintenance
        assert server.status()["maintenance"]["sources"] == []


ARTIFACTS = Path(__file__).parent.parent.parent / "artifacts"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]  # fmt: skip


async def test_the_status_page_shows_the_state_and_drains_with_the_token(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            raise RuntimeError("chromium missing: make test installs Debian's chromium")
        pytest.skip("chromium not installed")
    from playwright.async_api import async_playwright

    (tmp_path / "admin.token").write_text("page-token-0123456789\n")
    health = [{"name": "crm", "probe": "tcp://127.0.0.1:9", "interval": 0.2, "timeout": 0.2,
               "fall": 1, "rise": 1, "action": "report"}]  # fmt: skip
    async with (
        running_appserver(tmp_path, admin={"token_file": "admin.token"}, health=health) as server,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = await browser.new_page()
        await page.goto(admin_url(server) + "/")  # the page loads without the token...
        error = page.locator("#error")
        await error.filter(has_text="needs its token").wait_for(timeout=5000)  # ...its data not
        await page.fill("#token", "page-token-0123456789")
        await page.click("#token-save")
        answer = page.locator('#answer[data-code="200"]')
        await answer.wait_for(timeout=5000)
        await page.locator("td.warn", has_text="backend crm down").wait_for(timeout=5000)
        await page.fill("#reason", "upgrade at noon")
        await page.click("#drain")
        await page.locator('#answer[data-code="503"]').wait_for(timeout=5000)
        assert "upgrade at noon" in await page.locator("td.source").inner_text()
        assert server.availability.drain_reason == "upgrade at noon"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "appserver-status-page-drained.png"),
                              full_page=True)  # fmt: skip
        await page.click("#undrain")
        await answer.wait_for(timeout=5000)
        assert not server.availability.in_maintenance
        await browser.close()
