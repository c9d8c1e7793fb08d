// Benchmark of the control plane: 100,000 workloads, 10,000 services, 100 connected proxies.
// Measures the index build, its memory, the initial push to every proxy, and the latency from one
// pod change to all proxies having it — each against a baseline measured in the same run:
//   - index build vs encoding the same 100,000 workloads with no index (protobufjs alone);
//   - index memory vs the bytes of the encoded resources;
//   - change latency vs the same-size message written to 100 raw gRPC streams (transport floor).
//
//   npm run build && node --expose-gc dist/bench/controlplane.bench.js [--workloads N] [--proxies N]
//                                                                      [--index-only]
// --index-only stops after the index build and its memory (seconds instead of minutes, for working
// on the index) and records nothing.
import { fork } from "node:child_process";
import { appendFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { MemoryClusterSource } from "../src/cluster/memory.js";
import type { ClusterPod } from "../src/cluster/types.js";
import {
  issueProxyToken,
  loadOrCreateTokenKey,
  serviceAccountSubject,
} from "../src/controlplane/auth/tokens.js";
import { startControlPlane } from "../src/controlplane/daemon.js";
import { buildWorkload, DEFAULT_INDEX_OPTIONS } from "../src/controlplane/index/workload.js";
import { adsServiceDefinition } from "../src/xds/grpc.js";
import type { DeltaDiscoveryRequest, DeltaDiscoveryResponse } from "../src/xds/messages.js";
import { encodeAddress } from "../src/xds/proto.js";
import { TYPE_URL } from "../src/xds/types.js";

const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const WORKLOADS = arg("workloads", 100_000);
const SERVICES = Math.max(1, Math.floor(WORKLOADS / 10));
const PROXIES = arg("proxies", 100);
const INDEX_ONLY = process.argv.includes("--index-only");
const PAIRS = 100;
const CHANGES = 50;
const now = (): number => performance.timeOrigin + performance.now();
const mb = (b: number): string => `${(b / 1024 / 1024).toFixed(0)} MB`;
const gc = (): void => (globalThis as { gc?: () => void }).gc?.();
const pct = (xs: number[], p: number): number =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))] ?? NaN;

function ip(i: number): string {
  return `10.${Math.floor(i / 65536) % 256}.${Math.floor(i / 256) % 256}.${i % 256}`;
}

function cluster(): MemoryClusterSource {
  const s = new MemoryClusterSource();
  const pairs = Array.from(
    { length: PAIRS },
    (_, p) =>
      `  - { cpuNodeIP: 192.168.${Math.floor(p / 100)}.${(p % 100) + 1}, dpuNodeIP: 192.169.${Math.floor(p / 100)}.${(p % 100) + 1}, cpuNodeName: cpu${p}, dpuNodeName: dpu${p} }`,
  );
  s.setTopology({ text: `pairs:\n${pairs.join("\n")}\n`, source: "bench" });
  for (let n = 0; n < 100; n++)
    s.upsertNamespace({
      name: `ns${n}`,
      labels: n % 2 === 0 ? { "istio.io/dataplane-mode": "ambient" } : {},
    });
  s.upsertNamespace({ name: "istio-system", labels: {} });
  for (let i = 0; i < SERVICES; i++) {
    s.upsertService({
      namespace: `ns${i % 100}`,
      name: `svc${i}`,
      clusterIPs: [`172.16.${Math.floor(i / 256) % 256}.${i % 256}`],
      ports: [{ port: 80, targetPort: 8080, protocol: "TCP" }],
      selector: { app: `svc${i}` },
    });
  }
  for (let i = 0; i < WORKLOADS; i++) s.upsertPod(benchPod(i, 0));
  for (let p = 0; p < PROXIES; p++) s.upsertPod(proxyPod(p));
  return s;
}

function benchPod(i: number, generation: number): ClusterPod {
  const svc = i % SERVICES;
  return {
    uid: `uid-${i}`,
    name: `pod-${i}`,
    namespace: `ns${svc % 100}`,
    nodeName: `cpu${i % PAIRS}`,
    ips: [ip(i + 65536)],
    hostNetwork: false,
    labels: { app: `svc${svc}`, version: `v${generation}` },
    annotations: {},
    phase: "Running",
    ready: true,
    serviceAccount: `sa${svc % 50}`,
    terminating: false,
  };
}

const proxyPod = (p: number): ClusterPod => ({
  uid: `zt-${p}`,
  name: `ztunnel-${p}`,
  namespace: "istio-system",
  nodeName: `dpu${p % PAIRS}`,
  ips: [`10.250.${Math.floor(p / 256)}.${p % 256}`],
  hostNetwork: false,
  labels: { app: "ztunnel" },
  annotations: {},
  phase: "Running",
  ready: true,
  serviceAccount: "ztunnel",
  terminating: false,
});

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "offmesh-cpbench-"));
  const rows: string[] = [];
  const row = (what: string, ours: string, base: string, ratio: number): void => {
    rows.push(`| ${what} | ${ours} | ${base} | ${ratio.toFixed(2)}× |`);
    console.log(`${what}: ${ours} (baseline ${base}, ${ratio.toFixed(2)}×)`);
  };
  try {
    const source = cluster();
    // Baseline: encode the same workloads with nothing around it.
    const snap = source.snapshot();
    const ns = snap.namespaces;
    let t = performance.now();
    let encodedBytes = 0;
    for (const pod of snap.pods.values()) {
      encodedBytes += encodeAddress({
        workload: buildWorkload(pod, ns.get(pod.namespace), [], [], DEFAULT_INDEX_OPTIONS),
      }).length;
    }
    const baselineEncodeMs = performance.now() - t;
    gc();
    const rssBefore = process.memoryUsage().rss;
    t = performance.now();
    const running = await startControlPlane(
      {
        clusterState: "",
        clusterConf: "",
        stateDir: dir,
        listen: "127.0.0.1:0",
        trustDomain: "cluster.local",
        domain: "cluster.local",
        rootNamespace: "istio-system",
        debounceMs: 10,
        log: pino({ level: "silent" }),
      },
      { source },
    );
    const buildMs = performance.now() - t;
    gc();
    const rssIndex = process.memoryUsage().rss - rssBefore;
    const stats = running.cp.index.stats();
    row(
      `index build: ${stats.workloads} workloads, ${stats.services} services`,
      `${buildMs.toFixed(0)} ms`,
      `${baselineEncodeMs.toFixed(0)} ms (encode only)`,
      buildMs / baselineEncodeMs,
    );
    row(
      "index resident memory (RSS growth)",
      mb(rssIndex),
      `${mb(encodedBytes)} (encoded bytes)`,
      rssIndex / encodedBytes,
    );
    if (INDEX_ONLY) {
      await running.stop();
      return;
    }

    const key = await loadOrCreateTokenKey(dir);
    const tokens = Array.from({ length: PROXIES }, (_, p) => {
      const z = proxyPod(p);
      return issueProxyToken(
        key,
        {
          sub: serviceAccountSubject(z.namespace, z.serviceAccount),
          pod: { name: z.name, uid: z.uid },
          node: z.nodeName ?? "",
        },
        3600,
      );
    });
    const child = fork(join(import.meta.dirname, "controlplane-clients.js"), [], {
      execArgv: ["--max-old-space-size=8192"],
    });
    const messages: { kind: string; at?: number; name?: string }[] = [];
    const waiters: (() => void)[] = [];
    child.on("message", (m: { kind: string; at?: number; name?: string }) => {
      messages.push(m);
      waiters.splice(0).forEach((w) => w());
    });
    const waitFor = async (
      pred: (m: { kind: string; at?: number; name?: string }) => boolean,
      ms: number,
    ): Promise<{ at?: number }> => {
      const deadline = Date.now() + ms;
      for (;;) {
        const found = messages.find(pred);
        if (found) return found;
        if (Date.now() > deadline) throw new Error("bench timed out");
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
    };
    const expect = stats.workloads + stats.services;
    const t0 = now();
    child.send({
      mode: "offmesh",
      target: `127.0.0.1:${running.grpcPort}`,
      rootCa: running.root.certPem,
      tokens,
      expect,
    });
    const initial = await waitFor((m) => m.kind === "initial", 600_000);
    const initialMs = (initial.at ?? 0) - t0;
    gc();
    const rssConnected = process.memoryUsage().rss - rssBefore;
    rows.push(
      `| initial push: all ${PROXIES} proxies hold all ${expect} resources | ${(initialMs / 1000).toFixed(1)} s | — | — |`,
    );
    rows.push(`| control plane RSS growth with ${PROXIES} proxies connected | ${mb(rssConnected)} | — | — |`);
    console.log(
      `initial push to ${PROXIES} proxies: ${(initialMs / 1000).toFixed(1)} s; RSS growth ${mb(rssConnected)}`,
    );

    const latencies: number[] = [];
    for (let c = 0; c < CHANGES; c++) {
      const i = (c * 7919) % WORKLOADS;
      const name = `Kubernetes//Pod/${benchPod(i, 0).namespace}/pod-${i}`;
      const start = now();
      source.upsertPod(benchPod(i, c + 1));
      const seen = await waitFor((m) => m.kind === "seen" && m.name === name && (m.at ?? 0) > start, 30_000);
      latencies.push((seen.at ?? 0) - start);
      messages.length = 0;
    }
    child.kill();
    await running.stop();

    // Baseline: the same-size response written to as many raw streams, nothing else.
    const sample = running.cp.index.get(
      TYPE_URL.address,
      `Kubernetes//Pod/${benchPod(0, 0).namespace}/pod-0`,
    );
    const streams: grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>[] = [];
    const server = new grpc.Server();
    server.addService(adsServiceDefinition, {
      DeltaAggregatedResources: (
        call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>,
      ) => void streams.push(call),
    });
    const serving = await running.root.issueServingCert({
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"],
      ttlSeconds: 3600,
    });
    const port = await new Promise<number>((res, rej) =>
      server.bindAsync(
        "127.0.0.1:0",
        grpc.ServerCredentials.createSsl(null, [
          { cert_chain: Buffer.from(serving.certPem), private_key: Buffer.from(serving.keyPem) },
        ]),
        (e, p) => (e ? rej(e) : res(p)),
      ),
    );
    const raw = fork(join(import.meta.dirname, "controlplane-clients.js"));
    messages.length = 0;
    raw.on("message", (m: { kind: string; at?: number; name?: string }) => {
      messages.push(m);
      waiters.splice(0).forEach((w) => w());
    });
    raw.send({
      mode: "baseline",
      target: `127.0.0.1:${port}`,
      rootCa: running.root.certPem,
      tokens,
      expect: 0,
    });
    while (streams.length < PROXIES) await new Promise((r) => setTimeout(r, 20));
    const floor: number[] = [];
    for (let c = 0; c < CHANGES; c++) {
      const name = `probe-${c}`;
      const start = now();
      for (const s of streams)
        s.write({
          typeUrl: TYPE_URL.address,
          nonce: String(c),
          resources: [
            {
              name,
              version: "1",
              resource: { typeUrl: TYPE_URL.address, value: sample?.bytes ?? new Uint8Array() },
            },
          ],
          removedResources: [],
        });
      const seen = await waitFor((m) => m.kind === "seen" && m.name === name, 30_000);
      floor.push((seen.at ?? 0) - start);
    }
    raw.kill();
    server.forceShutdown();
    row(
      `one pod change → all ${PROXIES} proxies, p50`,
      `${pct(latencies, 50).toFixed(1)} ms`,
      `${pct(floor, 50).toFixed(1)} ms`,
      pct(latencies, 50) / pct(floor, 50),
    );
    row(
      `one pod change → all ${PROXIES} proxies, p99`,
      `${pct(latencies, 99).toFixed(1)} ms`,
      `${pct(floor, 99).toFixed(1)} ms`,
      pct(latencies, 99) / pct(floor, 99),
    );

    const out = "bench/results";
    mkdirSync(out, { recursive: true });
    appendFileSync(
      join(out, "controlplane.md"),
      [
        `## ${new Date().toISOString().slice(0, 10)} — control plane, ${WORKLOADS} workloads, ${SERVICES} services, ${PROXIES} proxies`,
        "",
        `Machine: ${cpus().length} × ${cpus()[0]?.model ?? "?"}, Node ${process.version}. Control plane and the ${PROXIES} clients (one child process) share the machine. Debounce 10 ms. ${CHANGES} changes.`,
        "",
        "| measurement | offmesh | baseline | ratio |",
        "|---|---|---|---|",
        ...rows,
        "",
        "",
      ].join("\n"),
    );
    console.log("recorded in bench/results/controlplane.md");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
