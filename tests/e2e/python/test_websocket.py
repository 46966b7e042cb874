"""End-to-end over WebSocket: the real Python MCP SDK 1.x client (`mcp.client.websocket.websocket_client`,
subprotocol `mcp`, one JSON-RPC message per text frame) talks through mcp-edge (same route path as
Streamable HTTP) to @modelcontextprotocol/server-everything (stdio child, one per session).

mcp 2.x removed its WebSocket client, so under 2.x every test here is skipped. The 1.x client needs
the `websockets` package (the `mcp[ws]` extra), pinned in requirements-mcp1.txt.

Every test opens its own connection, i.e. its own session and its own server-everything process.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest

from test_gateway import (
    SERVER_NAME,
    SESSION_ERA_VERSIONS,
    Inbox,
    elicit_result,
    root,
    sampling_result,
    texts,
    wire,
)

MCP_VERSION = importlib.metadata.version("mcp")
MCP_MAJOR = int(MCP_VERSION.split(".")[0])

if MCP_MAJOR < 2:
    import websockets.asyncio.client
    import websockets.exceptions
    from mcp import ClientSession
    from mcp.client.websocket import websocket_client
    from mcp.shared.message import SessionMessage

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        MCP_MAJOR >= 2,
        reason=f"mcp {MCP_VERSION} has no WebSocket client (mcp.client.websocket was removed in 2.0)",
    ),
    # 1.x marks websocket_client deprecated ("never part of the MCP specification"); it is what we test.
    pytest.mark.filterwarnings("ignore:The WebSocket client transport is deprecated:DeprecationWarning"),
]

SESSION_KEY = "mcp-edge/sessionId"
EVENT_KEY = "mcp-edge/eventId"
SESSION_ID_RE = re.compile(r"^[!-~]+\.[0-9a-f]{32}$")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def ws_url(gateway: Any, query: str = "") -> str:
    assert gateway.url.startswith("http://")
    return "ws://" + gateway.url[len("http://") :] + query


async def wait_for_log(gateway: Any, pred: Any, timeout: float, what: str) -> dict:
    """The first gateway log record matching `pred`; conftest's drainer thread has no event to
    wait on, so this polls every 20 ms, bounded."""
    with anyio.move_on_after(timeout):
        while True:
            for rec in gateway.log_records():
                if pred(rec):
                    return rec
            await anyio.sleep(0.02)
    raise AssertionError(f"the gateway did not log {what} within {timeout} s")


def gateway_children(gateway: Any) -> list[int] | None:
    """PIDs of the gateway's direct children (one guard per live backend); None without /proc."""
    task_dir = f"/proc/{gateway.proc.pid}/task"
    if not os.path.isdir(task_dir):
        return None
    pids: list[int] = []
    for task in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return pids


@dataclass
class WsConn:
    session: Any  # the SDK's ClientSession
    init: Any  # the InitializeResult as the SDK returned it
    wire: list[tuple[str, dict]]  # ("in" | "out", JSON-RPC message as sent/received), in order
    notifications: Inbox
    logs: Inbox
    transport_errors: list[Exception]

    def session_id(self) -> str | None:
        return (self.init.meta or {}).get(SESSION_KEY)

    def sent(self, method: str) -> list[dict]:
        return [m for d, m in self.wire if d == "out" and m.get("method") == method]

    def received(self) -> list[dict]:
        return [m for d, m in self.wire if d == "in"]


@contextlib.asynccontextmanager
async def tap(read: Any, write: Any, log: list[tuple[str, dict]]) -> AsyncIterator[tuple[Any, Any]]:
    """Sits between the SDK session and the WebSocket transport's streams, recording every message."""
    to_session, session_read = anyio.create_memory_object_stream(0)
    session_write, from_session = anyio.create_memory_object_stream(0)

    async def inbound() -> None:
        async with to_session:
            async for item in read:
                if isinstance(item, SessionMessage):
                    log.append(("in", wire(item.message)))
                await to_session.send(item)

    async def outbound() -> None:
        async with from_session:
            async for item in from_session:
                log.append(("out", wire(item.message)))
                await write.send(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(inbound)
        tg.start_soon(outbound)
        yield session_read, session_write
        tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def connect(
    gateway: Any,
    *,
    sampling_callback: Any = None,
    elicitation_callback: Any = None,
    list_roots_callback: Any = None,
) -> AsyncIterator[WsConn]:
    """Open an MCP session through the gateway with the SDK's ClientSession over its WebSocket
    client. Leaving the block closes the WebSocket with a close frame, which ends the session."""
    log: list[tuple[str, dict]] = []
    notifications = Inbox()
    logs = Inbox()
    transport_errors: list[Exception] = []

    async def message_handler(message: Any) -> None:
        if isinstance(message, Exception):
            transport_errors.append(message)
            return
        message = getattr(message, "root", message)
        if hasattr(message, "method"):
            notifications.put(wire(message))

    async def logging_callback(params: Any) -> None:
        logs.put(wire(params))

    async with websocket_client(ws_url(gateway)) as (read, write):
        async with tap(read, write, log) as (r, w):
            async with ClientSession(
                r,
                w,
                sampling_callback=sampling_callback,
                elicitation_callback=elicitation_callback,
                list_roots_callback=list_roots_callback,
                logging_callback=logging_callback,
                message_handler=message_handler,
            ) as session:
                init = await session.initialize()
                yield WsConn(
                    session=session,
                    init=init,
                    wire=log,
                    notifications=notifications,
                    logs=logs,
                    transport_errors=transport_errors,
                )


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


async def test_handshake_selects_mcp_subprotocol(gateway):
    with anyio.fail_after(15):
        async with websockets.asyncio.client.connect(ws_url(gateway), subprotocols=["mcp"]) as ws:
            assert ws.subprotocol == "mcp"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.asyncio.client.connect(ws_url(gateway), subprotocols=["graphql-ws"]):
                pass
    assert refused.value.response.status_code == 400
    assert b"subprotocol" in refused.value.response.body


async def test_initialize_and_list_tools(gateway):
    with anyio.fail_after(30):
        async with connect(gateway) as conn:
            tools = wire(await conn.session.list_tools())
            sid = conn.session_id()
            started = await wait_for_log(
                gateway,
                lambda r: r.get("message") == "A WebSocket session started." and r.get("session.id") == sid,
                5,
                f"'A WebSocket session started.' for {sid}",
            )

    assert conn.init.serverInfo.name == SERVER_NAME
    assert conn.init.protocolVersion in SESSION_ERA_VERSIONS
    assert sid and SESSION_ID_RE.match(sid), f'result._meta["{SESSION_KEY}"] = {conn.init.meta!r}'
    assert started["protocol.version"] == conn.init.protocolVersion

    names = {t["name"] for t in tools["tools"]}
    expected = {
        "echo",
        "get-sum",
        "get-tiny-image",
        "get-structured-content",
        "trigger-long-running-operation",
        "toggle-simulated-logging",
        "toggle-subscriber-updates",
    }
    assert expected <= names, f"missing {expected - names}; got {sorted(names)}"
    assert [m["method"] for m in conn.sent("initialize")] == ["initialize"]
    # No event ids: this client did not opt in to resumption.
    assert not any(EVENT_KEY in repr(m) for m in conn.received()), conn.received()
    assert conn.transport_errors == []


async def test_tool_call_with_progress(gateway):
    progress: list[tuple[float, float | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total))

    with anyio.fail_after(30):
        async with connect(gateway) as conn:
            result = await conn.session.call_tool(
                "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
            )

    assert texts(result) == ["Long running operation completed. Duration: 1 seconds, Steps: 4."]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    call_id = conn.sent("tools/call")[0]["id"]
    seq = [
        m["params"]["progress"] if m.get("method") == "notifications/progress" else "result"
        for m in conn.received()
        if m.get("method") == "notifications/progress" or m.get("id") == call_id
    ]
    assert seq == [1, 2, 3, 4, "result"]
    assert conn.transport_errors == []


async def test_sampling_round_trip(gateway):
    calls = Inbox()

    async def sampling_callback(context: Any, params: Any) -> Any:
        calls.put(wire(params))
        return sampling_result("sampled-over-websocket 7f3a", "e2e-model-ws")

    with anyio.fail_after(30):
        async with connect(gateway, sampling_callback=sampling_callback) as conn:
            result = await conn.session.call_tool("trigger-sampling-request", {"prompt": "hello-ws", "maxTokens": 42})

    assert len(calls.items) == 1
    req = calls.items[0]
    assert req["messages"][0]["content"]["text"] == "Resource trigger-sampling-request context: hello-ws"
    assert req["maxTokens"] == 42
    assert req["systemPrompt"] == "You are a helpful test server."
    text = "\n".join(texts(result))
    assert text.startswith("LLM sampling result:")
    returned = json.loads(text.split("\n", 1)[1])
    assert returned["content"] == {"type": "text", "text": "sampled-over-websocket 7f3a"}
    assert returned["model"] == "e2e-model-ws"
    assert conn.transport_errors == []


async def test_elicitation_round_trip(gateway):
    calls = Inbox()

    async def elicitation_callback(context: Any, params: Any) -> Any:
        calls.put(wire(params))
        return elicit_result("accept", {"name": "Ada Lovelace", "check": True, "integer": 7})

    with anyio.fail_after(30):
        async with connect(gateway, elicitation_callback=elicitation_callback) as conn:
            result = await conn.session.call_tool("trigger-elicitation-request", {})

    assert len(calls.items) == 1
    assert calls.items[0]["message"] == "Please provide inputs for the following fields:"
    assert calls.items[0]["requestedSchema"]["required"] == ["name"]
    out = texts(result)
    assert out[0] == "✅ User provided the requested information!"
    assert out[1].splitlines() == [
        "User inputs:",
        "- Name: Ada Lovelace",
        "- Agreed to terms: true",
        "- Favorite Integer: 7",
    ]
    assert conn.transport_errors == []


async def test_roots(gateway):
    # server-everything requests roots/list on its own ~350 ms after notifications/initialized, with
    # no request in flight, and again after notifications/roots/list_changed.
    calls = Inbox()
    roots = [root("file:///tmp/e2e-ws-roots/alpha", "alpha"), root("file:///tmp/e2e-ws-roots/beta", "beta")]

    async def list_roots_callback(context: Any) -> Any:
        calls.put("roots/list")
        return types.ListRootsResult(roots=list(roots))

    with anyio.fail_after(30):
        async with connect(gateway, list_roots_callback=list_roots_callback) as conn:
            await conn.logs.wait_for(
                lambda p: p.get("data") == "Roots updated: 2 root(s) received from client",
                10,
                "'Roots updated: 2' log message",
            )
            first = texts(await conn.session.call_tool("get-roots-list", {}))[0]
            roots.append(root("file:///tmp/e2e-ws-roots/gamma", "gamma"))
            await conn.session.send_roots_list_changed()
            await conn.logs.wait_for(
                lambda p: p.get("data") == "Roots updated: 3 root(s) received from client",
                10,
                "'Roots updated: 3' log message after roots/list_changed",
            )
            second = texts(await conn.session.call_tool("get-roots-list", {}))[0]

    assert len(calls.items) >= 2
    assert first.startswith("Current MCP Roots (2 total):")
    assert "1. alpha\n   URI: file:///tmp/e2e-ws-roots/alpha" in first
    assert "2. beta\n   URI: file:///tmp/e2e-ws-roots/beta" in first
    assert second.startswith("Current MCP Roots (3 total):")
    assert "3. gamma\n   URI: file:///tmp/e2e-ws-roots/gamma" in second
    assert conn.transport_errors == []


async def test_resource_subscribe_and_updated(gateway):
    uri = "demo://resource/dynamic/text/1"
    with anyio.fail_after(30):
        async with connect(gateway) as conn:
            read = wire(await conn.session.read_resource(uri))
            assert read["contents"][0]["uri"] == uri
            await conn.session.subscribe_resource(uri)
            # One notifications/resources/updated per subscribed URI at once, then every 5 s.
            started = texts(await conn.session.call_tool("toggle-subscriber-updates", {}))[0]
            assert started.startswith("Started simulated resource updated notifications")
            note = await conn.notifications.wait_for(
                lambda n: n["method"] == "notifications/resources/updated",
                10,
                "notifications/resources/updated",
            )
            stopped = texts(await conn.session.call_tool("toggle-subscriber-updates", {}))[0]
            assert stopped.startswith("Stopped simulated resource updates")

    assert note["params"]["uri"] == uri
    assert conn.transport_errors == []


async def test_logging(gateway):
    levels = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
    a, b = "demo://resource/dynamic/text/1", "demo://resource/dynamic/text/2"
    with anyio.fail_after(30):
        async with connect(gateway) as conn:
            # The subscribe handler logs at "info" before it answers.
            await conn.session.set_logging_level("warning")
            await conn.session.subscribe_resource(a)
            await conn.session.set_logging_level("info")
            await conn.session.subscribe_resource(b)
            info = await conn.logs.wait_for(lambda p: b in str(p.get("data")), 5, f"an info log about {b}")
            filtered = [p for p in conn.logs.items if a in str(p.get("data"))]

            await conn.session.set_logging_level("debug")
            # Sends one random-level message at once, then one every 5 s.
            started = texts(await conn.session.call_tool("toggle-simulated-logging", {}))[0]
            assert started.startswith("Started simulated, random-leveled logging")
            msg = await conn.logs.wait_for(lambda p: "message" in str(p.get("data")).lower(), 10, "simulated log")
            texts(await conn.session.call_tool("toggle-simulated-logging", {}))

    assert info["level"] == "info"
    # Served over HTTP, server-everything appends " from session <its id>".
    assert info["data"].strip().startswith(f"Received Subscribe Resource request for URI: {b}")
    assert filtered == [], f"an info log was sent while the level was 'warning': {filtered}"
    assert msg["level"] in levels
    assert conn.transport_errors == []


async def test_cancellation(gateway):
    first_progress = anyio.Event()
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)
        first_progress.set()

    outcome: dict[str, Any] = {}
    with anyio.fail_after(30):
        async with connect(gateway) as conn:

            async def long_call() -> None:
                with anyio.CancelScope() as scope:
                    outcome["scope"] = scope
                    outcome["result"] = await conn.session.call_tool(
                        "trigger-long-running-operation", {"duration": 20, "steps": 20}, progress_callback=on_progress
                    )
                outcome["cancelled"] = scope.cancelled_caught

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                with anyio.fail_after(10):
                    await first_progress.wait()
                outcome["scope"].cancel()

            # 1.x only abandons the wait; its user sends notifications/cancelled.
            request_id = conn.sent("tools/call")[0]["id"]
            await conn.session.send_notification(
                types.ClientNotification(
                    types.CancelledNotification(
                        params=types.CancelledNotificationParams(requestId=request_id, reason="e2e cancelled"),
                    )
                )
            )
            echoed = await conn.session.call_tool("echo", {"message": "after-cancel"})
            quick = await conn.session.call_tool("trigger-long-running-operation", {"duration": 0.2, "steps": 2})
            cancels = conn.sent("notifications/cancelled")

    assert outcome.get("cancelled") is True and "result" not in outcome
    assert 1 <= len(progress) < 20
    assert len(cancels) == 1 and cancels[0]["params"]["requestId"] == request_id, cancels
    assert texts(echoed) == ["Echo: after-cancel"]
    assert texts(quick) == ["Long running operation completed. Duration: 0.2 seconds, Steps: 2."]
    assert not any(m.get("id") == request_id and "method" not in m for m in conn.received())


async def test_twenty_concurrent_calls(gateway):
    results: dict[int, Any] = {}
    with anyio.fail_after(30):
        async with connect(gateway) as conn:

            async def one(i: int) -> None:
                if i % 2:
                    results[i] = await conn.session.call_tool("echo", {"message": f"ws-concurrent-{i}"})
                else:
                    results[i] = await conn.session.call_tool("get-sum", {"a": i, "b": 1000 * i})

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(one, i)

    assert sorted(results) == list(range(20))
    for i, result in results.items():
        if i % 2:
            assert texts(result) == [f"Echo: ws-concurrent-{i}"]
        else:
            assert texts(result) == [f"The sum of {i} and {1000 * i} is {1001 * i}."]
    assert conn.transport_errors == []


async def test_clean_close_ends_session(gateway):
    before = gateway_children(gateway)
    with anyio.fail_after(30):
        async with connect(gateway) as conn:
            sid = conn.session_id()
            assert sid and SESSION_ID_RE.match(sid), conn.init.meta
            assert texts(await conn.session.call_tool("echo", {"message": "before close"})) == ["Echo: before close"]
            # Only a stdio backend has a child per session; an upstream has none.
            stdio = os.environ.get("E2E_BACKEND", "stdio") == "stdio"
            mine = None if before is None or not stdio else [p for p in gateway_children(gateway) if p not in before]
            if mine is not None:
                assert len(mine) == 1, f"one new child for the session: {mine}"
        closed_at = time.monotonic()
        # Leaving the block closed the WebSocket with a close frame (code 1000): the session ends.
        ended = await wait_for_log(
            gateway,
            lambda r: r.get("message") == "The session ended." and (r.get("span") or {}).get("session.id") == sid,
            5,
            f"'The session ended.' for {sid}",
        )
        if mine:
            while mine[0] in gateway_children(gateway):
                assert time.monotonic() - closed_at < 5, f"child {mine[0]} still runs 5 s after the close"
                await anyio.sleep(0.025)

        with pytest.raises(websockets.exceptions.InvalidStatus) as resumed:
            async with websockets.asyncio.client.connect(ws_url(gateway, f"?session={sid}"), subprotocols=["mcp"]):
                pass
        async with httpx.AsyncClient(timeout=10) as raw:
            resp = await raw.post(
                gateway.url,
                headers={
                    "content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "mcp-session-id": sid,
                    "mcp-protocol-version": conn.init.protocolVersion,
                },
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            )

    assert ended["reason"] == "the client closed its connection"
    assert resumed.value.response.status_code == 404
    assert b"Session not found" in resumed.value.response.body
    assert resp.status_code == 404, (resp.status_code, resp.text)
    assert conn.transport_errors == []
