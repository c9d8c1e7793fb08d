import { createServer } from "node:http";
import type { Server } from "node:http";
import { join } from "node:path";
import { pino } from "pino";
import type { Logger } from "pino";
import { FileClusterSource } from "../cluster/file.js";
import { splitHostPort } from "../configfile/net.js";
import type { ClusterSource } from "../cluster/types.js";
import { installConflist } from "../cni/conflist-install.js";
import { serveAgentSocket } from "../cni/socket.js";
import { Runner } from "../netapply/exec.js";
import type { IptablesMode } from "../netapply/iptables.js";
import { Reconciler } from "../netapply/reconciler.js";
import type { TunnelKind } from "../netplan/types.js";
import { NodeAgent, PAIR_CHANNEL_OFF } from "./agent.js";
import type { PairChannelOptions } from "./agent.js";
import { acquireLock } from "./lock.js";
import { AgentMetrics } from "./metrics.js";
import { DEFAULT_PAIR_GRACE_MS, DEFAULT_PAIR_PORT, DEFAULT_PAIR_TIMEOUT_MS } from "./pair.js";
import { PairClient } from "./pair-client.js";
import { readPairKey } from "./pair-key.js";
import { PairServerSupervisor, servePairChannel } from "./pair-server.js";
import type { PairEndpoint } from "./pair-server.js";

export interface DaemonOptions {
  readonly nodeName: string;
  readonly clusterState: string;
  readonly clusterConf: string;
  /** Network namespace of the node (a path); default: the agent's own. */
  readonly netns?: string;
  readonly stateDir: string;
  readonly socketPath: string;
  /** Where to install the CNI conflist; undefined: leave the node's CNI config alone. */
  readonly cniConfDir?: string;
  readonly ipamDataDir?: string;
  readonly clusterPodCIDRs?: readonly string[];
  readonly tunnel?: TunnelKind;
  readonly iptablesMode?: IptablesMode;
  readonly resyncMs: number;
  /** host:port for /metrics, /healthz and /status; undefined: no HTTP server. */
  readonly metricsAddr?: string;
  readonly log?: Logger;
  /** The key the pair's two agents share; undefined: the pair channel is off (warned, in status). */
  readonly pairKeyFile?: string;
  /** TCP port of the pair channel on a DPU's node address (default 15031). */
  readonly pairPort?: number;
  /** Deadline of a CPU's hold call to its DPU, retries included (default 5 s). */
  readonly pairTimeoutMs?: number;
  /** How long a DPU captures a held pod the API has not confirmed (default 60 s). */
  readonly pairGraceMs?: number;
  /** Clock of the held pods' grace period (tests). */
  readonly now?: () => number;
}

export interface RunningDaemon {
  readonly agent: NodeAgent;
  readonly metricsUrl?: string;
  stop(): Promise<void>;
}

/** Wire an agent to its inputs and outputs: cluster source, kernel, CNI socket, metrics. */
export async function startDaemon(opts: DaemonOptions, source?: ClusterSource): Promise<RunningDaemon> {
  const log = opts.log ?? pino({ name: "offmesh-agent", base: { node: opts.nodeName } }, pino.destination(2));
  const lock = await acquireLock(join(opts.stateDir, "agent.lock"));
  const cleanups: (() => Promise<void>)[] = [() => lock.release()];
  try {
    const runner = new Runner(opts.netns);
    const metrics = new AgentMetrics();
    const clusterSource =
      source ??
      new FileClusterSource({
        statePath: opts.clusterState,
        topologyPath: opts.clusterConf,
        onError: (m) => log.error(m),
      });
    const pair = await pairChannel(opts, log, metrics, () => agent.pairEndpoint());
    if (pair) cleanups.unshift(() => pair.supervisor.close());
    else log.warn(PAIR_CHANNEL_OFF);
    const agent = new NodeAgent({
      nodeName: opts.nodeName,
      source: clusterSource,
      runner,
      applier: new Reconciler({
        runner,
        stateDir: opts.stateDir,
        ...(opts.iptablesMode ? { iptablesMode: opts.iptablesMode } : {}),
      }),
      metrics,
      log,
      ...(opts.cniConfDir ? { installConflist: (c) => installConflist(opts.cniConfDir ?? "", c) } : {}),
      conflistOptions: {
        agentSocket: opts.socketPath,
        ...(opts.ipamDataDir ? { ipamDataDir: opts.ipamDataDir } : {}),
      },
      ...(opts.clusterPodCIDRs ? { clusterPodCIDRs: opts.clusterPodCIDRs } : {}),
      ...(opts.tunnel ? { tunnel: opts.tunnel } : {}),
      resyncMs: opts.resyncMs,
      ...(pair ? { pair: pair.options } : {}),
      ...(opts.now ? { now: opts.now } : {}),
    });
    // The socket is served before the first apply so that a pod ADD arriving during start-up waits
    // for the agent instead of failing.
    const socket = await serveAgentSocket(opts.socketPath, (req) => agent.handle(req));
    cleanups.unshift(() => socket.close());
    await agent.start();
    // On stop, no more holds are taken before the agent stops (the early registration above covers
    // a failed start; closing twice is harmless).
    cleanups.unshift(async () => {
      await pair?.supervisor.close();
      await agent.stop();
    });
    // A DPU answers its CPU's holds from here on (the first sync told the listener where to bind).
    await pair?.supervisor.settled();
    cleanups.unshift(() => clusterSource.stop());
    let metricsUrl: string | undefined;
    if (opts.metricsAddr) {
      const server = await serveMetrics(opts.metricsAddr, agent, metrics);
      cleanups.unshift(() => new Promise((r) => server.close(() => r())));
      metricsUrl = `http://${opts.metricsAddr}`;
    }
    log.info({ role: agent.status().role, ready: agent.status().ready }, "agent started");
    return {
      agent,
      ...(metricsUrl ? { metricsUrl } : {}),
      stop: async () => {
        for (const c of cleanups) await c().catch(() => undefined);
      },
    };
  } catch (err) {
    for (const c of cleanups) await c().catch(() => undefined);
    throw err;
  }
}

/** The pair channel's two sides, when a key is configured: the DPU's listener and the CPU's client. */
async function pairChannel(
  opts: DaemonOptions,
  log: Logger,
  metrics: AgentMetrics,
  endpoint: () => PairEndpoint,
): Promise<{ options: PairChannelOptions; supervisor: PairServerSupervisor } | undefined> {
  if (!opts.pairKeyFile) return undefined;
  const { key, warning } = await readPairKey(opts.pairKeyFile);
  if (warning) log.warn(warning);
  const port = opts.pairPort ?? DEFAULT_PAIR_PORT;
  const supervisor = new PairServerSupervisor(
    (address) =>
      servePairChannel({
        key,
        address,
        port,
        ...(opts.netns ? { netnsPath: opts.netns } : {}),
        endpoint: endpoint(),
        log,
        onAnswer: (op, result) => metrics.pairRequests.inc({ op, result }),
      }),
    log,
  );
  const caller = new PairClient({
    key,
    port,
    timeoutMs: opts.pairTimeoutMs ?? DEFAULT_PAIR_TIMEOUT_MS,
    ...(opts.netns ? { netnsPath: opts.netns } : {}),
  });
  const options: PairChannelOptions = {
    caller,
    graceMs: opts.pairGraceMs ?? DEFAULT_PAIR_GRACE_MS,
    onSelf: (self) => void supervisor.follow(self?.role === "dpu" ? self.ip : undefined),
    describe: (self) => {
      if (self?.role === "dpu") return supervisor.describe();
      if (self?.role === "cpu" && self.partner)
        return `holds new meshed pods on ${self.partner.name} (${self.partner.ip}:${port}) before their ADD returns`;
      return "unused: this node has no pair";
    },
  };
  return { options, supervisor };
}

async function serveMetrics(addr: string, agent: NodeAgent, metrics: AgentMetrics): Promise<Server> {
  const { host, port } = splitHostPort(addr, "--metrics-addr");
  const server = createServer((req, res) => {
    void (async () => {
      if (req.url === "/metrics") {
        res.setHeader("content-type", metrics.registry.contentType);
        res.end(await metrics.registry.metrics());
      } else if (req.url === "/healthz") {
        const s = agent.status();
        res.statusCode = s.ready ? 200 : 503;
        res.end(s.ready ? "ready\n" : `not ready: ${s.notReadyReason ?? ""}\n`);
      } else if (req.url === "/status") {
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify(agent.status(), null, 2));
      } else {
        res.statusCode = 404;
        res.end("not found\n");
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
