// The deployment files parse and agree with the gateway: Kubernetes manifests, the Grafana
// dashboard, the alert rules' shape (promtool checks their PromQL in scripts/check-deploy), and
// the container configurations, which the real `mcp-edge check` must accept.
//
// Run: cd tests/e2e && node --test deploy/*.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { parseAllDocuments } from 'yaml';

import { REPO_ROOT, gatewayBin } from '../lib/gateway.mjs';

const deploy = resolve(REPO_ROOT, 'deploy');

/** Every YAML document of a file, parsed strictly. */
function yamlDocs(path) {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'));
  for (const d of docs) assert.deepEqual(d.errors, [], `${path} parses`);
  return docs.map((d) => d.toJS()).filter((d) => d !== null);
}

function manifests() {
  const dir = join(deploy, 'kubernetes');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => yamlDocs(join(dir, f)).map((doc) => ({ file: f, doc })));
}

/** `mcp-edge check` on a configuration text; returns the normalized output. */
function check(toml) {
  const dir = mkdtempSync(join(tmpdir(), 'mcp-edge-deploy-'));
  const path = join(dir, 'gateway.toml');
  writeFileSync(path, toml);
  return execFileSync(gatewayBin(), ['check', '--config', path], { encoding: 'utf8' });
}

test('every Kubernetes manifest is a named object of a known kind', () => {
  const kinds = manifests().map(({ file, doc }) => {
    assert.ok(doc.apiVersion && doc.kind, `${file}: apiVersion and kind`);
    assert.ok(doc.metadata?.name, `${file}: metadata.name`);
    return doc.kind;
  });
  for (const kind of ['Deployment', 'Service', 'PodDisruptionBudget', 'ServiceMonitor', 'HorizontalPodAutoscaler', 'ConfigMap']) {
    assert.ok(kinds.includes(kind), `a ${kind} is shipped`);
  }
});

test('the Deployment probes the admin endpoints and drains within its grace period', () => {
  const { doc } = manifests().find(({ doc }) => doc.kind === 'Deployment');
  const pod = doc.spec.template.spec;
  const c = pod.containers[0];
  const port = (name) => c.ports.find((p) => p.name === name).containerPort;
  assert.equal(c.livenessProbe.httpGet.path, '/healthz');
  assert.equal(c.readinessProbe.httpGet.path, '/readyz');
  assert.equal(c.readinessProbe.httpGet.port, 'admin');
  const config = manifests().find(({ doc }) => doc.kind === 'ConfigMap').doc.data['gateway.toml'];
  const normalized = check(config);
  assert.match(normalized, new RegExp(`listen = "0\\.0\\.0\\.0:${port('mcp')}"`), 'the mcp port is the listener');
  assert.match(normalized, new RegExp(`listen = "0\\.0\\.0\\.0:${port('admin')}"`), 'the admin port is the admin listener');
  const secs = (key) => Number(normalized.match(new RegExp(`${key} = "(\\d+)s"`))[1]);
  const preStop = Number(c.lifecycle.preStop.exec.command.at(-1));
  const needed = preStop + secs('drain_delay') + secs('shutdown_grace') + 2 * secs('stop_wait') + 5;
  assert.ok(pod.terminationGracePeriodSeconds >= needed, `terminationGracePeriodSeconds ≥ ${needed}`);
  assert.ok(secs('drain_delay') >= c.readinessProbe.periodSeconds * c.readinessProbe.failureThreshold, 'drain_delay outlasts the readiness probe');
  assert.equal(pod.securityContext.runAsNonRoot, true);
  assert.equal(c.env.find((e) => e.name === 'MCP_EDGE_INSTANCE_ID').valueFrom.fieldRef.fieldPath, 'metadata.name');
});

test('the container configuration is valid', () => {
  const out = check(readFileSync(join(deploy, 'container', 'gateway.toml'), 'utf8'));
  assert.match(out, /listen = "0\.0\.0\.0:8080"/);
});

test('the HPA scales on the WebSocket connection gauge', () => {
  const { doc } = manifests().find(({ doc }) => doc.kind === 'HorizontalPodAutoscaler');
  assert.equal(doc.spec.metrics[0].pods.metric.name, 'mcp_edge_websocket_connections');
});

test('the dashboard is valid JSON whose panels all query Prometheus', () => {
  const dash = JSON.parse(readFileSync(join(deploy, 'grafana', 'mcp-edge.json'), 'utf8'));
  assert.equal(dash.uid, 'mcp-edge');
  assert.ok(dash.panels.length >= 8);
  for (const p of dash.panels) {
    assert.ok(p.targets.length > 0 && p.targets.every((t) => t.expr.length > 0), `panel ${p.title} has queries`);
  }
  const exprs = dash.panels.flatMap((p) => p.targets.map((t) => t.expr)).join('\n');
  for (const metric of ['mcp_edge_websocket_connections', 'mcp_edge_sessions', 'mcp_edge_limit', 'mcp_edge_request_duration_seconds_bucket', 'mcp_edge_backend_processes']) {
    assert.ok(exprs.includes(metric), `the dashboard shows ${metric}`);
  }
});

test('the alert rules have the expected groups and annotations', () => {
  const [rules] = yamlDocs(join(deploy, 'prometheus', 'alerts.yaml'));
  const all = rules.groups.flatMap((g) => g.rules);
  for (const name of ['McpEdgeNearSessionCapacity', 'McpEdgeBackendCrashLoop', 'McpEdgeHighErrorRatio']) {
    assert.ok(all.some((r) => r.alert === name), `${name} exists`);
  }
  for (const r of all) assert.ok(r.annotations?.summary && r.labels?.severity, `${r.alert} has a summary and a severity`);
});
