// End-to-end: the real TypeScript MCP SDK client through mcp-edge with TLS termination
// (`server.tls`, https:// and wss://) and with route authentication (`auth`: static API keys
// and JWTs, bearer tokens in `Authorization` or in the WebSocket subprotocol `mcp.auth.<token>`),
// in front of the built-in example server (`{self} example-server`, one child per session).
//
// A throwaway CA, the server certificate (127.0.0.1 and localhost) and a P-256 JWT signing key
// are made with the `openssl` CLI in a temporary directory; JWTs are signed here with
// node:crypto. Node trusts extra CAs only from NODE_EXTRA_CA_CERTS at its start, so the SDK
// round trips over TLS run in a child Node (lib/sdk_client.mjs) started with and without it.
//
// Run: cd tests/e2e && node --experimental-websocket --test ts/tls_auth.test.mjs
// Env: EDGE_TEST_BIN (gateway binary), E2E_ECHO_GATEWAY_LOGS=1 (copy gateway stderr live).

import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
} from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect as tlsConnect } from 'node:tls';

import { E2E_DIR, freePort, logsOnFailure, startGateway, tomlString, withTimeout, writeConfig } from '../lib/gateway.mjs';
import { roundTrip, wsTransportWithToken } from '../lib/sdk_client.mjs';

if (typeof globalThis.WebSocket !== 'function') {
  throw new Error(
    'no global WebSocket in this Node.js; run: node --experimental-websocket --test ts/tls_auth.test.mjs',
  );
}

const CLIENT_SCRIPT = resolve(E2E_DIR, 'lib/sdk_client.mjs');
/** Bound for one request or one WebSocket exchange. */
const STEP_MS = 15_000;
/** Bound for one SDK round trip in a child Node (start-up included). */
const CHILD_MS = 30_000;
const PROTOCOL_VERSION = '2025-06-18';
const SESSION_ID_RE = /^[!-~]+\.[0-9a-f]{32}$/;
/** OpenSSL's verification errors for a certificate whose issuer the client does not know. */
const UNKNOWN_ISSUER = /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)$/;
/** The example server's tools that the round trips must see. */
const EXAMPLE_TOOLS = ['echo'];

// ---------------------------------------------------------------------------------------------
// Shared pieces

/** Runs the openssl CLI; fails with its stderr. */
function openssl(args, cwd) {
  try {
    return execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  } catch (err) {
    throw new Error(`openssl ${args.join(' ')} failed: ${err.stderr?.toString() || err.message}`);
  }
}

/** Fails with a clear message when the openssl CLI is missing. */
function requireOpenssl() {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore', timeout: 10_000 });
  } catch (err) {
    throw new Error(
      `the openssl CLI is needed to make the test CA, certificate and JWT key (${err.code ?? err.message}); install openssl`,
    );
  }
}

/**
 * A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost, in `dir`.
 * Returns { caCert, cert, key } (paths).
 */
function makePki(dir) {
  const caKey = join(dir, 'ca.key');
  const caCert = join(dir, 'ca.pem');
  const key = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const cert = join(dir, 'server.pem');
  const ext = join(dir, 'server.ext');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', caKey, '-out', caCert, '-days', '2',
    '-subj', '/CN=mcp-edge e2e throwaway CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  openssl(['req', ...ec, '-keyout', key, '-out', csr, '-subj', '/CN=127.0.0.1']);
  writeFileSync(ext, [
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    '',
  ].join('\n'));
  openssl(['x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey,
    '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '2', '-sha256',
    '-extfile', ext, '-out', cert]);
  return { caCert, cert, key };
}

/** base64url of a string or buffer. */
const b64url = (data) => Buffer.from(data).toString('base64url');

/** A compact ES256 JWS of `claims`, signed with `key` (a KeyObject), naming key id `kid`. */
function signJwt(claims, key, kid) {
  const header = { alg: 'ES256', typ: 'JWT', kid };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(sig)}`;
}

/**
 * Starts the gateway with the configuration `tomlFor(port)` on a port chosen in advance (a
 * route's `public_url` names it), retrying on another port if that one was taken meanwhile.
 */
async function startOnKnownPort(tomlFor, env) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const config = writeConfig(tomlFor(port));
    try {
      const gw = await startGateway({ config, listen: `127.0.0.1:${port}`, env });
      gw.configDir = resolve(config, '..');
      return gw;
    } catch (err) {
      rmSync(resolve(config, '..'), { recursive: true, force: true });
      if (attempt >= 3 || !/address already in use/i.test(err.message)) throw err;
    }
  }
}

/** Stops a gateway started here and asserts a clean exit. */
async function stopGateway(gw) {
  if (!gw) return;
  const exit = await gw.stop();
  rmSync(gw.configDir, { recursive: true, force: true });
  assert.deepEqual(exit, { code: 0, signal: null }, `mcp-edge did not exit 0 after SIGTERM\n${gw.dumpLogs()}`);
}

/** A test that prints the gateway's log lines written during it when it fails. */
function gwTest(getGw, name, fn) {
  logsOnFailure(getGw, name, fn, { timeout: 90_000 });
}

/**
 * Runs lib/sdk_client.mjs in a child Node for `spec` ({ url, transport, token }), trusting the
 * CA file `ca` (NODE_EXTRA_CA_CERTS) or only the system's roots. Resolves to its report. The
 * child is killed (by its pid) if it overruns.
 */
async function sdkInChild(spec, { ca } = {}) {
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_TEST_CONTEXT;
  if (ca) env.NODE_EXTRA_CA_CERTS = ca;
  const flags = process.execArgv.filter((a) => a === '--experimental-websocket');
  const child = spawn(process.execPath, [...flags, CLIENT_SCRIPT, JSON.stringify(spec)], {
    cwd: E2E_DIR,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((res) => child.once('close', (code, signal) => res({ code, signal })));
  let exit;
  try {
    exit = await withTimeout(exited, CHILD_MS, `the SDK client process (${spec.transport} ${spec.url})`);
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    throw new Error(`${e.message}\nstdout: ${out}\nstderr: ${err}`);
  }
  const line = out.trim().split('\n').pop();
  assert.equal(exit.code, 0, `the SDK client process failed (${JSON.stringify(exit)})\nstdout: ${out}\nstderr: ${err}`);
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`the SDK client process printed no report\nstdout: ${out}\nstderr: ${err}`);
  }
}

/** Asserts a successful round trip report (from roundTrip or sdkInChild). */
function assertRoundTrip(report, what) {
  assert.equal(report.ok, true, `${what}: ${JSON.stringify(report)}`);
  assert.equal(report.serverName, 'mcp-edge-example', what);
  for (const tool of EXAMPLE_TOOLS) assert.ok(report.tools.includes(tool), `${what}: tools ${report.tools}`);
  assert.equal(report.echo, 'over tls', what);
}

/** The JSON-RPC messages of a response body, JSON or SSE. */
function messagesOf(contentType, text) {
  if ((contentType ?? '').startsWith('text/event-stream')) {
    return text
      .split(/\r?\n\r?\n/)
      .map((ev) => ev.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n'))
      .filter((d) => d)
      .map((d) => JSON.parse(d));
  }
  if (!text) return [];
  const v = JSON.parse(text);
  return Array.isArray(v) ? v : [v];
}

/** A raw Streamable HTTP request: { status, headers, messages, text }. */
async function rawHttp(url, { method = 'POST', token, sessionId, body, accept } = {}) {
  const headers = {
    Accept: accept ?? 'application/json, text/event-stream',
  };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  if (sessionId) {
    headers['Mcp-Session-Id'] = sessionId;
    headers['MCP-Protocol-Version'] = PROTOCOL_VERSION;
  }
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), STEP_MS);
  try {
    const res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: ac.signal,
    });
    // A GET stream that opened would not end: read a body only when it is not a stream.
    const streaming = (res.headers.get('content-type') ?? '').startsWith('text/event-stream') && method === 'GET';
    const text = streaming ? '' : await res.text();
    if (streaming) await res.body?.cancel();
    const messages = res.status < 300 && !streaming ? messagesOf(res.headers.get('content-type'), text) : [];
    return { status: res.status, headers: res.headers, text, messages };
  } finally {
    clearTimeout(timer);
  }
}

const initializeRequest = (id = 1) => ({
  jsonrpc: '2.0',
  id,
  method: 'initialize',
  params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'raw-e2e', version: '0' } },
});

/** initialize + notifications/initialized over raw HTTP; resolves to the session id. */
async function rawInitialize(url, token) {
  const init = await rawHttp(url, { token, body: initializeRequest() });
  assert.equal(init.status, 200, `initialize: ${init.status} ${init.text}`);
  const sessionId = init.headers.get('mcp-session-id');
  assert.match(sessionId ?? '', SESSION_ID_RE);
  assert.equal(init.messages.find((m) => m.id === 1)?.result?.serverInfo?.name, 'mcp-edge-example');
  const note = await rawHttp(url, { token, sessionId, body: { jsonrpc: '2.0', method: 'notifications/initialized' } });
  assert.equal(note.status, 202, `notifications/initialized: ${note.status} ${note.text}`);
  return sessionId;
}

/** tools/list over raw HTTP in a session: { status, names }. */
async function rawToolsList(url, token, sessionId, id = 2) {
  const r = await rawHttp(url, { token, sessionId, body: { jsonrpc: '2.0', id, method: 'tools/list' } });
  const names = r.messages.find((m) => m.id === id)?.result?.tools?.map((t) => t.name);
  return { status: r.status, names, text: r.text };
}

/** The parameters of a `WWW-Authenticate: Bearer k="v", …` challenge. */
function bearerParams(header) {
  assert.match(header ?? '', /^Bearer\s/, `WWW-Authenticate: ${header}`);
  return Object.fromEntries([...header.matchAll(/([a-z_]+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
}

/**
 * Opens a WebSocket (the global one) offering `protocols`: resolves to { opened: true, ws,
 * protocol } on open, or { opened: false, error } when it errors or closes first.
 */
function openWebSocket(url, protocols) {
  return withTimeout(
    new Promise((res) => {
      const ws = new WebSocket(url, protocols);
      ws.onopen = () => res({ opened: true, ws, protocol: ws.protocol });
      // A refused handshake fires `error` (Node 20's WebSocket then never fires `close`).
      ws.onerror = (ev) => res({ opened: false, error: String(ev?.error?.message ?? ev?.message ?? 'error') });
      ws.onclose = (ev) => res({ opened: false, error: `closed (${ev.code})` });
    }),
    STEP_MS,
    `the WebSocket to ${url} to open or fail`,
  );
}

/** Sends a JSON-RPC request on an open WebSocket and resolves to its response. */
function wsCall(ws, msg) {
  return withTimeout(
    new Promise((res, rej) => {
      const onMessage = (ev) => {
        const m = JSON.parse(ev.data);
        if (m.id === msg.id) {
          ws.removeEventListener('message', onMessage);
          res(m);
        }
      };
      ws.addEventListener('message', onMessage);
      ws.addEventListener('close', () => rej(new Error(`the WebSocket closed before the answer to ${msg.method}`)));
      ws.send(JSON.stringify(msg));
    }),
    STEP_MS,
    `the answer to ${msg.method} over WebSocket`,
  );
}

/** Closes a WebSocket and waits for its close event. */
function closeWebSocket(ws) {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve();
  return withTimeout(
    new Promise((res) => {
      ws.addEventListener('close', () => res());
      ws.close();
    }),
    STEP_MS,
    'the WebSocket to close',
  );
}

/**
 * A raw WebSocket upgrade request (node:http or node:https with `ca`): resolves to
 * { status, headers } — 101 and its headers, or the refusal's status and headers.
 */
function rawUpgrade(url, { protocols, authorization, ca } = {}) {
  const u = new URL(url);
  const headers = {
    Connection: 'Upgrade',
    Upgrade: 'websocket',
    'Sec-WebSocket-Version': '13',
    'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
  };
  if (protocols) headers['Sec-WebSocket-Protocol'] = protocols.join(', ');
  if (authorization) headers.Authorization = authorization;
  const request = u.protocol === 'https:' || u.protocol === 'wss:' ? httpsRequest : httpRequest;
  return withTimeout(
    new Promise((res, rej) => {
      const req = request({ host: u.hostname, port: u.port, path: u.pathname, headers, ca, timeout: STEP_MS });
      req.on('upgrade', (resp, socket) => {
        socket.destroy();
        res({ status: resp.statusCode, headers: resp.headers });
      });
      req.on('response', (resp) => {
        resp.resume();
        res({ status: resp.statusCode, headers: resp.headers });
      });
      req.on('error', rej);
      req.end();
    }),
    STEP_MS,
    `the answer to a WebSocket upgrade of ${url}`,
  );
}

/** GET over node:https trusting `ca`: { status, headers, body }. */
function httpsGet(url, ca) {
  return withTimeout(
    new Promise((res, rej) => {
      const req = httpsRequest(url, { ca, timeout: STEP_MS }, (resp) => {
        let body = '';
        resp.setEncoding('utf8');
        resp.on('data', (d) => (body += d));
        resp.on('end', () => res({ status: resp.statusCode, headers: resp.headers, body }));
      });
      req.on('error', rej);
      req.end();
    }),
    STEP_MS,
    `GET ${url}`,
  );
}

/**
 * A TLS handshake with the gateway: resolves to { protocol, alpn, fingerprint } or rejects
 * with the handshake's error.
 */
function handshake(port, opts) {
  return withTimeout(
    new Promise((res, rej) => {
      const sock = tlsConnect({ host: '127.0.0.1', port, ...opts }, () => {
        const info = {
          protocol: sock.getProtocol(),
          alpn: sock.alpnProtocol,
          fingerprint: sock.getPeerX509Certificate()?.fingerprint256,
        };
        sock.destroy();
        res(info);
      });
      sock.once('error', (e) => {
        sock.destroy();
        rej(e);
      });
    }),
    STEP_MS,
    `a TLS handshake with 127.0.0.1:${port}`,
  );
}

/** Asserts that no gateway log line contains any of `secrets`. */
function assertNotLogged(gw, secrets) {
  for (const secret of secrets) {
    const line = gw.logs.find((l) => l.includes(secret));
    assert.equal(line, undefined, `the gateway logged a token: ${line}`);
  }
}

/** The `[backends.example]` of the shipped gateway.toml: the built-in example server. */
const EXAMPLE_BACKEND = `
[backends.example]
kind = "stdio"
command = "{self}"
args = ["example-server"]
`;

// Configurations share: no admin listener (its fixed default port would collide between files
// run in parallel).
const COMMON = `
[admin]
enabled = false
`;

requireOpenssl();
const workDir = mkdtempSync(join(tmpdir(), 'mcp-edge-e2e-tls-'));
after(() => rmSync(workDir, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// 1. TLS termination

describe('TLS termination (server.tls): https:// and wss:// with the TS SDK', () => {
  let gw;
  let pki;
  let httpsUrl;
  let wssUrl;
  let secureUrl;
  const apiKey = randomBytes(24).toString('hex');

  before(async () => {
    pki = makePki(workDir);
    const sha = createHash('sha256').update(apiKey).digest('hex');
    gw = await startOnKnownPort(
      (port) => `${COMMON}
[server]
tls = { cert_file = ${tomlString(pki.cert)}, key_file = ${tomlString(pki.key)} }

[[routes]]
path = "/mcp"
backend = "example"

[[routes]]
path = "/secure"
backend = "example"
public_url = "https://127.0.0.1:${port}/secure"
auth = { kind = "api_key", keys = [{ principal = "carol", sha256 = "${sha}" }] }
${EXAMPLE_BACKEND}`,
    );
    httpsUrl = `https://${gw.listen}/mcp`;
    wssUrl = `wss://${gw.listen}/mcp`;
    secureUrl = `https://${gw.listen}/secure`;
  });

  after(() => stopGateway(gw));
  const t = (name, fn) => gwTest(() => gw, name, fn);

  t('handshakes present the test certificate: TLS 1.3 and 1.2, ALPN h2 and http/1.1', async () => {
    const ca = readFileSync(pki.caCert);
    const expected = new X509Certificate(readFileSync(pki.cert)).fingerprint256;

    const h2 = await handshake(gw.port, { ca, ALPNProtocols: ['h2', 'http/1.1'] });
    assert.equal(h2.protocol, 'TLSv1.3');
    assert.equal(h2.alpn, 'h2');
    assert.equal(h2.fingerprint, expected, 'the gateway presented another certificate');

    const h1 = await handshake(gw.port, { ca, ALPNProtocols: ['http/1.1'] });
    assert.equal(h1.alpn, 'http/1.1');

    const tls12 = await handshake(gw.port, { ca, maxVersion: 'TLSv1.2', ALPNProtocols: ['http/1.1'] });
    assert.equal(tls12.protocol, 'TLSv1.2');
    assert.equal(tls12.fingerprint, expected);
  });

  t('a client that does not trust the test CA is refused at the handshake', async () => {
    // node:tls with the system's roots only.
    await assert.rejects(handshake(gw.port, { ALPNProtocols: ['http/1.1'] }), (err) => {
      assert.match(String(err.code), UNKNOWN_ISSUER, String(err));
      return true;
    });
    // The same SDK round trips that succeed below with NODE_EXTRA_CA_CERTS, without it.
    const http = await sdkInChild({ url: httpsUrl, transport: 'http' });
    assert.equal(http.ok, false, `the SDK reached the gateway without trusting its CA: ${JSON.stringify(http)}`);
    assert.equal(http.stage, 'connect');
    assert.match(String(http.causeCode), UNKNOWN_ISSUER, JSON.stringify(http));
    const ws = await sdkInChild({ url: wssUrl, transport: 'ws' });
    assert.equal(ws.ok, false, `the SDK reached the gateway without trusting its CA: ${JSON.stringify(ws)}`);
    assert.equal(ws.stage, 'connect');
  });

  t('plain HTTP on the TLS listener gets no HTTP answer', async () => {
    await assert.rejects(
      rawHttp(`http://${gw.listen}/mcp`, { body: initializeRequest() }),
      (err) => err instanceof TypeError || err.name === 'AbortError',
    );
  });

  t('TS SDK over https:// (StreamableHTTPClientTransport): initialize, tools/list, tools/call', async () => {
    const report = await sdkInChild({ url: httpsUrl, transport: 'http' }, { ca: pki.caCert });
    assertRoundTrip(report, 'SDK over https://');
  });

  t('TS SDK over wss:// (WebSocketClientTransport): initialize, tools/list, tools/call', async () => {
    const report = await sdkInChild({ url: wssUrl, transport: 'ws' }, { ca: pki.caCert });
    assertRoundTrip(report, 'SDK over wss://');
    assert.equal(report.wsProtocol, 'mcp');
  });

  t('an API-key route over TLS: the SDK with its key over https:// and wss://, 401 without', async () => {
    const https = await sdkInChild({ url: secureUrl, transport: 'http', token: apiKey }, { ca: pki.caCert });
    assertRoundTrip(https, 'SDK over https:// with Authorization');
    const wss = await sdkInChild(
      { url: `wss://${gw.listen}/secure`, transport: 'ws', token: apiKey },
      { ca: pki.caCert },
    );
    assertRoundTrip(wss, 'SDK over wss:// with mcp.auth.<key>');
    assert.equal(wss.wsProtocol, 'mcp');

    const anonymous = await sdkInChild({ url: secureUrl, transport: 'http' }, { ca: pki.caCert });
    assert.equal(anonymous.ok, false, JSON.stringify(anonymous));
    assert.equal(anonymous.code, 401, JSON.stringify(anonymous));

    // The metadata named by the challenge, over https on the gateway itself.
    const meta = await httpsGet(`https://${gw.listen}/.well-known/oauth-protected-resource/secure`, readFileSync(pki.caCert));
    assert.equal(meta.status, 200, meta.body);
    assert.equal(JSON.parse(meta.body).resource, secureUrl);
  });

  t('the API key never appears in the gateway log', () => {
    assertNotLogged(gw, [apiKey]);
  });
});

// ---------------------------------------------------------------------------------------------
// 2. API keys

describe('auth = api_key: bearer keys over HTTP and WebSocket, sessions bound to principals', () => {
  let gw;
  let url;
  let wsUrl;
  let publicUrl;
  const aliceKey = `alice-${randomBytes(24).toString('hex')}`;
  const bobKey = `bob-${randomBytes(24).toString('hex')}`;
  const wrongKey = `nobody-${randomBytes(24).toString('hex')}`;

  before(async () => {
    const aliceSha = createHash('sha256').update(aliceKey).digest('hex');
    gw = await startOnKnownPort(
      (port) => `${COMMON}
[[routes]]
path = "/mcp"
backend = "example"
public_url = "http://127.0.0.1:${port}/mcp"
auth = { kind = "api_key", keys = [{ principal = "alice", sha256 = "${aliceSha}" }, { principal = "bob", env = "BOB_KEY" }] }
${EXAMPLE_BACKEND}`,
      { ...process.env, BOB_KEY: bobKey },
    );
    url = `http://${gw.listen}/mcp`;
    wsUrl = `ws://${gw.listen}/mcp`;
    publicUrl = `http://127.0.0.1:${gw.port}/mcp`;
  });

  after(() => stopGateway(gw));
  const t = (name, fn) => gwTest(() => gw, name, fn);

  t('the SDK with Authorization: Bearer <key> (a sha256 key and an env key) works', async () => {
    assertRoundTrip(await roundTrip({ url, transport: 'http', token: aliceKey }), 'alice over HTTP');
    assertRoundTrip(await roundTrip({ url, transport: 'http', token: bobKey }), 'bob (env key) over HTTP');
  });

  t('no token: the SDK cannot connect; 401 names the metadata, which names public_url', async () => {
    const report = await roundTrip({ url, transport: 'http' });
    assert.equal(report.ok, false, JSON.stringify(report));
    assert.equal(report.stage, 'connect');
    assert.equal(report.code, 401, JSON.stringify(report));

    const r = await rawHttp(url, { body: initializeRequest() });
    assert.equal(r.status, 401, r.text);
    const challenge = r.headers.get('www-authenticate');
    const params = bearerParams(challenge);
    const metadataUrl = `http://127.0.0.1:${gw.port}/.well-known/oauth-protected-resource/mcp`;
    assert.equal(params.resource_metadata, metadataUrl, challenge);
    assert.equal(params.error, undefined, `no token is not an invalid token: ${challenge}`);

    const meta = await rawHttp(metadataUrl, { method: 'GET', accept: 'application/json' });
    assert.equal(meta.status, 200, meta.text);
    assert.match(meta.headers.get('content-type') ?? '', /^application\/json/);
    const doc = JSON.parse(meta.text);
    assert.equal(doc.resource, publicUrl);
    assert.ok(Array.isArray(doc.authorization_servers), meta.text);
    assert.deepEqual(doc.bearer_methods_supported, ['header']);
  });

  t('a wrong key: 401 invalid_token, and the SDK cannot connect', async () => {
    const r = await rawHttp(url, { token: wrongKey, body: initializeRequest() });
    assert.equal(r.status, 401, r.text);
    const params = bearerParams(r.headers.get('www-authenticate'));
    assert.equal(params.error, 'invalid_token');
    assert.equal(params.resource_metadata, `http://127.0.0.1:${gw.port}/.well-known/oauth-protected-resource/mcp`);
    const report = await roundTrip({ url, transport: 'http', token: wrongKey });
    assert.equal(report.ok, false, JSON.stringify(report));
    assert.equal(report.code, 401, JSON.stringify(report));
  });

  t('WebSocket offering [mcp, mcp.auth.<key>]: opens with exactly `mcp`; initialize and tools/list', async () => {
    const { opened, ws, protocol, error } = await openWebSocket(wsUrl, ['mcp', `mcp.auth.${aliceKey}`]);
    assert.ok(opened, `the WebSocket did not open: ${error}`);
    try {
      assert.equal(protocol, 'mcp');
      const init = await wsCall(ws, initializeRequest(1));
      assert.equal(init.result?.serverInfo?.name, 'mcp-edge-example', JSON.stringify(init));
      ws.send(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }));
      const list = await wsCall(ws, { jsonrpc: '2.0', id: 2, method: 'tools/list' });
      const names = list.result?.tools?.map((x) => x.name) ?? [];
      for (const tool of EXAMPLE_TOOLS) assert.ok(names.includes(tool), JSON.stringify(list));
      const call = await wsCall(ws, {
        jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'echo', arguments: { message: 'ws' } },
      });
      assert.equal(call.result?.content?.[0]?.text, 'ws', JSON.stringify(call));
    } finally {
      await closeWebSocket(ws);
    }
    // On the wire: the 101 echoes `mcp` only, never the token.
    const up = await rawUpgrade(wsUrl, { protocols: ['mcp', `mcp.auth.${aliceKey}`] });
    assert.equal(up.status, 101);
    assert.equal(up.headers['sec-websocket-protocol'], 'mcp');
    // The Authorization header on the upgrade works as well.
    const byHeader = await rawUpgrade(wsUrl, { protocols: ['mcp'], authorization: `Bearer ${bobKey}` });
    assert.equal(byHeader.status, 101);
    assert.equal(byHeader.headers['sec-websocket-protocol'], 'mcp');
  });

  t('the SDK WebSocketClientTransport with mcp.auth.<key> works', async () => {
    const report = await roundTrip({ url: wsUrl, transport: 'ws', token: bobKey });
    assertRoundTrip(report, 'SDK over ws:// with mcp.auth.<key>');
    assert.equal(report.wsProtocol, 'mcp');
  });

  t('WebSocket with a wrong key or no key: the upgrade fails (401), the socket never opens', async () => {
    for (const protocols of [['mcp', `mcp.auth.${wrongKey}`], ['mcp']]) {
      const res = await openWebSocket(wsUrl, protocols);
      assert.equal(res.opened, false, `the WebSocket opened offering ${protocols}`);
      if (res.ws) await closeWebSocket(res.ws);
      const up = await rawUpgrade(wsUrl, { protocols });
      assert.equal(up.status, 401, `upgrade offering ${protocols}`);
      assert.match(up.headers['www-authenticate'] ?? '', /resource_metadata="/);
    }
    const report = await roundTrip({ url: wsUrl, transport: 'ws', token: wrongKey });
    assert.equal(report.ok, false, JSON.stringify(report));
    assert.equal(report.stage, 'connect');
  });

  t("session hijack: bob with his own valid key presenting alice's Mcp-Session-Id gets 404", async () => {
    const sessionId = await rawInitialize(url, aliceKey);
    const own = await rawToolsList(url, aliceKey, sessionId);
    assert.equal(own.status, 200, own.text);
    assert.ok(own.names?.includes('echo'), own.text);

    const stream = await rawHttp(url, { method: 'GET', token: aliceKey, sessionId, accept: 'text/event-stream' });
    assert.equal(stream.status, 200, `alice's GET stream of her session: ${stream.status}`);

    const post = await rawToolsList(url, bobKey, sessionId, 3);
    assert.equal(post.status, 404, `bob's POST in alice's session: ${post.status} ${post.text}`);
    const get = await rawHttp(url, { method: 'GET', token: bobKey, sessionId, accept: 'text/event-stream' });
    assert.equal(get.status, 404, `bob's GET stream of alice's session: ${get.status}`);
    const del = await rawHttp(url, { method: 'DELETE', token: bobKey, sessionId });
    assert.equal(del.status, 404, `bob's DELETE of alice's session: ${del.status} ${del.text}`);

    // Alice's session is untouched, and hers to end.
    const again = await rawToolsList(url, aliceKey, sessionId, 4);
    assert.equal(again.status, 200, again.text);
    const end = await rawHttp(url, { method: 'DELETE', token: aliceKey, sessionId });
    assert.ok(end.status === 200 || end.status === 204, `alice's DELETE: ${end.status} ${end.text}`);
    const gone = await rawToolsList(url, aliceKey, sessionId, 5);
    assert.equal(gone.status, 404);
  });

  t('the keys never appear in the gateway log', () => {
    assertNotLogged(gw, [aliceKey, bobKey, wrongKey]);
  });
});

// ---------------------------------------------------------------------------------------------
// 3. JWT

describe('auth = jwt: ES256 tokens checked against a JWKS file', () => {
  const ISSUER = 'https://issuer.test';
  let gw;
  let url;
  let wsUrl;
  let publicUrl;
  let signingKey;
  const kid = 'e2e-key-1';
  const tokens = [];

  /** A token with claims `overrides` over valid defaults (sub alice, scope mcp, 10 min). */
  function token(overrides = {}, key = signingKey) {
    const now = Math.floor(Date.now() / 1000);
    const claims = { iss: ISSUER, aud: publicUrl, sub: 'alice', iat: now, exp: now + 600, scope: 'mcp', ...overrides };
    for (const k of Object.keys(claims)) if (claims[k] === undefined) delete claims[k];
    const jwt = signJwt(claims, key, kid);
    tokens.push(jwt);
    return jwt;
  }

  before(async () => {
    const keyPath = join(workDir, 'jwt-signing.key');
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyPath]);
    signingKey = createPrivateKey(readFileSync(keyPath));
    const jwk = createPublicKey(signingKey).export({ format: 'jwk' });
    assert.equal(jwk.crv, 'P-256');
    const jwksPath = join(workDir, 'jwks.json');
    writeFileSync(jwksPath, JSON.stringify({ keys: [{ ...jwk, kid, alg: 'ES256', use: 'sig' }] }));
    gw = await startOnKnownPort(
      (port) => `${COMMON}
[[routes]]
path = "/mcp"
backend = "example"
public_url = "http://127.0.0.1:${port}/mcp"
auth = { kind = "jwt", issuer = "${ISSUER}", jwks_file = ${tomlString(jwksPath)}, required_scopes = ["mcp"] }
${EXAMPLE_BACKEND}`,
    );
    url = `http://${gw.listen}/mcp`;
    wsUrl = `ws://${gw.listen}/mcp`;
    publicUrl = `http://127.0.0.1:${gw.port}/mcp`;
  });

  after(() => stopGateway(gw));
  const t = (name, fn) => gwTest(() => gw, name, fn);

  /** Asserts that `jwt` gets a 401 invalid_token at initialize and the SDK cannot connect. */
  async function assertInvalid(jwt, what) {
    const r = await rawHttp(url, { token: jwt, body: initializeRequest() });
    assert.equal(r.status, 401, `${what}: ${r.status} ${r.text}`);
    const params = bearerParams(r.headers.get('www-authenticate'));
    assert.equal(params.error, 'invalid_token', what);
    assert.equal(params.resource_metadata, `http://127.0.0.1:${gw.port}/.well-known/oauth-protected-resource/mcp`);
    const report = await roundTrip({ url, transport: 'http', token: jwt });
    assert.equal(report.ok, false, `${what}: ${JSON.stringify(report)}`);
    assert.equal(report.code, 401, `${what}: ${JSON.stringify(report)}`);
  }

  t('a valid token (iss, aud = public_url, exp ahead, scope mcp): the SDK over HTTP works', async () => {
    assertRoundTrip(await roundTrip({ url, transport: 'http', token: token() }), 'SDK with a valid JWT');
    // `scope` may hold several scopes.
    assertRoundTrip(
      await roundTrip({ url, transport: 'http', token: token({ scope: 'read mcp write' }) }),
      'SDK with a valid JWT holding several scopes',
    );
  });

  t('an expired token: 401 invalid_token', async () => {
    const now = Math.floor(Date.now() / 1000);
    await assertInvalid(token({ iat: now - 7200, exp: now - 3600 }), 'expired');
  });

  t('a token for another audience: 401 invalid_token', async () => {
    await assertInvalid(token({ aud: 'http://127.0.0.1:1/other' }), 'wrong aud');
  });

  t('a token from another issuer or signed by another key: 401 invalid_token', async () => {
    await assertInvalid(token({ iss: 'https://evil.test' }), 'wrong iss');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await assertInvalid(token({}, privateKey), 'foreign signature');
  });

  t('no token: 401 naming the metadata, whose authorization server is the issuer', async () => {
    const report = await roundTrip({ url, transport: 'http' });
    assert.equal(report.ok, false, JSON.stringify(report));
    assert.equal(report.code, 401, JSON.stringify(report));
    const r = await rawHttp(url, { body: initializeRequest() });
    assert.equal(r.status, 401, r.text);
    const params = bearerParams(r.headers.get('www-authenticate'));
    const metadataUrl = `http://127.0.0.1:${gw.port}/.well-known/oauth-protected-resource/mcp`;
    assert.equal(params.resource_metadata, metadataUrl);
    const meta = await rawHttp(metadataUrl, { method: 'GET', accept: 'application/json' });
    assert.equal(meta.status, 200, meta.text);
    const doc = JSON.parse(meta.text);
    assert.equal(doc.resource, publicUrl);
    assert.deepEqual(doc.authorization_servers, [ISSUER]);
    assert.deepEqual(doc.scopes_supported, ['mcp']);
  });

  t('a valid token without the required scope: 403 insufficient_scope', async () => {
    for (const scope of ['other', undefined]) {
      const jwt = token({ scope });
      const r = await rawHttp(url, { token: jwt, body: initializeRequest() });
      assert.equal(r.status, 403, `scope ${scope}: ${r.status} ${r.text}`);
      const challenge = r.headers.get('www-authenticate');
      const params = bearerParams(challenge);
      assert.equal(params.error, 'insufficient_scope', challenge);
      assert.equal(params.scope, 'mcp', challenge);
      const report = await roundTrip({ url, transport: 'http', token: jwt });
      assert.equal(report.ok, false, JSON.stringify(report));
      assert.equal(report.code, 403, JSON.stringify(report));
    }
  });

  t('WebSocket with mcp.auth.<jwt>: a valid token works (SDK and raw), an expired one fails the upgrade', async () => {
    const report = await roundTrip({ url: wsUrl, transport: 'ws', token: token() });
    assertRoundTrip(report, 'SDK over ws:// with mcp.auth.<jwt>');
    assert.equal(report.wsProtocol, 'mcp');

    const good = await rawUpgrade(wsUrl, { protocols: ['mcp', `mcp.auth.${token()}`] });
    assert.equal(good.status, 101);
    assert.equal(good.headers['sec-websocket-protocol'], 'mcp');

    const now = Math.floor(Date.now() / 1000);
    const expired = token({ iat: now - 7200, exp: now - 3600 });
    const res = await openWebSocket(wsUrl, ['mcp', `mcp.auth.${expired}`]);
    assert.equal(res.opened, false, 'a WebSocket opened with an expired token');
    if (res.ws) await closeWebSocket(res.ws);
    const up = await rawUpgrade(wsUrl, { protocols: ['mcp', `mcp.auth.${expired}`] });
    assert.equal(up.status, 401);
    assert.equal(bearerParams(up.headers['www-authenticate']).error, 'invalid_token');
    const sdk = await roundTrip({ url: wsUrl, transport: 'ws', token: expired });
    assert.equal(sdk.ok, false, JSON.stringify(sdk));
    assert.equal(sdk.stage, 'connect');
  });

  t('the tokens never appear in the gateway log', () => {
    assert.ok(tokens.length > 5);
    assertNotLogged(gw, tokens);
  });
});
