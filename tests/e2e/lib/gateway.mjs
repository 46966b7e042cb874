// Starts and stops a real mcp-edge gateway for end-to-end tests.
//
//   const gw = await startGateway();            // fronts server-everything over stdio
//   const gw = await startGateway({ stdio });   // or any other stdio command line
//   const gw = await startGateway({ config });  // or a configuration file (--config)
//   const gw = await startGateway({ config, listen: `127.0.0.1:${await freePort()}` });
//                                               // a port known in advance (for public_url)
//   ... gw.url (http://127.0.0.1:PORT/mcp), gw.logs (stderr lines), gw.dumpLogs()
//   await gw.stop();                            // SIGTERM, then await the exit
//
// The binary is $EDGE_TEST_BIN, else <repo>/target/debug/mcp-edge. Nothing is built here.
//
// E2E_BACKEND chooses how the default gateway reaches server-everything: `stdio` (default, one
// child per session), `http` (server-everything serving Streamable HTTP on its own, behind
// `--upstream … --upstream-kind http`) or `sse` (its legacy HTTP+SSE transport, behind
// `--upstream …/sse --upstream-kind sse`). The same tests run against all three.

import { spawn } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** tests/e2e */
export const E2E_DIR = resolve(here, '..');
/** The repository root. */
export const REPO_ROOT = resolve(E2E_DIR, '..', '..');
/** The entry point of @modelcontextprotocol/server-everything. */
export const EVERYTHING_ENTRY = resolve(
  E2E_DIR,
  'node_modules/@modelcontextprotocol/server-everything/dist/index.js',
);

/** The gateway binary to test. */
export function gatewayBin() {
  return process.env.EDGE_TEST_BIN || resolve(REPO_ROOT, 'target/debug/mcp-edge');
}

/** Quotes one word for the gateway's shell-like (POSIX) word splitting. */
export function shellQuote(word) {
  return `'${String(word).replaceAll("'", `'\\''`)}'`;
}

/** The --stdio command line that runs server-everything with this Node. */
export function everythingStdioCommand() {
  return [process.execPath, EVERYTHING_ENTRY, 'stdio'].map(shellQuote).join(' ');
}

/** Writes `toml` to a fresh temporary directory; returns the file's path. */
export function writeConfig(toml) {
  const dir = mkdtempSync(join(tmpdir(), 'mcp-edge-e2e-'));
  const path = join(dir, 'gateway.toml');
  writeFileSync(path, toml);
  return path;
}

/** A TOML string literal (JSON's escapes are TOML's). */
export function tomlString(s) {
  return JSON.stringify(String(s));
}

/**
 * Starts `mcp-edge run --listen <listen> --log-format json --stdio <stdio>` (or
 * `--config <config>`) and waits for its "Listening." log line.
 *
 * @param {object} [opts]
 * @param {string} [opts.stdio] the backend command line (default: server-everything)
 * @param {string} [opts.config] a configuration file to run instead of quick mode
 * @param {string} [opts.listen] the --listen address (default `127.0.0.1:0`, a port the system
 *   picks; set one when the configuration must name the port, as a route's `public_url` does)
 * @param {string[]} [opts.extraArgs] more arguments for `mcp-edge run`
 * @param {object} [opts.env] environment of the gateway (default: process.env; MCP_EDGE_*
 *   variables in it are gateway configuration)
 * @param {number} [opts.startTimeoutMs] how long to wait for "Listening." (default 15 s)
 * @param {boolean} [opts.echo] copy the gateway's stderr to ours as it arrives (default: when
 *   E2E_ECHO_GATEWAY_LOGS is set)
 */
export async function startGateway(opts = {}) {
  const {
    stdio = everythingStdioCommand(),
    config,
    listen: listenAddr = '127.0.0.1:0',
    extraArgs = [],
    env = process.env,
    startTimeoutMs = 15_000,
    echo = !!process.env.E2E_ECHO_GATEWAY_LOGS,
  } = opts;
  const childEnv = { ...env };
  const bin = gatewayBin();
  if (!existsSync(bin)) {
    throw new Error(`mcp-edge binary not found at ${bin} (set EDGE_TEST_BIN or build it first)`);
  }
  const backend = process.env.E2E_BACKEND || 'stdio';
  let upstream = null;
  let source = config ? ['--config', config] : ['--stdio', stdio];
  if (!config && !opts.stdio && backend !== 'stdio') {
    upstream = await startEverything(backend);
    source = ['--upstream', upstream.url, '--upstream-kind', backend];
  }
  const args = ['run', '--listen', listenAddr, '--log-format', 'json', ...source, ...extraArgs];
  const child = spawn(bin, args, { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });

  /** Every stderr line, as text, in order. */
  const logs = [];
  let exitInfo = null;
  const exited = new Promise((resolveExit) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolveExit(exitInfo);
    });
  });
  // Keep draining both pipes for the whole life of the process so it never blocks on a write.
  child.stdout.resume();
  const lines = createInterface({ input: child.stderr, crlfDelay: Infinity });

  let onListen;
  const listening = new Promise((res) => (onListen = res));
  lines.on('line', (line) => {
    logs.push(line);
    if (echo) process.stderr.write(`[mcp-edge] ${line}\n`);
    let rec;
    try {
      rec = JSON.parse(line);
    } catch {
      return;
    }
    if (rec.message === 'Listening.' && typeof rec.listen === 'string') onListen(rec.listen);
  });

  let timer;
  const failure = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`mcp-edge did not log "Listening." within ${startTimeoutMs} ms`)),
      startTimeoutMs,
    );
    child.once('error', reject);
    exited.then((e) =>
      reject(new Error(`mcp-edge exited before listening (code ${e.code}, signal ${e.signal})`)),
    );
  });
  let listen;
  try {
    listen = await Promise.race([listening, failure]);
  } catch (err) {
    if (exitInfo === null && child.pid) child.kill('SIGKILL');
    err.message += `\n--- mcp-edge stderr ---\n${logs.join('\n')}`;
    throw err;
  } finally {
    clearTimeout(timer);
  }
  failure.catch(() => {}); // later rejections (the exit at stop) are expected

  const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
  return {
    process: child,
    pid: child.pid,
    listen,
    port,
    origin: `http://${listen}`,
    url: new URL(`http://${listen}/mcp`),
    logs,
    /** Parsed JSON log records (lines that are not JSON are skipped). */
    records() {
      return logs.flatMap((l) => {
        try {
          return [JSON.parse(l)];
        } catch {
          return [];
        }
      });
    },
    /** The collected stderr, for a failure message. */
    dumpLogs() {
      return `--- mcp-edge stderr (${logs.length} lines) ---\n${logs.join('\n')}\n--- end ---`;
    },
    /** Whether the process is still running. */
    get running() {
      return exitInfo === null;
    },
    /**
     * Sends SIGTERM to this process and waits for it to exit; SIGKILL after `timeoutMs`.
     * Resolves to { code, signal }.
     */
    async stop({ timeoutMs = 40_000 } = {}) {
      if (upstream) await upstream.stop();
      if (exitInfo !== null) return exitInfo;
      child.kill('SIGTERM');
      let killTimer;
      const killed = new Promise((res) => {
        killTimer = setTimeout(() => {
          if (exitInfo === null) child.kill('SIGKILL');
          res();
        }, timeoutMs);
      });
      await Promise.race([exited, killed]);
      clearTimeout(killTimer);
      return exited;
    },
  };
}

/** A port nothing listens on right now. */
export async function freePort() {
  const srv = createServer();
  await new Promise((res) => srv.listen(0, '127.0.0.1', res));
  const { port } = srv.address();
  await new Promise((res) => srv.close(res));
  return port;
}

/**
 * Starts server-everything serving `streamableHttp` (backend `http`) or `sse` on a free port and
 * waits until it accepts connections. Resolves to { url, stop }.
 */
export async function startEverything(backend, { startTimeoutMs = 15_000 } = {}) {
  const [mode, path] = { http: ['streamableHttp', '/mcp'], sse: ['sse', '/sse'] }[backend] ?? [];
  if (!mode) throw new Error(`E2E_BACKEND must be stdio, http or sse, not ${backend}`);
  const port = await freePort();
  const child = spawn(process.execPath, [EVERYTHING_ENTRY, mode], {
    env: { ...process.env, PORT: String(port) },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  const exited = new Promise((res) => child.once('exit', res));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    const open = await new Promise((res) => {
      const sock = connect(port, '127.0.0.1');
      sock.once('connect', () => (sock.destroy(), res(true)));
      sock.once('error', () => res(false));
    });
    if (open) return { url: `http://127.0.0.1:${port}${path}`, stop };
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`server-everything (${mode}) did not listen on port ${port}`);
    }
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** `promise`, or a rejection naming `what` after `ms` (the timer is always cleared). */
export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A test that prints the log lines the gateway `getGw()` wrote during it when it fails. */
export function logsOnFailure(getGw, name, fn, { timeout = 60_000 } = {}) {
  test(name, { timeout }, async (t) => {
    const gw = getGw();
    const from = gw.logs.length;
    try {
      await fn(t);
    } catch (err) {
      const lines = gw.logs.slice(from);
      console.error(`\n[${name}] failed; mcp-edge stderr during the test (${lines.length} lines):\n${lines.join('\n')}\n`);
      throw err;
    }
  });
}
