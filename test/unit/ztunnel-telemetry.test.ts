import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { Registry } from "prom-client";
import type { DeltaAdsClientEvents } from "../../src/xds/client.js";
import { TYPE_URL, WorkloadStatus } from "../../src/xds/types.js";
import type { Service, Workload } from "../../src/xds/types.js";
import { accessLogFields, logConnection } from "../../src/ztunnel/telemetry/access-log.js";
import type { ConnectionLogEntry } from "../../src/ztunnel/telemetry/access-log.js";
import { TRAFFIC_LABEL_NAMES, trafficLabels } from "../../src/ztunnel/telemetry/labels.js";
import { createZtunnelMetrics } from "../../src/ztunnel/telemetry/metrics.js";
import { observeXdsClient, terminationReason } from "../../src/ztunnel/telemetry/xds.js";

const sleep: Workload = {
  uid: "Kubernetes//Pod/default/sleep-1",
  name: "sleep-1",
  namespace: "default",
  addresses: [new Uint8Array([10, 0, 0, 1])],
  serviceAccount: "sleep",
  canonicalName: "sleep",
  canonicalRevision: "v1",
  workloadName: "sleep",
  status: WorkloadStatus.HEALTHY,
  clusterId: "Kubernetes",
};

const httpbin: Workload = {
  ...sleep,
  uid: "Kubernetes//Pod/web/httpbin-1",
  name: "httpbin-1",
  namespace: "web",
  serviceAccount: "httpbin",
  canonicalName: "httpbin",
  canonicalRevision: "v2",
  workloadName: "httpbin",
};

const httpbinService: Service = {
  name: "httpbin",
  namespace: "web",
  hostname: "httpbin.web.svc.cluster.local",
  addresses: [],
  ports: [{ servicePort: 80, targetPort: 8080 }],
};

const SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep";
const HTTPBIN_ID = "spiffe://cluster.local/ns/web/sa/httpbin";

const fullLabels = () =>
  trafficLabels({
    reporter: "destination",
    source: sleep,
    sourcePrincipal: SLEEP_ID,
    destination: httpbin,
    destinationService: httpbinService,
    destinationPrincipal: HTTPBIN_ID,
    mtls: true,
  });

/** The sample lines of `name` in the Prometheus text exposition. */
async function samples(registry: Registry, name: string): Promise<string[]> {
  const text = await registry.metrics();
  return text.split("\n").filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

/** Labels of a sample line, in the order written. */
function labelsOf(line: string): [string, string][] {
  const inner = line.slice(line.indexOf("{") + 1, line.lastIndexOf("}"));
  return [...inner.matchAll(/([a-z_]+)="([^"]*)"/g)].map((m) => [m[1] as string, m[2] as string]);
}

const valueOf = (line: string): number => Number(line.slice(line.lastIndexOf(" ") + 1));

describe("trafficLabels", () => {
  it("builds every label from workload API objects, in upstream's order", () => {
    assert.deepEqual(Object.entries(fullLabels()), [
      ["reporter", "destination"],
      ["source_workload", "sleep"],
      ["source_canonical_service", "sleep"],
      ["source_canonical_revision", "v1"],
      ["source_workload_namespace", "default"],
      ["source_principal", SLEEP_ID],
      ["source_app", "sleep"],
      ["source_version", "v1"],
      ["source_cluster", "Kubernetes"],
      ["destination_service", "httpbin.web.svc.cluster.local"],
      ["destination_service_namespace", "web"],
      ["destination_service_name", "httpbin"],
      ["destination_workload", "httpbin"],
      ["destination_canonical_service", "httpbin"],
      ["destination_canonical_revision", "v2"],
      ["destination_workload_namespace", "web"],
      ["destination_principal", HTTPBIN_ID],
      ["destination_app", "httpbin"],
      ["destination_version", "v2"],
      ["destination_cluster", "Kubernetes"],
      ["request_protocol", "tcp"],
      ["response_flags", "-"],
      ["connection_security_policy", "mutual_tls"],
    ]);
  });

  it("renders what is missing as unknown", () => {
    const labels = trafficLabels({ reporter: "source", mtls: false, responseFlags: "CONNECT" });
    for (const name of TRAFFIC_LABEL_NAMES) {
      const expected =
        name === "reporter"
          ? "source"
          : name === "request_protocol"
            ? "tcp"
            : name === "response_flags"
              ? "CONNECT"
              : "unknown";
      assert.equal(labels[name], expected, name);
    }
  });
});

describe("createZtunnelMetrics", () => {
  it("exposes upstream's metric names exactly", async () => {
    const registry = new Registry();
    createZtunnelMetrics(registry, { buildTag: "1.2.3" });
    const text = await registry.metrics();
    const types = text
      .split("\n")
      .filter((l) => l.startsWith("# TYPE "))
      .map((l) => l.slice("# TYPE ".length));
    assert.deepEqual(types.sort(), [
      "istio_build gauge",
      "istio_tcp_connections_closed_total counter",
      "istio_tcp_connections_failed_total counter",
      "istio_tcp_connections_opened_total counter",
      "istio_tcp_received_bytes_total counter",
      "istio_tcp_sent_bytes_total counter",
      "istio_tcp_sockets_open gauge",
      "istio_xds_connection_terminations_total counter",
      "istio_xds_message_total counter",
    ]);
    assert.deepEqual(await samples(registry, "istio_build"), [
      'istio_build{component="ztunnel",tag="1.2.3"} 1',
    ]);
  });

  it("counts a connection's opening, bytes (visible while open) and close, labels in order", async () => {
    const registry = new Registry();
    const metrics = createZtunnelMetrics(registry);
    const c = metrics.connectionOpened(fullLabels());
    const [opened] = await samples(registry, "istio_tcp_connections_opened_total");
    assert.ok(opened);
    assert.deepEqual(
      labelsOf(opened).map(([k]) => k),
      [...TRAFFIC_LABEL_NAMES],
    );
    assert.deepEqual(labelsOf(opened), Object.entries(fullLabels()));
    assert.equal(valueOf(opened), 1);
    assert.deepEqual(await samples(registry, "istio_tcp_sockets_open"), [
      'istio_tcp_sockets_open{reporter="destination"} 1',
    ]);

    c.addSent(100);
    c.addSent(23);
    c.addReceived(7);
    const sentWhileOpen = await samples(registry, "istio_tcp_sent_bytes_total");
    assert.equal(sentWhileOpen.length, 1);
    assert.equal(valueOf(sentWhileOpen[0] as string), 123, "bytes show before the connection ends");
    assert.equal(valueOf((await samples(registry, "istio_tcp_received_bytes_total"))[0] as string), 7);

    c.addSent(1000);
    c.addSent(Number.NaN);
    c.addSent(-5);
    c.closed();
    c.closed();
    c.addSent(50);
    assert.equal(valueOf((await samples(registry, "istio_tcp_sent_bytes_total"))[0] as string), 1123);
    assert.equal(c.bytesSent, 1123);
    assert.equal(c.bytesReceived, 7);
    assert.equal(c.open, false);
    const closed = await samples(registry, "istio_tcp_connections_closed_total");
    assert.deepEqual(closed.map(valueOf), [1], "closed once however often closed() is called");
    assert.deepEqual(labelsOf(closed[0] as string), Object.entries(fullLabels()));
    assert.deepEqual(await samples(registry, "istio_tcp_sockets_open"), [
      'istio_tcp_sockets_open{reporter="destination"} 0',
    ]);
    assert.deepEqual(await samples(registry, "istio_tcp_connections_failed_total"), []);
    assert.equal(metrics.openConnections(), 0);
  });

  it("adds up connections with the same labels and counts failures with their flags", async () => {
    const registry = new Registry();
    const metrics = createZtunnelMetrics(registry);
    const a = metrics.connectionOpened(fullLabels());
    const b = metrics.connectionOpened(fullLabels());
    a.addReceived(10);
    b.addReceived(5);
    a.closed();
    b.failed("DENY");
    assert.deepEqual((await samples(registry, "istio_tcp_connections_opened_total")).map(valueOf), [2]);
    assert.deepEqual((await samples(registry, "istio_tcp_received_bytes_total")).map(valueOf), [15]);
    const closed = await samples(registry, "istio_tcp_connections_closed_total");
    const flagsOf = (line: string) => Object.fromEntries(labelsOf(line))["response_flags"];
    assert.deepEqual(closed.map((l) => [flagsOf(l), valueOf(l)]).sort(), [
      ["-", 1],
      ["DENY", 1],
    ]);
    const failed = await samples(registry, "istio_tcp_connections_failed_total");
    assert.equal(failed.length, 1);
    assert.equal(flagsOf(failed[0] as string), "DENY");
    assert.deepEqual(
      labelsOf(failed[0] as string).map(([k]) => k),
      [...TRAFFIC_LABEL_NAMES],
    );
  });

  it("moves activity() with every opening, byte and end, and leaves it still otherwise", async () => {
    const metrics = createZtunnelMetrics(new Registry());
    const readings = [metrics.activity()];
    const c = metrics.connectionOpened(fullLabels());
    readings.push(metrics.activity());
    c.addSent(100);
    readings.push(metrics.activity());
    c.addReceived(1);
    readings.push(metrics.activity());
    readings.push(metrics.activity()); // nothing happened
    await metrics.registry.metrics(); // a scrape moves pending bytes, not activity
    readings.push(metrics.activity());
    c.closed();
    readings.push(metrics.activity());
    c.addSent(5); // after the end: not counted
    readings.push(metrics.activity());
    assert.deepEqual(readings, [0, 1, 101, 102, 102, 102, 103, 103]);
  });

  it("counts xDS messages by type URL and stream ends by reason", async () => {
    const registry = new Registry();
    const metrics = createZtunnelMetrics(registry);
    const client = new EventEmitter<DeltaAdsClientEvents>();
    const stop = observeXdsClient(metrics, client);
    const response = { stream: 1, nonce: "n", added: 1, removed: 0, rejected: [], unknownType: false };
    client.emit("response", { ...response, typeUrl: TYPE_URL.address });
    client.emit("response", { ...response, typeUrl: TYPE_URL.address });
    client.emit("response", { ...response, typeUrl: TYPE_URL.authorization });
    const disconnect = { stream: 1, details: "", retryInMs: 10 };
    client.emit("disconnected", { ...disconnect, code: grpc.status.UNAVAILABLE, responses: 0 });
    client.emit("disconnected", { ...disconnect, code: grpc.status.UNAVAILABLE, responses: 3 });
    client.emit("disconnected", { ...disconnect, code: grpc.status.OK, responses: 3 });
    stop();
    client.emit("response", { ...response, typeUrl: TYPE_URL.address });
    assert.deepEqual((await samples(registry, "istio_xds_message_total")).sort(), [
      `istio_xds_message_total{url="${TYPE_URL.authorization}"} 1`,
      `istio_xds_message_total{url="${TYPE_URL.address}"} 2`,
    ]);
    assert.deepEqual((await samples(registry, "istio_xds_connection_terminations_total")).sort(), [
      'istio_xds_connection_terminations_total{reason="Complete"} 1',
      'istio_xds_connection_terminations_total{reason="ConnectionError"} 1',
      'istio_xds_connection_terminations_total{reason="Error"} 1',
    ]);
    assert.equal(terminationReason({ code: grpc.status.OK, responses: 0 }), "Complete");
  });
});

describe("access log", () => {
  const entry: ConnectionLogEntry = {
    direction: "inbound",
    sourceAddress: "10.0.0.1:47667",
    source: sleep,
    sourceIdentity: SLEEP_ID,
    destinationAddress: "10.0.1.1:15008",
    hboneAddress: "10.0.1.1:8080",
    destination: httpbin,
    destinationService: httpbinService,
    destinationIdentity: HTTPBIN_ID,
    bytesSent: 120,
    bytesReceived: 4500,
    durationMs: 12.4,
  };

  it("uses upstream's field names", () => {
    assert.deepEqual(Object.entries(accessLogFields(entry)), [
      ["src.addr", "10.0.0.1:47667"],
      ["src.workload", "sleep-1"],
      ["src.namespace", "default"],
      ["src.identity", SLEEP_ID],
      ["dst.addr", "10.0.1.1:15008"],
      ["dst.hbone_addr", "10.0.1.1:8080"],
      ["dst.service", "httpbin.web.svc.cluster.local"],
      ["dst.workload", "httpbin-1"],
      ["dst.namespace", "web"],
      ["dst.identity", HTTPBIN_ID],
      ["direction", "inbound"],
      ["bytes_sent", 120],
      ["bytes_recv", 4500],
      ["duration", "12ms"],
    ]);
  });

  it("writes one info line per connection, `connection failed` with error and reason", () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      { base: undefined, timestamp: false },
      { write: (s: string) => lines.push(JSON.parse(s)) },
    );
    logConnection(logger, entry);
    logConnection(logger, {
      direction: "inbound",
      sourceAddress: "[fd00::1]:5000",
      destinationAddress: "10.0.1.1:15006",
      bytesSent: 0,
      bytesReceived: 0,
      durationMs: 0.2,
      error: "connection closed due to policy rejection",
      reason: "denied by DENY policy web/strict",
    });
    assert.equal(lines.length, 2);
    assert.equal(lines[0]?.["msg"], "connection complete");
    assert.equal(lines[0]?.["level"], 30);
    assert.equal(lines[0]?.["dst.service"], "httpbin.web.svc.cluster.local");
    assert.deepEqual(lines[1], {
      level: 30,
      "src.addr": "[fd00::1]:5000",
      "dst.addr": "10.0.1.1:15006",
      direction: "inbound",
      bytes_sent: 0,
      bytes_recv: 0,
      duration: "0ms",
      error: "connection closed due to policy rejection",
      reason: "denied by DENY policy web/strict",
      msg: "connection failed",
    });
  });
});
