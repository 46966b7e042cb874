"""Starts one mcp-edge gateway per test module, in quick mode in front of server-everything.

E2E_BACKEND chooses how the gateway reaches server-everything: `stdio` (the default; one child
per session), `http` (server-everything serving Streamable HTTP on its own, behind
`--upstream … --upstream-kind http`) or `sse` (server-everything serving the legacy HTTP+SSE
transport, behind `--upstream …/sse --upstream-kind sse`). The tests are the same for all three.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent.parent  # tests/e2e
REPO_ROOT = E2E_DIR.parent.parent
EVERYTHING_ENTRY = E2E_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"

STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 45.0  # the gateway's default shutdown_grace is 30 s


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listening: threading.Event = field(default_factory=threading.Event)

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def log_records(self) -> list[dict]:
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if not self._listening.is_set():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("message") == "Listening." and "listen" in rec:
                    self.url = f"http://{rec['listen']}/mcp"
                    self._listening.set()


def _binary() -> Path:
    env = os.environ.get("EDGE_TEST_BIN")
    return Path(env) if env else REPO_ROOT / "target" / "debug" / "mcp-edge"


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest):
    binary = _binary()
    assert binary.is_file(), f"gateway binary not found: {binary} (set EDGE_TEST_BIN)"
    assert EVERYTHING_ENTRY.is_file(), f"server-everything not installed: {EVERYTHING_ENTRY}"
    backend = os.environ.get("E2E_BACKEND", "stdio")
    upstream = None
    if backend == "stdio":
        source = ["--stdio", f"node {shlex.quote(str(EVERYTHING_ENTRY))} stdio"]
    else:
        upstream, url = _start_everything(backend)
        source = ["--upstream", url, "--upstream-kind", backend]
    argv = [str(binary), "run", "--listen", "127.0.0.1:0", "--log-format", "json", *source]
    env = dict(os.environ)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    gw = Gateway(proc=proc)
    drainer = threading.Thread(target=gw._drain, name="mcp-edge-stderr", daemon=True)
    drainer.start()

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not gw._listening.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(STOP_TIMEOUT_S)
            drainer.join(2)
            pytest.fail(
                f"gateway did not report 'Listening.' (exit code {proc.returncode}); argv={argv}\n"
                f"--- gateway stderr ---\n{gw.log()}"
            )

    yield gw

    # Stop only the process this fixture started, by its PID.
    exit_code = None
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            exit_code = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    else:
        exit_code = proc.returncode
    drainer.join(5)
    if upstream is not None:
        _stop(upstream)
    if exit_code != 0:
        pytest.fail(f"gateway exited with {exit_code} after SIGTERM (expected 0)\n--- gateway stderr ---\n{gw.log()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_everything(backend: str) -> tuple[subprocess.Popen[bytes], str]:
    """server-everything serving `streamableHttp` (backend `http`) or `sse` on a free port."""
    mode, path = {"http": ("streamableHttp", "/mcp"), "sse": ("sse", "/sse")}[backend]
    port = _free_port()
    env = dict(os.environ, PORT=str(port))
    proc = subprocess.Popen(
        ["node", str(EVERYTHING_ENTRY), mode],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}{path}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"server-everything ({mode}) did not listen on port {port}")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stops a process this fixture started, by its PID."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing test, attach the gateway's log lines to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "gateway" in getattr(item, "funcargs", {}):
        report.sections.append(("mcp-edge stderr", item.funcargs["gateway"].log()))
