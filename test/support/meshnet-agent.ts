import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "pino";
import { NodeAgent } from "../../src/agent/agent.js";
import { AgentMetrics } from "../../src/agent/metrics.js";
import type { ClusterSource } from "../../src/cluster/types.js";
import { installConflist } from "../../src/cni/conflist-install.js";
import { CniRuntime } from "../../src/cni/runtime.js";
import type { RuntimeConflist } from "../../src/cni/runtime.js";
import { serveAgentSocket } from "../../src/cni/socket.js";
import { Runner } from "../../src/netapply/exec.js";
import { Reconciler } from "../../src/netapply/reconciler.js";
import type { TestNetns } from "./netns.js";

// One node agent run in-process against a node namespace, with the CNI runtime a kubelet would
// use on that node (the agent's conflist, the reference plugins and the real offmesh-cni talking
// to the agent's socket) — the arrangement of test/integration/agent.test.ts.

export interface MeshAgent {
  readonly agent: NodeAgent;
  readonly runtime: CniRuntime;
  /** The conflist the agent installed for its node. */
  conflist(): RuntimeConflist;
  stop(): Promise<void>;
}

export interface MeshAgentOptions {
  readonly node: TestNetns;
  readonly nodeName: string;
  readonly source: ClusterSource;
  /** The node's files: CNI config, IPAM state, agent socket, reconciler state, runtime cache. */
  readonly dir: string;
  /** CNI_PATH of the runtime (a directory holding offmesh-cni first). */
  readonly cniPath: readonly string[];
  readonly log: Logger;
}

export async function startMeshAgent(opts: MeshAgentOptions): Promise<MeshAgent> {
  const { dir } = opts;
  mkdirSync(dir, { recursive: true });
  const runner = new Runner(opts.node.path);
  const socketPath = join(dir, "cni.sock");
  const agent = new NodeAgent({
    nodeName: opts.nodeName,
    source: opts.source,
    runner,
    applier: new Reconciler({ runner, stateDir: join(dir, "state") }),
    metrics: new AgentMetrics(),
    log: opts.log,
    installConflist: (c) => installConflist(join(dir, "net.d"), c),
    conflistOptions: { ipamDataDir: join(dir, "ipam"), agentSocket: socketPath },
    // Changes arrive as cluster events and explicit resyncs; a periodic one would only add noise.
    resyncMs: 3_600_000,
    podWaitMs: 2_000,
  });
  const server = await serveAgentSocket(socketPath, (req) => agent.handle(req));
  try {
    await agent.start();
  } catch (err) {
    await server.close();
    throw err;
  }
  const runtime = new CniRuntime({
    cniPath: opts.cniPath,
    cacheDir: join(dir, "cache"),
    hostNetns: opts.node.path,
    timeoutMs: 20_000,
  });
  return {
    agent,
    runtime,
    conflist: () =>
      JSON.parse(readFileSync(join(dir, "net.d", "10-offmesh.conflist"), "utf8")) as RuntimeConflist,
    stop: async () => {
      await agent.stop();
      await server.close();
    },
  };
}
