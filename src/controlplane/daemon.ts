import { createServer } from "node:http";
import type { Server } from "node:http";
import { isIP } from "node:net";
import { join } from "node:path";
import { pino } from "pino";
import type { Logger } from "pino";
import { FileClusterSource } from "../cluster/file.js";
import { splitHostPort } from "../configfile/net.js";
import type { ClusterSource } from "../cluster/types.js";
import { decodeAddress, decodeAuthorization } from "../xds/proto.js";
import { TYPE_URL } from "../xds/types.js";
import { loadOrCreateTokenKey, TokenAuthenticator } from "./auth/tokens.js";
import type { ProxyAuthenticator } from "./auth/tokens.js";
import { kubernetesTokenReviewer, TokenReviewAuthenticator } from "./auth/tokenreview.js";
import { DEFAULT_TRUSTED_NODE_PROXY_ACCOUNTS } from "./ca/authorize.js";
import { loadOrCreateRoot } from "./ca/root.js";
import type { RootCa } from "./ca/root.js";
import { ControlPlane } from "./controlplane.js";
import { startGrpcServer } from "./grpc-server.js";
import type { IndexedType } from "./index/index.js";

export interface ControlPlaneDaemonOptions {
  readonly clusterState: string;
  readonly clusterConf: string;
  readonly stateDir: string;
  /** host:port of xDS + CA (TLS). */
  readonly listen: string;
  /** host:port of /ready, /metrics, /debug/*; undefined: none. */
  readonly httpAddr?: string;
  readonly trustDomain: string;
  readonly domain: string;
  readonly rootNamespace: string;
  readonly trustedAccounts?: readonly string[];
  readonly debounceMs: number;
  /** Names and addresses the serving certificate is valid for (besides the listen address). */
  readonly tlsDnsNames?: readonly string[];
  readonly tlsIps?: readonly string[];
  /**
   * How node proxies prove who they are: `lab` tokens signed with the key in the state directory
   * (default), or Kubernetes service-account tokens checked with TokenReview.
   */
  readonly proxyAuth?: ProxyAuthOption;
  readonly log?: Logger;
}

export type ProxyAuthOption =
  | { readonly kind: "lab" }
  | {
      readonly kind: "kubernetes";
      /** Without one, the in-cluster service account is used. */
      readonly kubeconfig?: string;
      readonly audiences?: readonly string[];
    };

async function proxyAuthenticator(opts: ControlPlaneDaemonOptions): Promise<ProxyAuthenticator> {
  const auth = opts.proxyAuth ?? { kind: "lab" };
  if (auth.kind === "lab") return new TokenAuthenticator(await loadOrCreateTokenKey(opts.stateDir));
  return new TokenReviewAuthenticator({
    review: await kubernetesTokenReviewer(auth.kubeconfig),
    ...(auth.audiences ? { audiences: auth.audiences } : {}),
  });
}

export interface RunningControlPlane {
  readonly cp: ControlPlane;
  readonly root: RootCa;
  readonly grpcPort: number;
  readonly httpUrl?: string;
  stop(): Promise<void>;
}

/** Files under the state directory: the CA root and the key that signs proxy tokens. */
export const caDir = (stateDir: string): string => join(stateDir, "ca");

export async function startControlPlane(
  opts: ControlPlaneDaemonOptions,
  deps: { source?: ClusterSource; authenticator?: ProxyAuthenticator } = {},
): Promise<RunningControlPlane> {
  const log = opts.log ?? pino({ name: "offmesh-controlplane" }, pino.destination(2));
  const root = await loadOrCreateRoot(caDir(opts.stateDir), { trustDomain: opts.trustDomain });
  const listenHost = splitHostPort(opts.listen, "--listen").host;
  const serving = await root.issueServingCert({
    dnsNames: ["localhost", "offmesh-controlplane", "istiod.istio-system.svc", ...(opts.tlsDnsNames ?? [])],
    ipAddresses: [
      ...new Set([
        "127.0.0.1",
        ...(isIP(listenHost) && listenHost !== "0.0.0.0" ? [listenHost] : []),
        ...(opts.tlsIps ?? []),
      ]),
    ],
    ttlSeconds: 365 * 24 * 3600,
  });
  const authenticator = deps.authenticator ?? (await proxyAuthenticator(opts));
  const source =
    deps.source ??
    new FileClusterSource({
      statePath: opts.clusterState,
      topologyPath: opts.clusterConf,
      onError: (m) => log.error(m),
    });
  const cp = new ControlPlane({
    source,
    index: { trustDomain: opts.trustDomain, domain: opts.domain, rootNamespace: opts.rootNamespace },
    debounceMs: opts.debounceMs,
    log,
  });
  await cp.start();
  const trustedAccounts = opts.trustedAccounts ?? DEFAULT_TRUSTED_NODE_PROXY_ACCOUNTS;
  const grpcServer = await startGrpcServer(cp, {
    listen: opts.listen,
    tls: serving,
    authenticator,
    trustedAccounts,
    root,
    trustDomain: opts.trustDomain,
    log,
  });
  let http: Server | undefined;
  let httpUrl: string | undefined;
  if (opts.httpAddr) {
    http = await serveHttp(opts.httpAddr, cp);
    const addr = http.address();
    httpUrl =
      typeof addr === "object" && addr
        ? `http://${splitHostPort(opts.httpAddr, "--http-addr").host}:${addr.port}`
        : undefined;
  }
  log.info({ grpcPort: grpcServer.port, http: httpUrl, ...cp.index.stats() }, "control plane started");
  return {
    cp,
    root,
    grpcPort: grpcServer.port,
    ...(httpUrl ? { httpUrl } : {}),
    stop: async () => {
      await grpcServer.close();
      if (http) await new Promise<void>((r) => http?.close(() => r()));
      await cp.stop();
    },
  };
}

async function serveHttp(addr: string, cp: ControlPlane): Promise<Server> {
  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? "/", "http://x");
      const json = (status: number, body: unknown): void => {
        res.statusCode = status;
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify(body, null, 2));
      };
      if (url.pathname === "/ready") {
        const ok = cp.isReady() && cp.currentTopology().topology !== undefined;
        res.statusCode = ok ? 200 : 503;
        res.end(ok ? "ready\n" : `not ready: ${cp.currentTopology().error ?? "starting"}\n`);
      } else if (url.pathname === "/metrics") {
        res.setHeader("content-type", cp.metrics.registry.contentType);
        res.end(await cp.metrics.registry.metrics());
      } else if (url.pathname === "/debug/proxies") {
        json(
          200,
          cp.proxies().map((p) => p.debug()),
        );
      } else if (url.pathname === "/debug/config_dump") {
        const id = url.searchParams.get("proxy");
        const proxy = cp.proxies().find((p) => p.id === id);
        if (!proxy)
          json(404, { error: `no connected proxy ${id ?? "(missing ?proxy=)"}; see /debug/proxies` });
        else json(200, configDump(cp, proxy.versions()));
      } else if (url.pathname === "/debug/topology") {
        const t = cp.currentTopology();
        json(200, { source: t.topology?.file, error: t.error, nodes: t.topology?.nodes });
      } else if (url.pathname === "/debug/policies") {
        json(200, cp.index.policyStatus());
      } else {
        res.statusCode = 404;
        res.end(
          "not found: /ready /metrics /debug/proxies /debug/config_dump?proxy= /debug/topology /debug/policies\n",
        );
      }
    })();
  });
  const { host, port } = splitHostPort(addr, "--http-addr");
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

/** What one proxy holds, decoded: the resources at the versions it was sent. */
function configDump(
  cp: ControlPlane,
  versions: Record<string, Record<string, string>>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [typeUrl, names] of Object.entries(versions)) {
    out[typeUrl] = Object.entries(names).map(([name, version]) => {
      if (typeUrl === TYPE_URL.servedNodes) return { name, version, value: cp.servedNodes(name) };
      const r = cp.index.get(typeUrl as IndexedType, name);
      const stale = r?.version !== version;
      const value = r
        ? typeUrl === TYPE_URL.address
          ? decodeAddress(r.bytes)
          : decodeAuthorization(r.bytes)
        : undefined;
      return { name, version, ...(stale ? { stale: true } : {}), value: jsonSafe(value) };
    });
  }
  return out;
}

/** Address bytes as dotted text in JSON, not as arrays of numbers. */
function jsonSafe(value: unknown): unknown {
  return JSON.parse(
    JSON.stringify(value, (_k, v: unknown) => {
      if (v instanceof Uint8Array) return v.length === 4 ? [...v].join(".") : Buffer.from(v).toString("hex");
      return v;
    }),
  );
}
