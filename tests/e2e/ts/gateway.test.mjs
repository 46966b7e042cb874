// End-to-end: the real TypeScript MCP SDK client (Streamable HTTP) → mcp-edge → the real
// @modelcontextprotocol/server-everything as the gateway's stdio child (one per session).
//
// Run: cd tests/e2e && node --test ts/*.test.mjs
// Env: EDGE_TEST_BIN (gateway binary), E2E_ECHO_GATEWAY_LOGS=1 (copy gateway stderr live).

import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

import { logsOnFailure, startGateway, withTimeout } from '../lib/gateway.mjs';

/** Bound for single requests; server-everything answers everything used here in ≤ 3 s. */
const REQUEST_TIMEOUT_MS = 15_000;
const CALL = { timeout: REQUEST_TIMEOUT_MS };

let gw;
/** Per test: the `onerror` reports of every client it connected. */
let clientErrors = [];

before(async () => {
  gw = await startGateway();
});

after(async () => {
  if (!gw) return;
  const exit = await gw.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, `mcp-edge did not exit 0 after SIGTERM\n${gw.dumpLogs()}`);
});

/**
 * A test that prints the gateway's log lines written during it when it fails.
 */
function gwTest(name, fn) {
  logsOnFailure(() => gw, name, async (t) => {
    clientErrors = [];
    await fn(t);
    // Transport/protocol errors the SDK reported while the test ran (before its cleanup).
    assert.deepEqual(clientErrors.flat().map(String), [], 'the SDK client reported errors');
  });
}

/** Collects values and lets a test wait (bounded) for one that matches. */
class Inbox {
  items = [];
  #waiters = [];

  push(item) {
    this.items.push(item);
    for (const w of [...this.#waiters]) {
      if (w.pred(item)) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(item);
      }
    }
  }

  /** Resolves with the first item (already here or still to come) matching `pred`. */
  waitFor(pred, timeoutMs, what) {
    const found = this.items.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(this.items)}`));
      }, timeoutMs);
      this.#waiters.push(w);
    });
  }

  /** Resolves (with the matching items) once `n` items match `pred`. */
  async waitForCount(pred, n, timeoutMs, what) {
    await this.waitFor(() => this.items.filter(pred).length >= n, timeoutMs, `${n} × ${what}`);
    return this.items.filter(pred);
  }
}

/**
 * A fresh SDK client connected through the gateway; its session is deleted and the client
 * closed when the test ends. `setup(client)` runs before connecting (handlers, notifications).
 */
async function connect(t, { capabilities = {}, setup } = {}) {
  const client = new Client({ name: 'mcp-edge-e2e', version: '1.0.0' }, { capabilities });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  clientErrors.push(errors);
  setup?.(client);
  const transport = new StreamableHTTPClientTransport(gw.url);
  await client.connect(transport, CALL);
  t.after(async () => {
    await transport.terminateSession().catch(() => {});
    await client.close();
  });
  return { client, transport, errors };
}

/** The text blocks of a (successful) tool result, joined by newlines. */
function textOf(result) {
  assert.ok(!result.isError, `tool returned an error: ${JSON.stringify(result)}`);
  const texts = result.content.filter((c) => c.type === 'text').map((c) => c.text);
  assert.ok(texts.length >= 1, `no text content in ${JSON.stringify(result)}`);
  return texts.join('\n');
}

describe(`mcp-edge with server-everything over ${process.env.E2E_BACKEND || 'stdio'}`, () => {
  gwTest('initialize and tools/list', async (t) => {
    const { client, transport } = await connect(t);

    assert.match(transport.sessionId ?? '', /^[!-~]+\.[0-9a-f]{32}$/, 'session id is <instance>.<hex>');
    assert.equal(typeof transport.protocolVersion, 'string');
    const server = client.getServerVersion();
    assert.equal(server.name, 'mcp-servers/everything');
    assert.equal(server.version, '2.0.0');
    assert.equal(client.getServerCapabilities().resources?.subscribe, true);
    assert.match(client.getInstructions() ?? '', /\S/, 'server instructions came through');

    const { tools } = await client.listTools({}, CALL);
    const names = tools.map((x) => x.name);
    for (const name of [
      'echo',
      'get-sum',
      'get-tiny-image',
      'toggle-simulated-logging',
      'toggle-subscriber-updates',
      'trigger-long-running-operation',
    ]) {
      assert.ok(names.includes(name), `tools/list lacks ${name}: ${names}`);
    }
    // Capability-gated tools are absent: the server saw this client's (empty) capabilities.
    for (const name of ['trigger-sampling-request', 'trigger-elicitation-request', 'get-roots-list']) {
      assert.ok(!names.includes(name), `tools/list has ${name} though the client lacks the capability`);
    }
    const echo = tools.find((x) => x.name === 'echo');
    assert.equal(echo.inputSchema.type, 'object');
    assert.ok('message' in echo.inputSchema.properties);

    const sum = await client.callTool({ name: 'get-sum', arguments: { a: 19, b: 23 } }, undefined, CALL);
    assert.equal(textOf(sum), 'The sum of 19 and 23 is 42.');
  });

  gwTest('tool call with progress notifications', async (t) => {
    const { client } = await connect(t);
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
  });

  gwTest('sampling round trip (server → client request during a tool call)', async (t) => {
    const seen = [];
    const reply = {
      model: 'e2e-stub-model',
      role: 'assistant',
      content: { type: 'text', text: 'stub completion 7f3a' },
      stopReason: 'endTurn',
    };
    const { client } = await connect(t, {
      capabilities: { sampling: {} },
      setup: (c) =>
        c.setRequestHandler(CreateMessageRequestSchema, async (req) => {
          seen.push(req.params);
          return reply;
        }),
    });
    const result = await client.callTool(
      { name: 'trigger-sampling-request', arguments: { prompt: 'What is 6 × 7?', maxTokens: 33 } },
      undefined,
      CALL,
    );
    assert.equal(seen.length, 1, 'the sampling handler ran once');
    assert.equal(seen[0].maxTokens, 33);
    assert.equal(seen[0].systemPrompt, 'You are a helpful test server.');
    assert.deepEqual(seen[0].messages, [
      { role: 'user', content: { type: 'text', text: 'Resource trigger-sampling-request context: What is 6 × 7?' } },
    ]);
    const text = textOf(result);
    const prefix = 'LLM sampling result: \n';
    assert.ok(text.startsWith(prefix), text);
    assert.deepEqual(JSON.parse(text.slice(prefix.length)), reply);
  });

  gwTest('elicitation round trip', async (t) => {
    const seen = [];
    const answer = { name: 'Ada Lovelace', check: true, integer: 7, email: 'ada@example.org' };
    const { client } = await connect(t, {
      capabilities: { elicitation: {} },
      setup: (c) =>
        c.setRequestHandler(ElicitRequestSchema, async (req) => {
          seen.push(req.params);
          return { action: 'accept', content: answer };
        }),
    });
    const result = await client.callTool({ name: 'trigger-elicitation-request', arguments: {} }, undefined, CALL);
    assert.equal(seen.length, 1, 'the elicitation handler ran once');
    assert.equal(seen[0].message, 'Please provide inputs for the following fields:');
    assert.deepEqual(seen[0].requestedSchema.required, ['name']);
    const text = textOf(result);
    assert.match(text, /User provided the requested information!/);
    assert.match(text, /- Name: Ada Lovelace/);
    assert.match(text, /- Agreed to terms: true/);
    assert.match(text, /- Email: ada@example\.org/);
    assert.match(text, /- Favorite Integer: 7/);
    const raw = JSON.parse(text.slice(text.indexOf('Raw result: ') + 'Raw result: '.length));
    assert.deepEqual(raw, { action: 'accept', content: answer });
  });

  gwTest('roots: the server lists the client roots, again after roots/list_changed', async (t) => {
    let roots = [
      { uri: 'file:///tmp/e2e-root-alpha', name: 'Alpha' },
      { uri: 'file:///tmp/e2e-root-beta', name: 'Beta' },
    ];
    let rootsRequests = 0;
    const logs = new Inbox();
    const { client } = await connect(t, {
      capabilities: { roots: { listChanged: true } },
      setup: (c) => {
        c.setRequestHandler(ListRootsRequestSchema, async () => {
          rootsRequests += 1;
          return { roots };
        });
        c.setNotificationHandler(LoggingMessageNotificationSchema, (n) => logs.push(n.params));
      },
    });

    // server-everything asks for roots on its own ~350 ms after `initialized` (no request in
    // flight, so this goes over the standalone GET stream) and logs what it received.
    await logs.waitFor(
      (p) => p.data === 'Roots updated: 2 root(s) received from client',
      10_000,
      'the server to log that it received 2 roots',
    );
    assert.ok(rootsRequests >= 1);
    let text = textOf(await client.callTool({ name: 'get-roots-list', arguments: {} }, undefined, CALL));
    assert.match(text, /^Current MCP Roots \(2 total\):/);
    assert.match(text, /1\. Alpha\n {3}URI: file:\/\/\/tmp\/e2e-root-alpha/);
    assert.match(text, /2\. Beta\n {3}URI: file:\/\/\/tmp\/e2e-root-beta/);

    roots = [...roots, { uri: 'file:///tmp/e2e-root-gamma', name: 'Gamma' }];
    const before = rootsRequests;
    await client.sendRootsListChanged();
    await logs.waitFor(
      (p) => p.data === 'Roots updated: 3 root(s) received from client',
      10_000,
      'the server to log that it received 3 roots after roots/list_changed',
    );
    assert.ok(rootsRequests > before, 'the server asked for roots again');
    text = textOf(await client.callTool({ name: 'get-roots-list', arguments: {} }, undefined, CALL));
    assert.match(text, /^Current MCP Roots \(3 total\):/);
    assert.match(text, /3\. Gamma\n {3}URI: file:\/\/\/tmp\/e2e-root-gamma/);
  });

  gwTest('resource subscribe, then notifications/resources/updated', async (t) => {
    const updates = new Inbox();
    const { client } = await connect(t, {
      setup: (c) => c.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => updates.push(n.params.uri)),
    });
    const { resources } = await client.listResources({}, CALL);
    const doc = resources.find((r) => r.uri.startsWith('demo://resource/static/document/'));
    assert.ok(doc, `no static document resource in ${JSON.stringify(resources.map((r) => r.uri))}`);

    assert.deepEqual(await client.subscribeResource({ uri: doc.uri }, CALL), {});
    // Updates for subscribed resources: one at once, then one every 5 s (no request in flight
    // then, so those come over the standalone GET stream).
    const started = textOf(await client.callTool({ name: 'toggle-subscriber-updates', arguments: {} }, undefined, CALL));
    assert.match(started, /^Started simulated resource updated notifications/);
    await updates.waitFor((u) => u === doc.uri, 5_000, `an update for ${doc.uri}`);
    await updates.waitForCount((u) => u === doc.uri, 2, 9_000, `a periodic update for ${doc.uri}`);
    assert.ok(
      updates.items.every((u) => u === doc.uri),
      `updates only for the subscribed resource: ${updates.items}`,
    );
  });

  gwTest('logging: setLevel filters, notifications/message arrive', async (t) => {
    const logs = new Inbox();
    const { client } = await connect(t, {
      setup: (c) => c.setNotificationHandler(LoggingMessageNotificationSchema, (n) => logs.push(n.params)),
    });
    const { resources } = await client.listResources({}, CALL);
    const [a, b] = resources.filter((r) => r.uri.startsWith('demo://resource/static/document/'));
    assert.ok(a && b, 'two static documents to subscribe to');

    // The subscribe handler logs at "info" before it answers, on the same stream.
    await client.setLoggingLevel('warning', CALL);
    await client.subscribeResource({ uri: a.uri }, CALL);
    await client.setLoggingLevel('info', CALL);
    await client.subscribeResource({ uri: b.uri }, CALL);
    const got = await logs.waitFor(
      (p) => typeof p.data === 'string' && p.data.includes(b.uri),
      5_000,
      `an info log about subscribing to ${b.uri}`,
    );
    assert.equal(got.level, 'info');
    // Served over HTTP, server-everything appends " from session <its id>".
    assert.ok(
      got.data.trim().startsWith(`Received Subscribe Resource request for URI: ${b.uri}`),
      got.data,
    );
    assert.ok(
      !logs.items.some((p) => String(p.data).includes(a.uri)),
      `an info log was sent while the level was "warning": ${JSON.stringify(logs.items)}`,
    );

    // toggle-simulated-logging sends one random-level message at once.
    await client.setLoggingLevel('debug', CALL);
    const started = textOf(await client.callTool({ name: 'toggle-simulated-logging', arguments: {} }, undefined, CALL));
    assert.match(started, /^Started simulated, random-leveled logging/);
    const sim = await logs.waitFor(
      (p) => /^\w+(-level message| level-message)/.test(String(p.data)),
      5_000,
      'a simulated log message',
    );
    assert.ok(
      ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'].includes(sim.level),
      sim.level,
    );
    textOf(await client.callTool({ name: 'toggle-simulated-logging', arguments: {} }, undefined, CALL));
  });

  gwTest('cancellation: abort a long call, the session keeps working', async (t) => {
    const { client } = await connect(t);
    const ac = new AbortController();
    let firstProgress;
    const progressed = new Promise((resolve) => (firstProgress = resolve));
    const call = client.callTool(
      { name: 'trigger-long-running-operation', arguments: { duration: 3, steps: 3 } },
      undefined,
      { ...CALL, signal: ac.signal, onprogress: firstProgress },
    );
    call.catch(() => {}); // observed below
    // Abort once the server is provably running it (first progress after ~1 s).
    await withTimeout(
      Promise.race([
        progressed,
        call.then(
          () => assert.fail('the call completed before it was aborted'),
          (e) => assert.fail(`the call failed before it was aborted: ${e}`),
        ),
      ]),
      10_000,
      'the first progress notification',
    );
    const abortedAt = performance.now();
    ac.abort('e2e-abort');
    await assert.rejects(call, (e) => {
      assert.match(String(e.message), /e2e-abort/);
      return true;
    });
    assert.ok(performance.now() - abortedAt < 1_000, 'the abort error came at once');

    const echo = await client.callTool({ name: 'echo', arguments: { message: 'still alive' } }, undefined, CALL);
    assert.equal(textOf(echo), 'Echo: still alive');
    const sum = await client.callTool({ name: 'get-sum', arguments: { a: 1, b: 2 } }, undefined, CALL);
    assert.equal(textOf(sum), 'The sum of 1 and 2 is 3.');
  });

  gwTest('a 1,000,000-character argument is echoed whole', async (t) => {
    const { client } = await connect(t);
    // Varied content, including multi-byte UTF-8 characters, exactly 1,000,000 UTF-16 units.
    const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 é✓"\\\n{}';
    let x = 0x2545f491;
    const chars = new Array(1_000_000);
    for (let i = 0; i < chars.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      chars[i] = alphabet[(x >>> 0) % alphabet.length];
    }
    const message = chars.join('');
    assert.equal(message.length, 1_000_000);
    const result = await client.callTool({ name: 'echo', arguments: { message } }, undefined, CALL);
    const text = textOf(result);
    assert.equal(text.length, 'Echo: '.length + 1_000_000);
    assert.ok(text === `Echo: ${message}`, 'the echoed text equals the message');
  });

  gwTest('20 concurrent calls on one session, each answered with its own result', async (t) => {
    const { client } = await connect(t);
    const inputs = Array.from({ length: 20 }, (_, i) => ({ i, msg: `call-${i}-${Math.random().toString(36).slice(2)}` }));
    const results = await Promise.all(
      inputs.map(({ i, msg }) =>
        i % 2 === 0
          ? client.callTool({ name: 'echo', arguments: { message: msg } }, undefined, CALL)
          : client.callTool({ name: 'get-sum', arguments: { a: i, b: 1000 } }, undefined, CALL),
      ),
    );
    assert.equal(results.length, 20);
    results.forEach((r, i) => {
      const expected = i % 2 === 0 ? `Echo: ${inputs[i].msg}` : `The sum of ${i} and 1000 is ${i + 1000}.`;
      assert.equal(textOf(r), expected, `result #${i}`);
    });
  });

  gwTest('DELETE ends the session; its id then gets 404', async (t) => {
    const { client, transport } = await connect(t);
    const echo = await client.callTool({ name: 'echo', arguments: { message: 'before delete' } }, undefined, CALL);
    assert.equal(textOf(echo), 'Echo: before delete');
    const sessionId = transport.sessionId;
    const version = transport.protocolVersion;
    assert.ok(sessionId && version);

    await transport.terminateSession();
    assert.equal(transport.sessionId, undefined);

    const res = await fetch(gw.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': version,
        'mcp-session-id': sessionId,
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: {} }),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    await res.body?.cancel();
    assert.equal(res.status, 404);
  });
});
