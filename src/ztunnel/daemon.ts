import type { Server } from "node:http";
import { setFlagsFromString } from "node:v8";
import { pino } from "pino";
import type { Logger } from "pino";
import { collectDefaultMetrics, Registry } from "prom-client";
import { DeltaAdsClient } from "../xds/client.js";
import { CertificateManager } from "./identity/certificates.js";
import { createGrpcCertificateSigner } from "./identity/ca-client.js";
import { adminHandler, metricsHandler, readinessHandler, serveHttp } from "./admin.js";
import type { HboneSettings } from "./hbone/settings.js";
import { Ztunnel, ZTUNNEL_MARKS } from "./proxy/ztunnel.js";
import type { ZTUNNEL_PORTS } from "./proxy/plan.js";
import { startIdleTrimmer } from "./memory/idle-trim.js";
import type { IdleTrimmer } from "./memory/idle-trim.js";
import { loadMallocTrim } from "./memory/malloc-trim.js";
import { ZtunnelState } from "./state/index.js";
import { createZtunnelMetrics, observeXdsClient } from "./telemetry/index.js";
import type { ZtunnelMetrics } from "./telemetry/index.js";

// One ztunnel process: xDS state, certificates, the data path and its HTTP endpoints, wired.

/**
 * Node flags a ztunnel process starts with (the lab's kubelet and the benchmark pass them); V8
 * reads them at start only.
 * - `--max-semi-space-size=1`: a 1 MiB young generation. The data path allocates little and
 *   briefly (its bytes live in buffers outside the heap), so the default 16 MiB semi-spaces only
 *   hold garbage longer: ~13 MB more resident memory idle, and lower throughput
 *   (bench/results/ztunnel.md).
 * - `--no-expose-wasm`: no WebAssembly, which the ztunnel never uses. With it, Node's ESM loader
 *   finds the exports of the CommonJS libraries (pino, grpc-js, …) with its JavaScript lexer
 *   instead of compiling its WebAssembly one: ~0.8 MB less resident memory.
 * - `--expose-gc`: gc(), which the idle trimming runs once the proxy goes quiet so that the read
 *   buffers of past traffic are freed before malloc_trim hands their pages back (memory/idle-trim.ts).
 *   Without it the trimming still runs, on what V8 happened to collect.
 */
export const ZTUNNEL_NODE_FLAGS: readonly string[] = [
  "--max-semi-space-size=1",
  "--no-expose-wasm",
  "--expose-gc",
];

/**
 * V8 flags `offmesh ztunnel run` sets on itself (V8 reads them whenever it sizes the heap):
 * `--heap-growing-percent=400`, an old-generation limit of 5× the live heap instead of ~2×. The
 * buffers a busy stream reads into count against that limit until a scavenge frees them (V8 adds
 * external memory allocated since the last full GC to the old generation's size), so with a
 * ~10 MB heap the default limit set off a full mark-compact every 50–130 ms under one iperf3
 * stream, each freeing nothing. With 5×: one in the whole run, single-stream throughput
 * 3.1 → 4.4–4.7 Gbit/s, idle memory unchanged.
 */
export const ZTUNNEL_V8_FLAGS: readonly string[] = ["--heap-growing-percent=400"];

/** Apply ZTUNNEL_V8_FLAGS to this process (the ztunnel's own; not for a process that hosts others). */
export function tuneHeapForZtunnel(): void {
  for (const flag of ZTUNNEL_V8_FLAGS) setFlagsFromString(flag);
}

export interface ZtunnelDaemonOptions {
  /** host:port of the control plane (xDS and CA). */
  readonly xdsAddress: string;
  /** PEM of the mesh root: verifies the control plane and every peer. */
  readonly rootCaPem: string;
  /** Name the control plane's certificate is checked against, when not the address's host. */
  readonly serverName?: string;
  /** The proxy's credential, read before every stream and CSR (a rotated token file is picked up). */
  readonly token: () => string | Promise<string>;
  /** The node this ztunnel's pod runs on. */
  readonly node: string;
  readonly podName: string;
  readonly podNamespace: string;
  readonly podIp: string;
  readonly trustDomain: string;
  readonly clusterId?: string;
  readonly domain?: string;
  /** host:port, or undefined for none. Upstream: 127.0.0.1:15000, :15020, :15021. */
  readonly adminAddr?: string;
  readonly metricsAddr?: string;
  readonly readinessAddr?: string;
  readonly netnsPath?: string;
  readonly listenAddress?: string;
  readonly ports?: Partial<typeof ZTUNNEL_PORTS>;
  readonly certificateLifetimeSeconds?: number;
  /** How long /quitquitquit lets open connections finish. Default 30 s. */
  readonly drainTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
  readonly idleTimeoutMs?: number;
  readonly hbone?: Partial<HboneSettings>;
  /** Freed memory goes back to the kernel after this long without traffic; 0 never. Default 5 s. */
  readonly idleTrimMs?: number;
  readonly log?: Logger;
  readonly accessLog?: Logger;
}

export interface RunningZtunnel {
  readonly ztunnel: Ztunnel;
  readonly state: ZtunnelState;
  readonly certificates: CertificateManager;
  readonly xds: DeltaAdsClient;
  readonly metrics: ZtunnelMetrics;
  readonly adminUrl?: string;
  readonly metricsUrl?: string;
  readonly readinessUrl?: string;
  /** Resolves once the first configuration arrived and the listeners are bound. */
  readonly ready: Promise<void>;
  /** Resolves when /quitquitquit (or drain()) has finished draining. */
  readonly stopped: Promise<void>;
  configDump(): Record<string, unknown>;
  /** Stop accepting, let open connections finish (up to the drain timeout), then stop. */
  drain(): Promise<void>;
  stop(): Promise<void>;
}

export const DEFAULT_IDLE_TRIM_MS = 5_000;

function startIdleTrimming(quietMs: number, metrics: ZtunnelMetrics, log: Logger): IdleTrimmer | undefined {
  if (quietMs <= 0) return undefined;
  const release = loadMallocTrim();
  if ("unavailable" in release) {
    log.info({ reason: release.unavailable }, "idle memory trimming is off");
    return undefined;
  }
  const gc = (globalThis as { gc?: () => void }).gc;
  return startIdleTrimmer({
    quietMs,
    activity: () => metrics.activity(),
    release,
    ...(typeof gc === "function" ? { collectGarbage: () => gc() } : {}),
    log,
  });
}

export async function startZtunnel(opts: ZtunnelDaemonOptions): Promise<RunningZtunnel> {
  const log = opts.log ?? pino({ name: "ztunnel" }, pino.destination(2));
  const accessLog = opts.accessLog ?? log.child({ target: "access" });
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const metrics = createZtunnelMetrics(registry);
  const state = new ZtunnelState({ node: opts.node });
  const domain = opts.domain ?? "cluster.local";
  const xds = new DeltaAdsClient({
    target: opts.xdsAddress,
    credentials: {
      kind: "tls",
      rootCa: opts.rootCaPem,
      ...(opts.serverName ? { serverName: opts.serverName } : {}),
    },
    token: opts.token,
    ...(opts.clusterId ? { clusterId: opts.clusterId } : {}),
    node: {
      id: `ztunnel~${opts.podIp}~${opts.podName}.${opts.podNamespace}~${opts.podNamespace}.svc.${domain}`,
      metadata: {
        NODE_NAME: opts.node,
        NAME: opts.podName,
        NAMESPACE: opts.podNamespace,
        INSTANCE_IPS: opts.podIp,
      },
    },
    types: state.watchedTypes(),
  });
  const stopObserving = observeXdsClient(metrics, xds);
  xds.on("disconnected", (info) =>
    log.warn(
      { code: info.code, details: info.details, retryInMs: info.retryInMs },
      "xDS stream ended; keeping the last configuration",
    ),
  );
  const signer = createGrpcCertificateSigner({
    target: opts.xdsAddress,
    rootCaPem: opts.rootCaPem,
    ...(opts.serverName ? { serverName: opts.serverName } : {}),
    token: opts.token,
  });
  const certificates = new CertificateManager({
    signer: signer.sign,
    trustDomain: opts.trustDomain,
    roots: opts.rootCaPem,
    ...(opts.certificateLifetimeSeconds ? { lifetimeSeconds: opts.certificateLifetimeSeconds } : {}),
    log,
  });
  const ztunnel = new Ztunnel({
    state,
    certificates,
    trustDomain: opts.trustDomain,
    rootsPem: opts.rootCaPem,
    metrics,
    log,
    accessLog,
    ...(opts.netnsPath ? { netnsPath: opts.netnsPath } : {}),
    ...(opts.listenAddress ? { listenAddress: opts.listenAddress } : {}),
    ...(opts.ports ? { ports: opts.ports } : {}),
    ...(opts.connectTimeoutMs !== undefined ? { connectTimeoutMs: opts.connectTimeoutMs } : {}),
    ...(opts.idleTimeoutMs !== undefined ? { idleTimeoutMs: opts.idleTimeoutMs } : {}),
    ...(opts.hbone ? { hbone: opts.hbone } : {}),
  });

  const servers: Server[] = [];
  let xdsSynced = false;
  let listening = false;
  const ready = xds.ready.then(() => {
    xdsSynced = true;
  });
  ready.catch(() => undefined);

  let resolveStopped: () => void = () => undefined;
  const stopped = new Promise<void>((r) => (resolveStopped = r));
  let stopping: Promise<void> | undefined;
  const shutdown = (drainMs: number): Promise<void> => {
    stopping ??= (async () => {
      log.info({ drainMs, open: ztunnel.stats().open }, "ztunnel draining");
      await ztunnel.drain(drainMs);
      trimmer?.stop();
      stopObserving();
      xds.close();
      signer.close();
      certificates.close();
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
      log.info("ztunnel stopped");
      resolveStopped();
    })();
    return stopping;
  };
  const drainTimeoutMs = opts.drainTimeoutMs ?? 30_000;
  // A timer only: it reads the metrics every few seconds and acts once the proxy is quiet.
  const trimmer = startIdleTrimming(opts.idleTrimMs ?? DEFAULT_IDLE_TRIM_MS, metrics, log);

  const configDump = (): Record<string, unknown> => ({
    ...state.configDump(),
    certificates: certificates.dump(),
    config: {
      node: opts.node,
      pod: `${opts.podNamespace}/${opts.podName}`,
      podIp: opts.podIp,
      trustDomain: opts.trustDomain,
      xdsAddress: opts.xdsAddress,
      marks: ZTUNNEL_MARKS,
    },
    connections: ztunnel.stats(),
    xds: xds.stats(),
  });

  let adminUrl: string | undefined;
  let metricsUrl: string | undefined;
  let readinessUrl: string | undefined;
  try {
    await ztunnel.start();
    listening = true;
    if (opts.adminAddr) {
      const s = await serveHttp(
        opts.adminAddr,
        "--admin-addr",
        adminHandler({ configDump, quit: () => void shutdown(drainTimeoutMs) }),
      );
      servers.push(s.server);
      adminUrl = s.url;
    }
    if (opts.metricsAddr) {
      const s = await serveHttp(opts.metricsAddr, "--metrics-addr", metricsHandler(registry));
      servers.push(s.server);
      metricsUrl = s.url;
    }
    if (opts.readinessAddr) {
      const s = await serveHttp(
        opts.readinessAddr,
        "--readiness-addr",
        readinessHandler({
          pending: () => [
            ...(xdsSynced ? [] : ["state manager (waiting for the first configuration)"]),
            ...(listening && !ztunnel.stats().draining ? [] : ["proxy"]),
          ],
        }),
      );
      servers.push(s.server);
      readinessUrl = s.url;
    }
  } catch (err) {
    trimmer?.stop();
    xds.close();
    signer.close();
    certificates.close();
    await ztunnel.close();
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    throw err;
  }
  // Start-up (modules, first configuration) leaves megabytes of garbage; hand it back once ready
  // rather than at the first quiet tick.
  ready.then(
    () => trimmer?.releaseNow("ready"),
    () => undefined,
  );
  log.info(
    {
      node: opts.node,
      pod: `${opts.podNamespace}/${opts.podName}`,
      xds: opts.xdsAddress,
      admin: adminUrl,
      metrics: metricsUrl,
    },
    "ztunnel started",
  );
  return {
    ztunnel,
    state,
    certificates,
    xds,
    metrics,
    ...(adminUrl ? { adminUrl } : {}),
    ...(metricsUrl ? { metricsUrl } : {}),
    ...(readinessUrl ? { readinessUrl } : {}),
    ready,
    stopped,
    configDump,
    drain: () => shutdown(drainTimeoutMs),
    stop: () => shutdown(0),
  };
}
