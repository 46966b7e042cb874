// One round trip of the real TypeScript MCP SDK client through a gateway, in a process of its
// own: tests run it with NODE_EXTRA_CA_CERTS naming a test CA (which Node reads only at start)
// to reach an https:// or wss:// gateway, and without it to see the certificate refused.
//
//   node [--experimental-websocket] lib/sdk_client.mjs '{"url": "https://…/mcp", "transport": "http"}'
//
// The argument is JSON: `url`; `transport`, `http` (StreamableHTTPClientTransport) or `ws`
// (WebSocketClientTransport); optionally `token`, a bearer token sent as
// `Authorization: Bearer …` over HTTP and as the offered subprotocol `mcp.auth.<token>` over
// WebSocket. The client connects (initialize), lists the tools, calls `echo` and closes.
// Prints one JSON line on stdout: { ok: true, serverName, tools, echo, wsProtocol } or
// { ok: false, stage, name, message, code, causeCode }. Exits 0 when it printed that line.

import { pathToFileURL } from 'node:url';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { WebSocketClientTransport } from '@modelcontextprotocol/sdk/client/websocket.js';

const CALL = { timeout: 15_000 };

/**
 * A WebSocketClientTransport that also offers `mcp.auth.<token>`, as a browser application
 * does: the SDK's transport opens its socket with the subprotocol `mcp` only, so the global
 * WebSocket is wrapped while (and only while) it constructs that socket.
 */
export function wsTransportWithToken(url, token) {
  const transport = new WebSocketClientTransport(url);
  if (!token) return transport;
  const start = transport.start.bind(transport);
  transport.start = () => {
    const Base = globalThis.WebSocket;
    globalThis.WebSocket = class extends Base {
      constructor(u, protocols) {
        super(u, [...[protocols].flat(), `mcp.auth.${token}`]);
      }
    };
    try {
      return start(); // constructs the socket synchronously
    } finally {
      globalThis.WebSocket = Base;
    }
  };
  return transport;
}

/** An SDK transport for `spec` ({ url, transport, token }). */
export function sdkTransport({ url, transport, token }) {
  if (transport === 'ws') return wsTransportWithToken(new URL(url), token);
  if (transport === 'http') {
    const requestInit = token ? { headers: { Authorization: `Bearer ${token}` } } : undefined;
    return new StreamableHTTPClientTransport(new URL(url), { requestInit });
  }
  throw new Error(`transport must be http or ws, not ${transport}`);
}

/** Connects, lists tools, calls echo, closes; resolves to the report described above. */
export async function roundTrip(spec) {
  const client = new Client({ name: 'mcp-edge-e2e-tls', version: '0.0.0' });
  client.onerror = () => {}; // failures surface as rejections below
  const transport = sdkTransport(spec);
  let stage = 'connect';
  try {
    await client.connect(transport, CALL);
    const wsProtocol = transport._socket?.protocol; // the subprotocol the server selected
    stage = 'listTools';
    const { tools } = await client.listTools({}, CALL);
    stage = 'callTool';
    const result = await client.callTool({ name: 'echo', arguments: { message: 'over tls' } }, undefined, CALL);
    return {
      ok: true,
      serverName: client.getServerVersion()?.name,
      tools: tools.map((t) => t.name),
      echo: result.content?.[0]?.text,
      wsProtocol,
    };
  } catch (err) {
    return {
      ok: false,
      stage,
      name: err?.name,
      message: String(err?.message ?? err),
      code: err?.code,
      causeCode: err?.cause?.code ?? err?.error?.cause?.code,
    };
  } finally {
    await client.close().catch(() => {});
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const spec = JSON.parse(process.argv[2] ?? '{}');
  const report = await roundTrip(spec);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(0);
}
