"""Headless Chromium driven over the DevTools protocol (a websocket, with aiohttp), for tests
that check what a page renders after its scripts ran.

No Playwright or Selenium (they download their own browsers): Debian's ``chromium`` package,
which scripts/setup.sh installs where it can. Every browser gets a fresh profile in a temporary
directory, and is closed, then killed if it lingers, whatever the test did.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BINARIES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    """$MESHRAG_CHROMIUM, else the first of the usual names on PATH."""
    explicit = os.environ.get("MESHRAG_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((path for path in map(shutil.which, BINARIES) if path), None)


class DevToolsError(RuntimeError):
    pass


class Chromium:
    """``async with Chromium(binary) as browser``: one page, a ``width`` x ``height`` viewport."""

    def __init__(self, binary: str, width: int = 1280, height: int = 1000) -> None:
        self._binary = binary
        self.width, self.height = width, height
        self._profile = Path(tempfile.mkdtemp(prefix="meshrag-chromium-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        self._process = subprocess.Popen(
            [self._binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={self._profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: its renderers and zygote go with it (_stop)
        )
        port = await self._debugging_port()
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            pages = [t for t in await response.json() if t.get("type") == "page"]
        if not pages:
            raise DevToolsError("Chromium opened no page")
        self._socket = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)

    async def _debugging_port(self) -> int:
        """Chromium writes the port it chose to DevToolsActivePort in its profile."""
        assert self._process is not None
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DevToolsError(f"Chromium exited with {self._process.returncode} at start")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            await asyncio.sleep(0.1)
        raise DevToolsError(f"Chromium did not open its DevTools port within {START_TIMEOUT_S:g} s")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are skipped)."""
        assert self._socket is not None
        message_id = next(self._ids)
        await self._socket.send_json({"id": message_id, "method": method, "params": params})
        async with asyncio.timeout(CALL_TIMEOUT_S):
            while True:
                message = await self._socket.receive_json()
                if message.get("id") == message_id:
                    break
        if "error" in message:
            raise DevToolsError(f"{method}: {message['error']}")
        return message.get("result", {})

    async def open(self, url: str) -> None:
        result = await self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"{url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise DevToolsError(f"{expression[:80]}...: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, interval_s: float = 0.25) -> Any:
        """The expression's first truthy value, polled; DevToolsError naming the last value on timeout.
        An exception in the page counts as not yet (the page may still be loading)."""
        deadline = time.monotonic() + timeout_s
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(expression)
            except DevToolsError as exc:
                value = exc
            if value and not isinstance(value, DevToolsError):
                return value
            await asyncio.sleep(interval_s)
        raise DevToolsError(f"not true within {timeout_s:g} s: {expression[:120]} (last: {value!r})")

    async def screenshot(self) -> bytes:
        """The viewport as PNG."""
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])

    async def close(self) -> None:
        """Close the browser (Browser.close, then SIGTERM, then SIGKILL) and delete its profile."""
        if self._socket is not None and not self._socket.closed:
            try:
                async with asyncio.timeout(5):
                    await self._socket.send_json({"id": next(self._ids), "method": "Browser.close", "params": {}})
                    await self._socket.close()
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
        if self._session is not None:
            await self._session.close()
        if self._process is not None:
            await asyncio.to_thread(_stop, self._process)
        shutil.rmtree(self._profile, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Wait for the browser to exit after Browser.close; then SIGTERM, then SIGKILL its process group
    (the group this test started: the browser and its helpers, nothing else)."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
        try:
            process.wait(timeout=5)
            if sig is None:
                os.killpg(process.pid, signal.SIGKILL)  # helpers that outlived the browser
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
