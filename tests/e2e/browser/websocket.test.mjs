// End-to-end: a real browser (headless Debian Chromium, driven by playwright-core) speaks MCP
// over WebSocket to mcp-edge, which fronts its built-in example server.
//
// The test serves a static page on 127.0.0.1:0; the page's own script opens
// `new WebSocket('ws://127.0.0.1:GWPORT/mcp', 'mcp')`, sends `initialize`,
// `notifications/initialized` and a `tools/call` of `echo`, and writes what it got into the DOM.
// The test reads the DOM and the WebSocket handshake as Chromium saw it (DevTools protocol).
// A second page, loaded from a non-loopback origin (a host name mapped to 127.0.0.1 inside the
// browser), checks that the same upgrade is refused with 403: the first one succeeds because
// its Origin is loopback.
//
// Run: cd tests/e2e && node --experimental-websocket --test browser/*.test.mjs
// Env: EDGE_TEST_BIN (gateway binary), CHROMIUM (browser, default /usr/bin/chromium; the test
//      skips when it is missing), E2E_ECHO_GATEWAY_LOGS=1 (copy gateway stderr live).
// Nothing is downloaded: playwright-core only drives the given executable.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

import { gatewayBin, shellQuote, startGateway } from '../lib/gateway.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const INSTANCE_ID = 'browser-e2e';
/** A host name the browser maps to 127.0.0.1: a page served under it has a non-loopback Origin. */
const FOREIGN_HOST = 'edge-e2e-foreign.test';
/** Bound of each browser-side wait (launch, navigation, the page finishing its exchange). */
const WAIT_MS = 15_000;

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  `--host-resolver-rules=MAP ${FOREIGN_HOST} 127.0.0.1`,
];

/** The page. `GW_PORT` and `MESSAGE` are filled in per request from the query string. */
function pageHtml(gwPort, message) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>mcp-edge WebSocket e2e</title></head>
<body>
<dl>
  <dt>state</dt><dd id="state">starting</dd>
  <dt>origin</dt><dd id="origin"></dd>
  <dt>protocol</dt><dd id="protocol"></dd>
  <dt>protocolVersion</dt><dd id="protocolVersion"></dd>
  <dt>sessionId</dt><dd id="sessionId"></dd>
  <dt>toolText</dt><dd id="toolText"></dd>
  <dt>error</dt><dd id="error"></dd>
  <dt>close</dt><dd id="close"></dd>
</dl>
<pre id="log"></pre>
<script>
(() => {
  const GW_PORT = ${JSON.stringify(String(gwPort))};
  const MESSAGE = ${JSON.stringify(message).replaceAll('<', '\\u003c')};
  const $ = (id) => document.getElementById(id);
  const set = (id, v) => { $(id).textContent = String(v); };
  const log = (line) => { $('log').textContent += line + '\\n'; };
  const fail = (why) => { if ($('error').textContent === '') set('error', why); set('state', 'error'); };
  set('origin', location.origin);

  let ws;
  try {
    ws = new WebSocket('ws://127.0.0.1:' + GW_PORT + '/mcp', 'mcp');
  } catch (e) {
    fail('constructor threw: ' + e);
    return;
  }
  const send = (msg) => { const text = JSON.stringify(msg); log('> ' + text); ws.send(text); };

  ws.onopen = () => {
    set('protocol', ws.protocol);
    set('state', 'open');
    send({ jsonrpc: '2.0', id: 1, method: 'initialize', params: {
      protocolVersion: '2025-11-25',
      capabilities: {},
      clientInfo: { name: 'mcp-edge-browser-e2e', version: '0.0.0' },
    } });
  };
  ws.onmessage = (ev) => {
    log('< ' + ev.data);
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { fail('not JSON: ' + ev.data); return; }
    if (msg.error) { fail('JSON-RPC error on id ' + msg.id + ': ' + JSON.stringify(msg.error)); return; }
    if (msg.id === 1) {
      const meta = (msg.result && msg.result._meta) || {};
      set('sessionId', meta['mcp-edge/sessionId'] ?? '(missing)');
      set('protocolVersion', msg.result && msg.result.protocolVersion);
      set('state', 'initialized');
      send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      send({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { message: MESSAGE } } });
    } else if (msg.id === 2) {
      const content = (msg.result && msg.result.content) || [];
      set('toolText', content.filter((c) => c.type === 'text').map((c) => c.text).join(''));
      if (msg.result && msg.result.isError) { fail('tool error: ' + JSON.stringify(msg.result)); return; }
      set('state', 'done');
      ws.close(1000, 'done');
    }
  };
  ws.onerror = () => fail('error event (readyState ' + ws.readyState + ')');
  ws.onclose = (ev) => {
    set('close', ev.code + (ev.reason ? ' ' + ev.reason : '') + (ev.wasClean ? ' clean' : ' unclean'));
    if ($('state').textContent !== 'done') fail($('error').textContent || 'closed before done');
  };
})();
</script>
</body></html>
`;
}

/** Serves the page on 127.0.0.1:0; resolves to { server, port, requests }. */
async function startPageServer() {
  const requests = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://page.invalid');
    requests.push({ url: req.url, host: req.headers.host });
    if (url.pathname !== '/') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    const html = pageHtml(url.searchParams.get('gw') ?? '', url.searchParams.get('msg') ?? '');
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(html);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return { server, port: server.address().port, requests };
}

/** Everything the page shows, once it reached a final state (bounded by WAIT_MS). */
async function runPage(page, url) {
  await page.goto(url, { timeout: WAIT_MS, waitUntil: 'load' });
  await page.waitForFunction(
    () => ['done', 'error'].includes(document.getElementById('state')?.textContent),
    undefined,
    { timeout: WAIT_MS },
  );
  // The close event follows the final state; give it a moment (bounded) so it is reported.
  await page
    .waitForFunction(() => document.getElementById('close')?.textContent !== '', undefined, { timeout: 3_000 })
    .catch(() => {});
  return page.evaluate(() => {
    const shown = {};
    for (const dd of document.querySelectorAll('dd')) shown[dd.id] = dd.textContent;
    shown.log = document.getElementById('log').textContent;
    return shown;
  });
}

/** Records the WebSocket handshakes of `page` as Chromium reports them (DevTools Network). */
async function recordHandshakes(context, page) {
  const cdp = await context.newCDPSession(page);
  const byId = new Map();
  const entry = (requestId) => {
    if (!byId.has(requestId)) byId.set(requestId, { requestId });
    return byId.get(requestId);
  };
  cdp.on('Network.webSocketCreated', (e) => (entry(e.requestId).url = e.url));
  cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => (entry(e.requestId).requestHeaders = e.request.headers));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const h = entry(e.requestId);
    h.status = e.response.status;
    h.responseHeaders = e.response.headers;
    if (e.response.requestHeaders) h.rawRequestHeaders = e.response.requestHeaders;
  });
  cdp.on('Network.webSocketFrameError', (e) => (entry(e.requestId).frameError = e.errorMessage));
  await cdp.send('Network.enable');
  return { all: () => [...byId.values()], detach: () => cdp.detach().catch(() => {}) };
}

/** A header's value from a CDP header object, case-insensitively. */
function header(headers, name) {
  if (!headers) return undefined;
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name.toLowerCase());
  return key === undefined ? undefined : headers[key];
}

test('headless Chromium speaks MCP over WebSocket to mcp-edge', { timeout: 60_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.skip(`no Chromium at ${CHROMIUM} (install Debian's chromium package or set CHROMIUM)`);
    return;
  }
  const { chromium } = await import('playwright-core');

  let gw;
  let pages;
  let context;
  let profileDir;
  try {
    // The built-in example server (what `mcp-edge run` serves without a config), in quick mode.
    gw = await startGateway({
      stdio: `${shellQuote(gatewayBin())} example-server`,
      extraArgs: ['--instance-id', INSTANCE_ID, '--log-level', 'mcp_edge=debug,info'],
    });
    pages = await startPageServer();

    profileDir = await mkdtemp(join(tmpdir(), 'mcp-edge-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: WAIT_MS,
      env: { ...process.env, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: '1' },
    });
    const version = context.browser()?.version() ?? '(unknown)';

    // 1. From a loopback origin: the upgrade succeeds and the whole MCP exchange runs.
    await t.test('loopback origin: initialize + tools/call echo', async () => {
      const page = context.pages()[0] ?? (await context.newPage());
      const hs = await recordHandshakes(context, page);
      const message = `hello from Chromium ✓ ${randomBytes(6).toString('hex')}`;
      const pageOrigin = `http://127.0.0.1:${pages.port}`;
      const url = `${pageOrigin}/?gw=${gw.port}&msg=${encodeURIComponent(message)}`;
      let shown;
      try {
        shown = await runPage(page, url);
      } catch (err) {
        err.message += `\nbrowser ${version}; page log:\n${await page.locator('#log').textContent().catch(() => '?')}\n${gw.dumpLogs()}`;
        throw err;
      }
      const handshakes = hs.all();
      await hs.detach();
      await page.close();
      const why = `page showed ${JSON.stringify(shown, null, 2)}\nhandshakes ${JSON.stringify(handshakes, null, 2)}\n${gw.dumpLogs()}`;

      assert.equal(shown.error, '', why);
      assert.equal(shown.state, 'done', why);
      assert.equal(shown.origin, pageOrigin, why);
      assert.equal(shown.protocol, 'mcp', why);
      assert.equal(shown.protocolVersion, '2025-11-25', why);
      assert.match(shown.sessionId, new RegExp(`^${INSTANCE_ID}\\.[0-9a-f]{32}$`), why);
      assert.equal(shown.toolText, message, why);
      assert.match(shown.close, /^1000\b.*\bclean$/, why);

      // The handshake as the browser saw it: it sent the page's (loopback) origin and got 101 + mcp.
      const ws = handshakes.filter((h) => h.url === `ws://127.0.0.1:${gw.port}/mcp`);
      assert.equal(ws.length, 1, why);
      assert.equal(header(ws[0].requestHeaders, 'Origin'), pageOrigin, why);
      assert.match(header(ws[0].requestHeaders, 'Sec-WebSocket-Protocol') ?? '', /^mcp$/, why);
      assert.equal(ws[0].status, 101, why);
      assert.equal(header(ws[0].responseHeaders, 'Sec-WebSocket-Protocol'), 'mcp', why);
      // Nothing was refused for this origin.
      assert.ok(!gw.logs.some((l) => l.includes('origin_forbidden')), why);
      t.diagnostic(`loopback: Origin ${pageOrigin} → 101 ${shown.protocol}, session ${shown.sessionId}, close ${shown.close}`);
    });

    // 2. The same page from a non-loopback origin: 403 before the upgrade, so the browser fails
    // the connection (1006) and never gets to MCP. This is what makes case 1 an Origin check.
    await t.test('non-loopback origin: upgrade refused with 403', async () => {
      const page = await context.newPage();
      const hs = await recordHandshakes(context, page);
      const pageOrigin = `http://${FOREIGN_HOST}:${pages.port}`;
      const url = `${pageOrigin}/?gw=${gw.port}&msg=unused`;
      const from = gw.logs.length;
      const shown = await runPage(page, url);
      const handshakes = hs.all();
      await hs.detach();
      await page.close();
      const why = `page showed ${JSON.stringify(shown, null, 2)}\nhandshakes ${JSON.stringify(handshakes, null, 2)}\n${gw.dumpLogs()}`;

      assert.equal(shown.origin, pageOrigin, why);
      assert.equal(shown.state, 'error', why);
      assert.equal(shown.protocol, '', why);
      assert.equal(shown.sessionId, '', why);
      assert.match(shown.close, /^1006\b/, why);
      // The gateway refused exactly this Origin (logged at debug as origin_forbidden).
      const refused = gw.logs
        .slice(from)
        .filter((l) => l.includes('origin_forbidden') && l.includes(`Origin \`${pageOrigin}\``));
      assert.equal(refused.length, 1, why);
      const status = handshakes.map((h) => h.status ?? h.frameError ?? '?').join(', ');
      t.diagnostic(`foreign: Origin ${pageOrigin} → ${status}, close ${shown.close}, error ${shown.error}`);
    });

    t.diagnostic(`browser ${version} (${CHROMIUM}), gateway ${gw.listen}, page 127.0.0.1:${pages.port}`);
  } finally {
    if (context) await context.close().catch(() => {});
    if (pages) {
      const closed = new Promise((resolve) => pages.server.close(resolve));
      pages.server.closeAllConnections();
      await closed;
    }
    if (profileDir) await rm(profileDir, { recursive: true, force: true });
    if (gw) {
      const exit = await gw.stop({ timeoutMs: 10_000 });
      assert.deepEqual(exit, { code: 0, signal: null }, `mcp-edge did not exit 0 after SIGTERM\n${gw.dumpLogs()}`);
    }
  }
});
