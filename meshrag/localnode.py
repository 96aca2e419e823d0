"""Run real `meshrag start` processes on loopback: for tests, benchmarks and chaos scripts.

Each node is its own process group, so kill -9 takes the whole node down at
once, and stop() always leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, NamedTuple, Sequence

READY_TIMEOUT_S = 180.0
# No proxies: an http_proxy in the environment must not reroute a node's own address.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Placement(NamedTuple):
    """Where a node runs: the address it binds and advertises, and a command prefix that puts
    it there (e.g. ``("ip", "netns", "exec", NS)`` for a network namespace; empty: right here)."""

    host: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()


class LocalNode:
    def __init__(self, data_dir: Path, *, port: int | None = None, name: str = "node", extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", prefix: Sequence[str] = (), dev: bool = True, scheme: str = "http",
                 ca_file: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.scheme = scheme  # https for a node given --tls-* (its readiness is then asked over TLS too)
        self.ca_file = ca_file  # the CA its certificate is checked against, with https
        self.dev = dev  # --dev: no authentication (loopback only); False: the node's own security defaults
        self.host = host
        self.prefix = tuple(prefix)
        self.port = port or free_port()
        self.name = name
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self) -> "LocalNode":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **self.env)
        command = [*self.prefix, sys.executable, "-m", "meshrag.cli", "start", "--bind", f"{self.host}:{self.port}",
                   "--data-dir", str(self.data_dir), "--name", self.name, *(["--dev"] if self.dev else []), *self.extra_args]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> "LocalNode":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise RuntimeError(f"node {self.name} exited with {self.process.returncode if self.process else None}; log:\n{self.log_tail()}")
            try:
                with self._opener().open(self.url + "/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"node {self.name} not ready after {timeout_s:.0f} s; log:\n{self.log_tail()}")

    def _opener(self) -> urllib.request.OpenerDirector:
        if self.ca_file is None:
            return _DIRECT
        tls = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(self.ca_file)))
        return urllib.request.build_opener(urllib.request.ProxyHandler({}), tls)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill9(self) -> None:
        """SIGKILL the node's whole process group: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> "LocalNode":
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
