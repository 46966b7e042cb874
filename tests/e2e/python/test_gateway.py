"""End-to-end: the real Python MCP SDK client (1.x or 2.x, whichever is installed) talks through
mcp-edge (Streamable HTTP) to @modelcontextprotocol/server-everything (stdio child).

Every test opens its own MCP session, so every test gets its own server-everything process.
Where the 1.x and 2.x client APIs differ, the small helpers below branch on the installed version.
Payloads are compared in their wire (camelCase JSON) form, which both SDK lines produce alike.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx  # raw requests (test 11); the 2.x SDK itself uses httpx2
import mcp.types as types
import pytest

MCP_VERSION = importlib.metadata.version("mcp")
MCP_MAJOR = int(MCP_VERSION.split(".")[0])

if MCP_MAJOR >= 2:
    import httpx2 as sdk_http  # the HTTP library the 2.x SDK is built on
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
else:
    import httpx as sdk_http
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

SERVER_NAME = "mcp-servers/everything"  # server-everything's serverInfo.name (dist/server/index.js)
SESSION_ERA_VERSIONS = {"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def wire(obj: Any) -> Any:
    """An SDK model as the JSON the wire carries (camelCase in both SDK lines)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(by_alias=True, mode="json", exclude_none=True)
    return obj


def texts(result: Any) -> list[str]:
    return [c["text"] for c in wire(result)["content"] if c.get("type") == "text"]


class Inbox:
    """Things that arrived (notifications, callback calls); lets a test wait for one, bounded."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = anyio.Event()

    def put(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, pred: Callable[[Any], bool], timeout: float, what: str) -> Any:
        try:
            with anyio.fail_after(timeout):
                while True:
                    for item in self.items:
                        if pred(item):
                            return item
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s; got {self.items!r}") from None


@dataclass
class HttpExchange:
    """One HTTP request the SDK made to the gateway, as seen by an httpx response hook."""

    method: str
    status: int
    rpc: Any  # parsed JSON-RPC body of a POST (None for GET/DELETE)
    sent_session_id: str | None
    sent_protocol_version: str | None
    received_session_id: str | None
    content_type: str | None
    error_body: Any = None  # parsed body of a >= 400 response

    def rpc_methods(self) -> list[str]:
        msgs = self.rpc if isinstance(self.rpc, list) else [self.rpc]
        return [m.get("method") for m in msgs if isinstance(m, dict) and "method" in m]


@dataclass
class Conn:
    session: Any  # the SDK's ClientSession
    server_name: str
    protocol_version: str
    http: list[HttpExchange]
    notifications: Inbox
    logs: Inbox
    transport_errors: list[Exception]
    connect_seconds: float
    _get_session_id: Callable[[], str | None]

    def session_id(self) -> str | None:
        return self._get_session_id()


def _http_client(exchanges: list[HttpExchange]) -> Any:
    """An httpx (1.x) / httpx2 (2.x) client like the SDK's default, recording each exchange."""

    async def on_response(response: Any) -> None:
        req = response.request
        rpc = None
        if req.method == "POST":
            try:
                rpc = json.loads(req.content)
            except ValueError:
                rpc = req.content[:200]
        error_body = None
        if response.status_code >= 400:
            await response.aread()
            try:
                error_body = response.json()
            except ValueError:
                error_body = response.text
        exchanges.append(
            HttpExchange(
                method=req.method,
                status=response.status_code,
                rpc=rpc,
                sent_session_id=req.headers.get("mcp-session-id"),
                sent_protocol_version=req.headers.get("mcp-protocol-version"),
                received_session_id=response.headers.get("mcp-session-id"),
                content_type=response.headers.get("content-type"),
                error_body=error_body,
            )
        )

    return sdk_http.AsyncClient(
        timeout=sdk_http.Timeout(30.0, read=300.0),  # the SDKs' own defaults
        event_hooks={"response": [on_response]},
    )


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    sampling_callback: Any = None,
    elicitation_callback: Any = None,
    list_roots_callback: Any = None,
) -> AsyncIterator[Conn]:
    """Open an MCP session through the gateway with the SDK's ClientSession over its Streamable
    HTTP client. Leaving the block ends the session (the SDK sends DELETE)."""
    exchanges: list[HttpExchange] = []
    notifications = Inbox()
    logs = Inbox()
    transport_errors: list[Exception] = []

    async def message_handler(message: Any) -> None:
        if isinstance(message, Exception):
            transport_errors.append(message)
            return
        message = getattr(message, "root", message)  # 1.x wraps notifications in a RootModel
        if hasattr(message, "method"):
            notifications.put(wire(message))

    async def logging_callback(params: Any) -> None:
        logs.put(wire(params))

    callbacks = dict(
        sampling_callback=sampling_callback,
        elicitation_callback=elicitation_callback,
        list_roots_callback=list_roots_callback,
        logging_callback=logging_callback,
        message_handler=message_handler,
    )

    def session_id_from_hook() -> str | None:
        ids = [x.received_session_id for x in exchanges if x.received_session_id]
        return ids[0] if ids else None

    started = time.monotonic()
    async with _http_client(exchanges) as hc:
        if MCP_MAJOR >= 2:
            # `Client` is 2.x's front door: it builds a ClientSession over the transport and runs
            # the default connect policy (mode="auto": server/discover probe, then initialize).
            async with Client(streamable_http_client(url, http_client=hc), cache=None, **callbacks) as client:
                session = client.session
                yield Conn(
                    session=session,
                    server_name=session.server_info.name,
                    protocol_version=session.protocol_version,
                    http=exchanges,
                    notifications=notifications,
                    logs=logs,
                    transport_errors=transport_errors,
                    connect_seconds=time.monotonic() - started,
                    _get_session_id=session_id_from_hook,
                )
        else:
            async with streamable_http_client(url, http_client=hc) as (read, write, get_session_id):
                async with ClientSession(read, write, **callbacks) as session:
                    init = await session.initialize()
                    yield Conn(
                        session=session,
                        server_name=init.serverInfo.name,
                        protocol_version=init.protocolVersion,
                        http=exchanges,
                        notifications=notifications,
                        logs=logs,
                        transport_errors=transport_errors,
                        connect_seconds=time.monotonic() - started,
                        _get_session_id=get_session_id,
                    )


def root(uri: str, name: str) -> Any:
    return types.Root.model_validate({"uri": uri, "name": name})


def sampling_result(text: str, model: str) -> Any:
    return types.CreateMessageResult.model_validate(
        {"role": "assistant", "content": {"type": "text", "text": text}, "model": model, "stopReason": "endTurn"}
    )


def elicit_result(action: str, content: dict[str, Any]) -> Any:
    return types.ElicitResult.model_validate({"action": action, "content": content})


@contextlib.contextmanager
def deprecated_ok():
    """2.x marks session-era features (setLevel, subscribe) deprecated; they are what we test."""
    with warnings.catch_warnings():
        if MCP_MAJOR >= 2:
            from mcp.shared.exceptions import MCPDeprecationWarning

            warnings.simplefilter("ignore", MCPDeprecationWarning)
        yield


async def set_logging_level(session: Any, level: str) -> None:
    with deprecated_ok():
        await session.set_logging_level(level)


async def subscribe_resource(session: Any, uri: str) -> None:
    with deprecated_ok():
        await session.subscribe_resource(uri)


async def send_cancel_if_sdk_does_not(session: Any, request_id: Any, reason: str) -> None:
    """2.x sends `notifications/cancelled` itself when the caller's scope is cancelled.
    1.x only abandons the wait, so a 1.x user sends the notification explicitly."""
    if MCP_MAJOR >= 2:
        return
    await session.send_notification(
        types.ClientNotification(
            types.CancelledNotification(
                params=types.CancelledNotificationParams(requestId=request_id, reason=reason),
            )
        )
    )


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


async def test_initialize_and_list_tools(gateway):
    with anyio.fail_after(30):
        async with connect(gateway.url) as conn:
            tools = wire(await conn.session.list_tools())

    assert conn.server_name == SERVER_NAME
    assert conn.protocol_version in SESSION_ERA_VERSIONS
    # A swallowed server/discover probe would cost the 2.x client a 10 s timeout.
    assert conn.connect_seconds < 5.0, f"connect took {conn.connect_seconds:.2f} s"

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

    posts = [x for x in conn.http if x.method == "POST"]
    first_methods = [x.rpc_methods() for x in posts[:3]]
    if MCP_MAJOR >= 2:
        # The 2.x client probes the stateless revision first; the gateway must answer at once with
        # HTTP 400 + JSON-RPC -32600 so the client falls back to initialize.
        assert first_methods[0] == ["server/discover"], first_methods
        probe = posts[0]
        assert probe.status == 400, probe
        assert probe.error_body["error"]["code"] == -32600, probe.error_body
        assert first_methods[1] == ["initialize"], first_methods
        init_post = posts[1]
    else:
        assert first_methods[0] == ["initialize"], first_methods
        init_post = posts[0]
    assert init_post.status == 200
    assert init_post.received_session_id, "initialize response carried no Mcp-Session-Id"
    assert conn.transport_errors == []


async def test_tool_call_with_progress(gateway):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    with anyio.fail_after(30):
        async with connect(gateway.url) as conn:
            result = await conn.session.call_tool(
                "trigger-long-running-operation", {"duration": 2, "steps": 4}, progress_callback=on_progress
            )

    assert texts(result) == ["Long running operation completed. Duration: 2 seconds, Steps: 4."]
    assert [p for p, _, _ in progress] == [1, 2, 3, 4]
    assert all(total == 4 for _, total, _ in progress)
    assert not wire(result).get("isError")


async def test_sampling_round_trip(gateway):
    calls = Inbox()

    async def sampling_callback(context: Any, params: Any) -> Any:
        calls.put(wire(params))
        return sampling_result("sampled-by-e2e-client 7f3a", "e2e-model-1")

    with anyio.fail_after(30):
        async with connect(gateway.url, sampling_callback=sampling_callback) as conn:
            result = await conn.session.call_tool("trigger-sampling-request", {"prompt": "hello-gw", "maxTokens": 42})

    assert len(calls.items) == 1
    req = calls.items[0]
    assert req["messages"][0]["content"]["text"] == "Resource trigger-sampling-request context: hello-gw"
    assert req["maxTokens"] == 42
    assert req["systemPrompt"] == "You are a helpful test server."

    text = "\n".join(texts(result))
    assert text.startswith("LLM sampling result:")
    returned = json.loads(text.split("\n", 1)[1])  # the tool returns JSON.stringify(result)
    assert returned["content"] == {"type": "text", "text": "sampled-by-e2e-client 7f3a"}
    assert returned["model"] == "e2e-model-1"
    assert returned["role"] == "assistant"


async def test_elicitation_round_trip(gateway):
    calls = Inbox()

    async def elicitation_callback(context: Any, params: Any) -> Any:
        calls.put(wire(params))
        return elicit_result("accept", {"name": "Ada Lovelace", "check": True, "integer": 7})

    with anyio.fail_after(30):
        async with connect(gateway.url, elicitation_callback=elicitation_callback) as conn:
            result = await conn.session.call_tool("trigger-elicitation-request", {})

    assert len(calls.items) == 1
    req = calls.items[0]
    assert req["message"] == "Please provide inputs for the following fields:"
    assert req["requestedSchema"]["required"] == ["name"]

    out = texts(result)
    assert out[0] == "✅ User provided the requested information!"
    assert out[1].splitlines() == [
        "User inputs:",
        "- Name: Ada Lovelace",
        "- Agreed to terms: true",
        "- Favorite Integer: 7",
    ]
    raw = json.loads(out[2].split("Raw result: ", 1)[1])
    assert raw == {"action": "accept", "content": {"name": "Ada Lovelace", "check": True, "integer": 7}}


async def test_roots(gateway):
    # server-everything requests roots/list on its own ~350 ms after notifications/initialized
    # (server/index.js oninitialized -> syncRoots), i.e. a server-initiated request unrelated to
    # any client request, then logs "Roots updated: N root(s) received from client".
    calls = Inbox()
    roots = [root("file:///tmp/e2e-roots/alpha", "alpha"), root("file:///tmp/e2e-roots/beta", "beta")]

    async def list_roots_callback(context: Any) -> Any:
        calls.put("roots/list")
        return types.ListRootsResult(roots=roots)

    with anyio.fail_after(30):
        async with connect(gateway.url, list_roots_callback=list_roots_callback) as conn:
            await calls.wait_for(lambda _: True, 10, "roots/list request from the server")
            await conn.logs.wait_for(
                lambda p: p.get("data") == "Roots updated: 2 root(s) received from client",
                10,
                "'Roots updated' log message",
            )
            result = await conn.session.call_tool("get-roots-list", {})

    text = texts(result)[0]
    assert text.startswith("Current MCP Roots (2 total):")
    assert "1. alpha\n   URI: file:///tmp/e2e-roots/alpha" in text
    assert "2. beta\n   URI: file:///tmp/e2e-roots/beta" in text


async def test_resource_subscribe_and_updated(gateway):
    uri = "demo://resource/dynamic/text/1"
    with anyio.fail_after(30):
        async with connect(gateway.url) as conn:
            read = wire(await conn.session.read_resource(uri))
            assert read["contents"][0]["uri"] == uri
            await subscribe_resource(conn.session, uri)
            # Starts a per-session timer: one notifications/resources/updated per subscribed URI
            # at once, then every 5 s (tools/toggle-subscriber-updates.js).
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


async def test_logging(gateway):
    levels = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
    with anyio.fail_after(30):
        async with connect(gateway.url) as conn:
            await set_logging_level(conn.session, "debug")
            # Sends one random-level message at once, then one every 5 s (server/logging.js).
            started = texts(await conn.session.call_tool("toggle-simulated-logging", {}))[0]
            assert started.startswith("Started simulated, random-leveled logging")
            msg = await conn.logs.wait_for(lambda p: True, 10, "notifications/message")
            texts(await conn.session.call_tool("toggle-simulated-logging", {}))

    assert msg["level"] in levels
    assert isinstance(msg["data"], str) and "message" in msg["data"].lower()
    assert any(n["method"] == "notifications/message" for n in conn.notifications.items)


async def test_cancellation(gateway):
    first_progress = anyio.Event()
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)
        first_progress.set()

    outcome: dict[str, Any] = {}

    with anyio.fail_after(30):
        async with connect(gateway.url) as conn:

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

            call_posts = [
                x
                for x in conn.http
                if x.method == "POST"
                and isinstance(x.rpc, dict)
                and x.rpc.get("method") == "tools/call"
                and x.rpc["params"]["name"] == "trigger-long-running-operation"
            ]
            assert len(call_posts) == 1
            request_id = call_posts[0].rpc["id"]
            await send_cancel_if_sdk_does_not(conn.session, request_id, "e2e test cancelled the call")

            # The session keeps working: plain calls, and another progress-reporting call.
            echoed = await conn.session.call_tool("echo", {"message": "after-cancel"})
            quick = await conn.session.call_tool("trigger-long-running-operation", {"duration": 0.2, "steps": 2})

            cancel_posts = [
                x for x in conn.http if x.method == "POST" and "notifications/cancelled" in x.rpc_methods()
            ]

    assert outcome.get("cancelled") is True and "result" not in outcome
    assert 1 <= len(progress) < 20
    assert len(cancel_posts) == 1, [x.rpc for x in conn.http if x.method == "POST"]
    assert cancel_posts[0].rpc["params"]["requestId"] == request_id
    assert cancel_posts[0].status == 202, cancel_posts[0]
    assert texts(echoed) == ["Echo: after-cancel"]
    assert texts(quick) == ["Long running operation completed. Duration: 0.2 seconds, Steps: 2."]


async def test_one_megabyte_argument(gateway):
    # 1,000,000 characters, position-dependent so truncation/reordering would show.
    chunk = "".join(f"{i:07d}|" for i in range(125_000))  # 8 chars each
    message = chunk
    assert len(message) == 1_000_000
    with anyio.fail_after(60):
        async with connect(gateway.url) as conn:
            result = await conn.session.call_tool("echo", {"message": message})
            response_posts = [
                x
                for x in conn.http
                if x.method == "POST" and isinstance(x.rpc, dict) and x.rpc.get("method") == "tools/call"
            ]

    assert conn.transport_errors == [], conn.transport_errors
    assert response_posts and response_posts[0].status == 200, response_posts
    out = texts(result)
    assert len(out) == 1
    assert len(out[0]) == len("Echo: ") + 1_000_000
    assert out[0] == "Echo: " + message


async def test_twenty_concurrent_calls(gateway):
    results: dict[int, Any] = {}
    with anyio.fail_after(30):
        async with connect(gateway.url) as conn:

            async def one(i: int) -> None:
                if i % 2:
                    results[i] = await conn.session.call_tool("echo", {"message": f"concurrent-{i}"})
                else:
                    results[i] = await conn.session.call_tool("get-sum", {"a": i, "b": 1000 * i})

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(one, i)

    assert sorted(results) == list(range(20))
    for i, result in results.items():
        if i % 2:
            assert texts(result) == [f"Echo: concurrent-{i}"]
        else:
            assert texts(result) == [f"The sum of {i} and {1000 * i} is {1001 * i}."]


async def test_delete_then_404(gateway):
    with anyio.fail_after(30):
        async with connect(gateway.url) as conn:
            session_id = conn.session_id()
            version = conn.protocol_version
            assert session_id
            assert texts(await conn.session.call_tool("echo", {"message": "x"})) == ["Echo: x"]

        deletes = [x for x in conn.http if x.method == "DELETE"]
        assert len(deletes) == 1, deletes
        assert deletes[0].sent_session_id == session_id
        assert deletes[0].status in (200, 204), deletes[0]

        async with httpx.AsyncClient(timeout=10) as raw:
            resp = await raw.post(
                gateway.url,
                headers={
                    "content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "mcp-session-id": session_id,
                    "mcp-protocol-version": version,
                },
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            )
    assert resp.status_code == 404, (resp.status_code, resp.headers, resp.text)
