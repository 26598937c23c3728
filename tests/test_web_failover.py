"""Any web app serves any browser session (issue 14): sessions kept in PostgreSQL.

Real processes on loopback: a throwaway PostgreSQL (conftest's ``pg_server``), one core,
two web apps (``python -m app --database-url``) and HAProxy in HTTP mode in front of
both, round-robin with no affinity (bench/_haproxy.py). A web app killed with SIGKILL
or stopped logs nobody out: the other one adopts its sessions from the table on their
next request. Some rules are checked in-process, with two apps on this test's loop.
Set WEB_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from _haproxy import Frontend, HAProxy, find_haproxy
from _pg_server import PgServer
from _setup import free_port
from conftest import DEMO_USERS, ROOT, CoreProcess, missing, new_database
from waiting import until, wait_for
from web_helpers import (  # noqa: F401 - fixtures
    TcpUser,
    fixture_chromium,
    fixture_tcp,
    import_playwright,
    log_in,
    user_button,
)

from app.config import WebConfig
from app.session_store import unseal
from app.web import create_app
from legacy_socket_server.client import CoreClient

COOKIE = "chat_session"
#: A password no hex digest or random token will contain by chance.
DANA_PASSWORD = "correct horse battery staple 7f3a"


class WebApp:
    """``python -m app`` as a subprocess on a port chosen in advance (HAProxy names it)."""

    def __init__(self, name: str, core: CoreProcess, database_url: str, log_dir: Path) -> None:
        self.name = name
        self.core = core
        self.database_url = database_url
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebApp:
        args = ["--port", str(self.port), "--core", f"{self.core.host}:{self.core.port}"]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", *args, "--database-url", self.database_url],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "CHAT_LOG_LEVEL": "INFO"},
                text=True,
            )

        def running() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log_text()}")
            return "Chat is running: http://" in self.log_text()[offset:]

        wait_for(running, timeout=20, what=f"{self.name} to listen")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (its sessions' rows and tokens stay)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(20)
        return self.proc.returncode if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def adoptions(self, name: str) -> int:
        return self.log_text().count(f"browser session of {name} adopted")


@pytest.fixture
async def database(pg_server: PgServer) -> str:
    return await new_database(pg_server)


@pytest.fixture
def core(core_proc: CoreProcess) -> CoreProcess:
    """The core (files store) with Dana added, whose password is easy to search for."""
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "legacy_socket_server.users", "--data-dir", str(core_proc.data_dir)),
            *("add", "Dana"),
        ],
        input=DANA_PASSWORD + "\n",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return core_proc


@pytest.fixture
def web_apps(core: CoreProcess, database: str, tmp_path: Path) -> Iterator[list[WebApp]]:
    """Two web apps on one database; started by the test (``.start()``), stopped here."""
    apps = [WebApp(f"web{i}", core, database, tmp_path) for i in (1, 2)]
    yield apps
    for web in apps:
        web.stop()


@pytest.fixture
def balancer(web_apps: list[WebApp]) -> Iterator[HAProxy]:
    """HAProxy (HTTP, round-robin, no affinity) in front of both web apps, started or not."""
    if find_haproxy() is None:
        missing("haproxy not found (apt-get install haproxy; see .ci/run)")
    servers = {web.name: f"127.0.0.1:{web.port}" for web in web_apps}
    lb = HAProxy([Frontend("web", "http", servers)], log_requests=True)
    lb.start()
    yield lb
    lb.stop()


async def api_login(http: aiohttp.ClientSession, url: str, name: str, password: str) -> tuple:
    """Log in at ``url``; (the cookie's value, the reply)."""
    async with http.post(f"{url}/api/login", json={"username": name, "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.cookies[COOKIE].value, await resp.json()


def with_cookie(sid: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={sid}"}


async def get(http: aiohttp.ClientSession, url: str, sid: str) -> tuple[int, Any]:
    async with http.get(url, headers=with_cookie(sid), allow_redirects=False) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: every request carries exactly the cookie the test gives it.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


# -- (a) a session logged in on one web app is served by the other --------------------------
async def test_a_session_from_one_web_app_is_served_by_the_other(
    web_apps: list[WebApp], http: aiohttp.ClientSession, tcp: Any
) -> None:
    web1, web2 = (w.start() for w in web_apps)
    sid, login = await api_login(http, web1.url, "Alice", DEMO_USERS["Alice"])
    bob = await tcp("Bob")

    # The first requests web2 sees for this cookie come at once: one adoption serves all.
    paths = ["/api/users", "/api/rooms", "/api/poll", "/api/users", "/api/poll", "/"]
    answers = await asyncio.gather(*(get(http, web2.url + p, sid) for p in paths))
    assert [status for status, _ in answers] == [200] * len(paths), answers
    assert "Alice" in answers[-1][1]  # the chat page, not the login page
    assert web2.adoptions("Alice") == 1, web2.log_text()

    # web1's cursor means nothing to web2's buffer: the tab is told to reload.
    status, poll = await get(http, f"{web2.url}/api/poll?cursor={login['cursor']}", sid)
    assert status == 200 and poll["reset"] is True
    async with http.post(
        f"{web2.url}/api/messages",
        json={"to": "Bob", "text": "via web2", "client_msg_id": "f-1"},
        headers=with_cookie(sid),
    ) as resp:
        assert resp.status == 200, await resp.text()
    got = await bob.wait_event(lambda e: e["type"] == "message")
    assert got["message"]["from"] == "Alice" and got["message"]["text"] == "via web2"

    # Cookies that name no session: 401, never a crash (one well formed, one not).
    for stranger in (secrets.token_urlsafe(32), "not-a-session-id", ""):
        status, body = await get(http, f"{web2.url}/api/users", stranger)
        assert status == 401 and body["error"] == "not_logged_in", body

    # Logout on web2 ends the session: its row goes and the core forgets its token.
    async with http.post(f"{web2.url}/api/logout", json={}, headers=with_cookie(sid)) as resp:
        assert resp.status == 204
    assert (await get(http, f"{web2.url}/api/users", sid))[0] == 401
    assert web1.alive() and web2.alive()


async def test_a_stopped_web_app_logs_nobody_out(
    web_apps: list[WebApp], http: aiohttp.ClientSession
) -> None:
    web1, web2 = (w.start() for w in web_apps)
    sid, _ = await api_login(http, web1.url, "Alice", DEMO_USERS["Alice"])
    assert web1.stop() == 0  # replaced, say: SIGTERM lets go of sessions, no logout
    status, body = await get(http, f"{web2.url}/api/users", sid)
    assert status == 200, body
    assert "let go of the browser session of Alice" in web1.log_text()


# -- (b) kill -9 a web app under a real browser ----------------------------------------------
@pytest.mark.parametrize("transport", ["ws", "longpoll"])
async def test_a_page_keeps_chatting_when_its_web_app_is_killed(
    chromium: Any,
    web_apps: list[WebApp],
    balancer: HAProxy,
    tcp: Any,
    tmp_path: Path,
    transport: str,
) -> None:
    expect = import_playwright().expect
    web1, web2 = web_apps
    # Only web1 at first, so the page's session and its event stream are surely on the
    # one that is killed; web2 starts later and has never seen this browser.
    web1.start()
    balancer.wait_up("web", {"web1"})
    context = await chromium.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"error: {e}"))
    site = balancer.url("web")
    await log_in(page, site, "Alice", "123", f"?transport={transport}")
    logins: list[str] = []
    page.on(
        "framenavigated",
        lambda frame: (
            "/login" in frame.url and frame == page.main_frame and logins.append(frame.url)
        ),
    )
    await expect(page.locator("body")).to_have_attribute("data-active-transport", transport)

    bob = await tcp("Bob")
    await user_button(page, "Bob").click()
    await expect(page.get_by_label("Message")).to_be_enabled()
    await bob.client.send_message("Alice", "before the kill")
    await expect(page.locator(".msg.theirs .text").last).to_have_text("before the kill")

    web2.start()
    balancer.wait_up("web", {"web2"})
    web1.kill()

    await bob.client.send_message("Alice", "after the kill")
    await expect(page.locator(".msg.theirs .text").last).to_have_text(
        "after the kill", timeout=20_000
    )
    box = page.get_by_label("Message")
    await box.fill(f"still here ({transport})")
    await box.press("Enter")
    got = await bob.wait_event(
        lambda e: e["type"] == "message" and e["message"]["text"] == f"still here ({transport})",
        timeout=20,
    )
    assert got["message"]["from"] == "Alice"
    await expect(page.locator(".msg.mine .text").last).to_have_text(f"still here ({transport})")
    await expect(page.locator("#banner")).to_be_hidden(timeout=20_000)

    assert logins == [] and "/login" not in page.url
    await expect(page.locator("body")).to_have_attribute("data-active-transport", transport)
    assert web2.adoptions("Alice") >= 1, web2.log_text()

    # A replacement for web1 joins: requests now alternate between two web apps that
    # each hold a copy of the session. Chat, presence and unread counts still add up.
    web1.start()
    balancer.wait_up("web", {"web1", "web2"})
    charlie = await tcp("Charlie")
    await expect(user_button(page, "Charlie").locator(".dot.online")).to_be_visible()
    await charlie.client.send_message("Alice", "while Bob's conversation is open")
    await expect(user_button(page, "Charlie").locator(".badge")).to_have_text("1")
    await bob.client.send_message("Alice", "with both up")
    await expect(page.locator(".msg.theirs .text").last).to_have_text("with both up")
    await box.fill(f"both up ({transport})")
    await box.press("Enter")
    await bob.wait_event(lambda e: e["type"] == "message" and "both up (" in e["message"]["text"])
    await expect(page.locator("#banner")).to_be_hidden(timeout=20_000)
    assert logins == []
    assert problems == []
    shot = tmp_path / f"failover-{transport}.png"
    await page.screenshot(path=shot)
    target = os.environ.get("WEB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)
    await context.close()


# -- (c) the database stopped -------------------------------------------------------------------
async def test_the_database_stopped_gives_clear_errors_and_recovers(
    web_apps: list[WebApp], pg_server: PgServer, http: aiohttp.ClientSession
) -> None:
    web1, web2 = (w.start() for w in web_apps)
    sid, _ = await api_login(http, web1.url, "Alice", DEMO_USERS["Alice"])
    pg_server.pause()
    try:
        for cookie in (secrets.token_urlsafe(32), sid):  # unknown here: must be looked up
            status, body = await get(http, f"{web2.url}/api/users", cookie)
            assert status == 503 and body["error"] == "storage_unavailable", body
            assert "session store" in body["message"]
        status, body = await get(http, f"{web2.url}/", sid)  # a page: the same, not a login
        assert status == 503, body
        async with http.post(
            f"{web2.url}/api/login", json={"username": "Bob", "password": DEMO_USERS["Bob"]}
        ) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "storage_unavailable"
        # A session held in memory goes on chatting meanwhile.
        assert (await get(http, f"{web1.url}/api/users", sid))[0] == 200
        assert (await get(http, f"{web2.url}/healthz", sid))[0] == 200
        assert web1.alive() and web2.alive()
    finally:
        pg_server.resume()

    async def adopted() -> bool:
        return (await get(http, f"{web2.url}/api/users", sid))[0] == 200

    await until(adopted, timeout=15, what="web2 to adopt the session once PostgreSQL is back")
    assert "Traceback" not in web1.log_text() + web2.log_text()


# -- (d) what a row holds -------------------------------------------------------------------------
async def test_a_row_holds_neither_the_password_nor_the_cookie(
    web_apps: list[WebApp], database: str, core: CoreProcess, http: aiohttp.ClientSession
) -> None:
    web1, _ = web_apps
    web1.start()
    sid, _ = await api_login(http, web1.url, "Dana", DANA_PASSWORD)
    db = await asyncpg.connect(database)
    try:
        rows = await db.fetch("SELECT * FROM web_sessions")
        dump = await db.fetchval("SELECT string_agg(t::text, ' ') FROM web_sessions t")
    finally:
        await db.close()
    assert len(rows) == 1
    row = rows[0]
    assert set(row.keys()) == {"key", "username", "token", "created", "last_seen"}
    assert row["username"] == "Dana"
    assert bytes(row["key"]) == hashlib.sha256(sid.encode()).digest()
    raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
    raw += dump.encode()
    for secret in (DANA_PASSWORD, sid):
        for form in (secret.encode(), secret.encode().hex().encode()):
            assert form not in raw, f"{secret!r} is in the row"
    # The token is there only sealed: the cookie opens it, and it resumes Dana.
    token = unseal(sid, bytes(row["token"]))
    assert token is not None and token.encode() not in raw
    assert unseal(secrets.token_urlsafe(32), bytes(row["token"])) is None
    client = await CoreClient.connect(core.host, core.port)
    try:
        assert (await client.resume(token))["username"] == "Dana"
    finally:
        await client.close()


def test_an_unreachable_database_stops_the_start_without_showing_the_password(
    core: CoreProcess,
) -> None:
    url = f"postgresql://chat:hunter2secret@127.0.0.1:{free_port()}/chat"
    done = subprocess.run(
        [sys.executable, "-m", "app", "--port", "0", "--core", f"127.0.0.1:{core.port}"],
        env={**os.environ, "CHAT_DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to start" in done.stderr and "--database-url" in done.stderr
    assert "hunter2secret" not in done.stderr + done.stdout


# -- in-process: the rules between web apps ---------------------------------------------------
@pytest.fixture
async def two_apps(core_proc: CoreProcess, database: str, aiohttp_server: Any) -> list[Any]:
    """Two web apps on this loop, one database, refreshing rows every 0.2 s."""
    apps = []
    for _ in range(2):
        config = WebConfig(
            core=(core_proc.host, core_proc.port),
            database_url=database,
            session_refresh=0.2,
            idle_timeout=1.0,
        )
        server = await aiohttp_server(create_app(config))
        apps.append(server)
    return apps


def gateway_of(server: Any) -> Any:
    from app.http_api import GATEWAY_KEY

    return server.app[GATEWAY_KEY]


def url_of(server: Any) -> str:
    return f"http://{server.host}:{server.port}"


async def test_concurrent_requests_adopt_once(
    two_apps: list[Any], http: aiohttp.ClientSession
) -> None:
    a, b = two_apps
    sid, _ = await api_login(http, url_of(a), "Alice", DEMO_USERS["Alice"])
    shared = gateway_of(b).shared
    loads = 0
    load = shared.store.load

    async def counted(sid: str) -> Any:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # long enough for every request to arrive meanwhile
        return await load(sid)

    shared.store.load = counted
    answers = await asyncio.gather(*(get(http, f"{url_of(b)}/api/users", sid) for _ in range(8)))
    assert [status for status, _ in answers] == [200] * 8
    assert loads == 1 and len(gateway_of(b).sessions) == 1


async def test_a_logout_on_one_web_app_ends_the_copies_on_the_others(
    two_apps: list[Any], http: aiohttp.ClientSession
) -> None:
    a, b = two_apps
    sid, _ = await api_login(http, url_of(a), "Alice", DEMO_USERS["Alice"])
    assert (await get(http, f"{url_of(b)}/api/users", sid))[0] == 200  # b holds a copy now
    async with http.post(f"{url_of(a)}/api/logout", json={}, headers=with_cookie(sid)) as resp:
        assert resp.status == 204

    async def ended_on_b() -> bool:
        return (await get(http, f"{url_of(b)}/api/users", sid))[0] == 401

    await until(ended_on_b, timeout=5, what="b to end its copy of the logged-out session")
    assert gateway_of(b).sessions == {}


async def test_an_idle_copy_is_let_go_not_logged_out(
    two_apps: list[Any], http: aiohttp.ClientSession
) -> None:
    a, b = two_apps
    sid, _ = await api_login(http, url_of(a), "Alice", DEMO_USERS["Alice"])
    assert (await get(http, f"{url_of(b)}/api/users", sid))[0] == 200
    # Nobody polls b (the browser's stream is on a): b lets go of its copy after 1 s.
    await until(lambda: not gateway_of(b).sessions, timeout=5, what="b to let go")
    assert await gateway_of(b).shared.store.count() == 1  # the session itself stays
    status, body = await get(http, f"{url_of(b)}/api/users", sid)
    assert status == 200, body  # served again, not sent to the login page
