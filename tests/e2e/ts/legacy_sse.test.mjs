// End-to-end: the real TypeScript MCP SDK legacy client (SSEClientTransport, the 2024-11-05
// HTTP+SSE transport: GET /sse, POST to the announced endpoint) → mcp-edge's legacy frontend →
// the real @modelcontextprotocol/server-everything as the gateway's stdio child (one per
// session). Each test opens its own event stream, i.e. its own session.
//
// Run: cd tests/e2e && node --test ts/legacy_sse.test.mjs
// Env: EDGE_TEST_BIN (gateway binary), E2E_ECHO_GATEWAY_LOGS=1 (copy gateway stderr live).

import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';

import { EVERYTHING_ENTRY, logsOnFailure, startGateway, tomlString, writeConfig } from '../lib/gateway.mjs';

const CALL = { timeout: 15_000 };
const SESSION_ID_RE = /^[!-~]+\.[0-9a-f]{32}$/;

let gw;
let configPath;

before(async () => {
  configPath = writeConfig(`
[[routes]]
path = "/mcp"
backend = "everything"
sse_path = "/sse"
messages_path = "/messages"

[backends.everything]
kind = "stdio"
command = ${tomlString(process.execPath)}
args = [${tomlString(EVERYTHING_ENTRY)}, "stdio"]
`);
  gw = await startGateway({ config: configPath });
});

after(async () => {
  if (configPath) rmSync(dirname(configPath), { recursive: true, force: true });
  if (!gw) return;
  const exit = await gw.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, `mcp-edge did not exit 0 after SIGTERM\n${gw.dumpLogs()}`);
});

/** A test that prints the gateway's log lines written during it when it fails. */
function gwTest(name, fn) {
  logsOnFailure(() => gw, name, fn);
}

/**
 * A fresh SDK client on the legacy transport, closed when the test ends; `errors` collects what
 * the SDK reports through `onerror`.
 */
async function connect(t, { capabilities = {}, setup } = {}) {
  const client = new Client({ name: 'mcp-edge-e2e-legacy', version: '1.0.0' }, { capabilities });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  setup?.(client);
  const transport = new SSEClientTransport(new URL('/sse', gw.origin));
  await client.connect(transport, CALL);
  t.after(() => client.close());
  return { client, transport, errors };
}

/** The session id the endpoint event announced (the transport keeps the URL it POSTs to). */
function sessionOf(transport) {
  const endpoint = transport._endpoint;
  assert.ok(endpoint instanceof URL, 'the endpoint event arrived');
  assert.equal(endpoint.origin, gw.origin, 'the endpoint is same-origin');
  assert.equal(endpoint.pathname, '/messages');
  return endpoint.searchParams.get('sessionId');
}

function textOf(result) {
  assert.ok(!result.isError, `tool returned an error: ${JSON.stringify(result)}`);
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

/** Resolves once a gateway log record matches `pred` (polling; bounded). */
async function logged(pred, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const rec = gw.records().find(pred);
    if (rec) return rec;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`the gateway did not log ${what} within ${timeoutMs} ms`);
}

describe('mcp-edge legacy HTTP+SSE with server-everything over stdio', () => {
  gwTest('initialize, tools/list and echo', async (t) => {
    const { client, transport, errors } = await connect(t);
    assert.match(sessionOf(transport), SESSION_ID_RE);
    const server = client.getServerVersion();
    assert.equal(server.name, 'mcp-servers/everything');

    const { tools } = await client.listTools({}, CALL);
    const names = tools.map((x) => x.name);
    for (const name of ['echo', 'get-sum', 'trigger-long-running-operation']) {
      assert.ok(names.includes(name), `tools/list lacks ${name}: ${names}`);
    }
    const echo = await client.callTool({ name: 'echo', arguments: { message: 'legacy hello' } }, undefined, CALL);
    assert.equal(textOf(echo), 'Echo: legacy hello');
    assert.deepEqual(errors.map(String), []);
  });

  gwTest('tool call with progress notifications', async (t) => {
    const { client, errors } = await connect(t);
    const progress = [];
    const result = await client.callTool(
      { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 4 } },
      undefined,
      { ...CALL, onprogress: (p) => progress.push(p) },
    );
    assert.equal(textOf(result), 'Long running operation completed. Duration: 1 seconds, Steps: 4.');
    assert.deepEqual(
      progress.map((p) => [p.progress, p.total]),
      [
        [1, 4],
        [2, 4],
        [3, 4],
        [4, 4],
      ],
    );
    assert.deepEqual(errors.map(String), []);
  });

  gwTest('sampling round trip: a server request on the stream, its answer by POST', async (t) => {
    const reply = { model: 'stub', role: 'assistant', content: { type: 'text', text: 'legacy 42' } };
    const seen = [];
    const { client, errors } = await connect(t, {
      capabilities: { sampling: {} },
      setup: (c) =>
        c.setRequestHandler(CreateMessageRequestSchema, async (req) => {
          seen.push(req.params);
          return reply;
        }),
    });
    const result = await client.callTool(
      { name: 'trigger-sampling-request', arguments: { prompt: 'What is 6 × 7?', maxTokens: 9 } },
      undefined,
      CALL,
    );
    assert.equal(seen.length, 1, 'the sampling handler ran once');
    assert.equal(seen[0].maxTokens, 9);
    const text = textOf(result);
    const prefix = 'LLM sampling result: \n';
    assert.ok(text.startsWith(prefix), text);
    assert.deepEqual(JSON.parse(text.slice(prefix.length)), reply);
    assert.deepEqual(errors.map(String), []);
  });

  gwTest('closing the client ends its session; its endpoint then answers 404', async (t) => {
    const { client, transport } = await connect(t);
    const id = sessionOf(transport);
    const endpoint = new URL(transport._endpoint);
    await client.close();
    const ended = await logged(
      (r) => r.message === 'The session ended.' && r.span?.['session.id'] === id,
      `the end of session ${id}`,
    );
    assert.equal(ended.reason, 'the client closed its connection');
    const resp = await fetch(endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
    });
    assert.equal(resp.status, 404);
    const body = await resp.json();
    assert.equal(body.error.code, -32001);
  });
});
