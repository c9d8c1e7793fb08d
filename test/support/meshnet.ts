import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { pino } from "pino";
import type { Logger } from "pino";
import type { NodeAgent } from "../../src/agent/agent.js";
import { ztunnelPodOn } from "../../src/agent/facts.js";
import { isMeshed, isZtunnel } from "../../src/cluster/membership.js";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import type { ClusterPod, ContainerPort, Labels } from "../../src/cluster/types.js";
import { createPodNetns, deletePodNetns, kubernetesCniArgs } from "../../src/cni/runtime.js";
import type { CniAttachment, CniRuntime, RuntimeConflist } from "../../src/cni/runtime.js";
import {
  issueProxyToken,
  loadOrCreateTokenKey,
  serviceAccountSubject,
} from "../../src/controlplane/auth/tokens.js";
import { startControlPlane } from "../../src/controlplane/daemon.js";
import type { RunningControlPlane } from "../../src/controlplane/daemon.js";
import { TUNNEL, ZTUNNEL_PORT } from "../../src/netplan/constants.js";
import { ambient, clusterNode, namespace, pod } from "./cluster.js";
import { ipsetMembers } from "./kernel.js";
import { startMeshAgent } from "./meshnet-agent.js";
import { linkDetails, mangleRules, routeTable } from "./meshnet-kernel.js";
import { NetnsProcesses } from "./meshnet-process.js";
import type { ExecOptions, ExecResult, NetnsProcess, SpawnOptions } from "./meshnet-process.js";
import { listenInNetns, relayTcp } from "./meshnet-relay.js";
import { probeTcp, serveTcp } from "./meshnet-tcp.js";
import type { TcpProbeOptions, TcpProbeResult, TcpServer } from "./meshnet-tcp.js";
import { createNetns, deleteNetns, testNetnsName } from "./netns.js";
import type { TestNetns } from "./netns.js";
import { fromRoot } from "./paths.js";
import { until } from "./wait.js";
import { createWire } from "./wire.js";
import type { Wire } from "./wire.js";

// A small real mesh for integration tests of the ztunnel: two single nodes (namespaces) on one
// wire, each run by an in-process node agent; pods created through the real CNI chain and kept in
// one MemoryClusterSource, which the agents and an in-process control plane both read. The control
// plane listens on the test process's loopback and is reached from the lab through a relay whose
// listening socket lives in a "controlplane" namespace on the wire (see meshnet-relay.ts). Nothing
// is added to the root namespace but that loopback listener.

export const MESH_NAMESPACE = "mesh";
export const PLAIN_NAMESPACE = "plain";
export const SYSTEM_NAMESPACE = "istio-system";
export const TRUST_DOMAIN = "cluster.local";
/** The link by which every node (and the control plane's namespace) is plugged into the wire. */
export const NODE_NIC = "ens3";
const WIRE_PREFIX_LENGTH = 24;

export interface MeshNodeSpec {
  readonly name: string;
  readonly ip: string;
  readonly podCidr: string;
}

export const MESH_NODES: readonly MeshNodeSpec[] = [
  { name: "single1", ip: "192.168.60.11", podCidr: "10.250.1.0/24" },
  { name: "single2", ip: "192.168.60.12", podCidr: "10.250.2.0/24" },
];

/** Where the control plane's xDS + CA service is reached from the lab's namespaces. */
export const CONTROL_PLANE_IP = "192.168.60.100";
export const CONTROL_PLANE_PORT = 15012;

/** cluster-conf.yaml of the mesh: the nodes as singles, no pairs. */
export function meshTopologyText(nodes: readonly MeshNodeSpec[] = MESH_NODES): string {
  return (
    ["singles:", ...nodes.flatMap((n) => [`  - nodeIP: ${n.ip}`, `    nodeName: ${n.name}`])].join("\n") +
    "\n"
  );
}

export interface MeshPodSpec {
  /** Unique within the mesh: pods are addressed by name. */
  readonly name: string;
  readonly namespace: string;
  readonly node: string;
  /** Default: "default". */
  readonly serviceAccount?: string;
  readonly labels?: Labels;
  readonly annotations?: Labels;
  readonly containerPorts?: readonly ContainerPort[];
}

/** The ztunnel pod of a node: what the agent recognises (label app=ztunnel) and the CA trusts. */
export const ztunnelPodSpec = (node: string): MeshPodSpec => ({
  name: `ztunnel-${node}`,
  namespace: SYSTEM_NAMESPACE,
  node,
  serviceAccount: "ztunnel",
  labels: { app: "ztunnel" },
});

/** The application pods every mesh starts with. */
export const MESH_WORKLOADS: readonly MeshPodSpec[] = [
  {
    name: "client",
    namespace: MESH_NAMESPACE,
    node: "single1",
    serviceAccount: "client",
    labels: { app: "client" },
  },
  { name: "plain-client", namespace: PLAIN_NAMESPACE, node: "single1", labels: { app: "plain-client" } },
  {
    name: "server",
    namespace: MESH_NAMESPACE,
    node: "single2",
    serviceAccount: "server",
    labels: { app: "server" },
  },
  { name: "plain-server", namespace: PLAIN_NAMESPACE, node: "single2", labels: { app: "plain-server" } },
];

export interface MeshPod {
  readonly name: string;
  readonly namespace: string;
  readonly node: string;
  readonly serviceAccount: string;
  readonly uid: string;
  readonly ip: string;
  /** The pod's network namespace: path (CNI_NETNS) and `ip netns` name. */
  readonly netnsPath: string;
  readonly netnsName: string;
  /** The pod as registered in the cluster source once its sandbox existed (Running, with its IP). */
  readonly cluster: ClusterPod;
}

export interface MeshNode {
  readonly name: string;
  readonly ip: string;
  readonly podCidr: string;
  readonly netns: TestNetns;
  readonly agent: NodeAgent;
  /** The CNI runtime of the node (the kubelet's part) and the conflist the agent installed. */
  readonly runtime: CniRuntime;
  conflist(): RuntimeConflist;
}

export interface MeshNetOptions {
  /** Logger of the agents and the control plane; default silent. */
  readonly log?: Logger;
  /** Bound of each wait for the agents to program what changed; default 20 s. */
  readonly waitMs?: number;
}

export interface MeshNet {
  readonly label: string;
  /** The cluster: the agents and the control plane read this same source. */
  readonly source: MemoryClusterSource;
  readonly wire: Wire;
  readonly nodes: readonly MeshNode[];
  node(name: string): MeshNode;
  /** A pod of the mesh by name; throws when there is none. */
  pod(name: string): MeshPod;
  pods(): MeshPod[];
  /** The ztunnel pod the node's agent wires in (the node's newest running one); throws when none. */
  ztunnelOn(node: string): MeshPod;

  readonly controlPlane: RunningControlPlane;
  /** The namespace holding the control plane's lab address (its relay's listening socket). */
  readonly controlPlaneNetns: TestNetns;
  /** host:port of xDS + CA (TLS), reachable from every pod namespace through the nodes. */
  readonly controlPlaneAddress: string;
  /** PEM of the mesh CA's root: the trust anchor for the control plane's TLS and issued certificates. */
  readonly rootCaPem: string;
  readonly trustDomain: string;
  /** A proxy token for a pod of the mesh (the control plane accepts those of ztunnel pods). */
  tokenFor(podName: string, ttlSeconds?: number): string;

  /** Run a command in a pod's namespace; throws on a non-zero exit unless `allowFail`. */
  exec(podName: string, cmd: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Start a long-running command in a pod's namespace; stopped by `close` at the latest. */
  spawn(podName: string, cmd: string, args: readonly string[], opts?: SpawnOptions): NetnsProcess;
  /** A greeting/echo TCP server in a pod (see meshnet-tcp.ts); port 0 picks one. */
  serveTcp(podName: string, port: number, host?: string): Promise<TcpServer>;
  /** Connect from a pod to host:port and report how far it got. */
  probeTcp(podName: string, host: string, port: number, opts?: TcpProbeOptions): Promise<TcpProbeResult>;

  /** Create a pod through its node's CNI chain, register it, and wait until the agents programmed it. */
  addPod(spec: MeshPodSpec): Promise<MeshPod>;
  /** Tear a pod down through the CNI chain, remove it from the cluster, and wait for the agents. */
  deletePod(name: string): Promise<void>;
  /** A full reconcile on every node. */
  resync(): Promise<void>;
  /** What the agents have not programmed yet (first found), or undefined when all is in place. */
  programmingProblem(): string | undefined;
  /** Wait (bounded) until `programmingProblem()` is undefined. */
  waitProgrammed(ms?: number): Promise<void>;
  /** Stop processes, relay, control plane and agents; delete the pods' and the mesh's namespaces. */
  close(): Promise<void>;
}

/** The mesh could not be built or changed as asked. */
export class MeshNetError extends Error {
  override readonly name = "MeshNetError";
}

// Meshes still open when the test file ends are closed here: a test that forgot `close`, or
// failed before reaching it, leaves nothing behind. Registered at import, like netns.ts.
const openMeshes = new Set<MeshNet>();
after(async () => {
  for (const mesh of [...openMeshes]) {
    await mesh
      .close()
      .catch((err: unknown) => process.emitWarning(`closing mesh ${mesh.label}: ${String(err)}`));
  }
});

/** Undo steps of what was built, run last-first; every step runs even when earlier ones fail. */
class Teardown {
  private readonly steps: { what: string; run: () => Promise<void> | void }[] = [];

  push(what: string, run: () => Promise<void> | void): void {
    this.steps.push({ what, run });
  }

  async run(): Promise<void> {
    const failures: Error[] = [];
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step.run();
      } catch (err) {
        failures.push(new MeshNetError(`teardown: ${step.what}: ${(err as Error).message}`, { cause: err }));
      }
    }
    if (failures.length > 0) throw new AggregateError(failures, failures.map((f) => f.message).join("; "));
  }
}

const LABEL = /^[a-z0-9][a-z0-9-]{0,11}$/;

/**
 * Build the mesh: wire, nodes, agents, control plane, ztunnel pods and MESH_WORKLOADS, and wait
 * until the agents have programmed all of it. `label` (up to 12 of a-z, 0-9, "-") names the
 * namespaces; several meshes may exist at once under different labels.
 */
export async function createMeshNet(label: string, opts: MeshNetOptions = {}): Promise<MeshNet> {
  if (!LABEL.test(label))
    throw new MeshNetError(
      `mesh label "${label}" must be 1-12 of a-z, 0-9 and "-", starting with a letter or digit`,
    );
  const teardown = new Teardown();
  try {
    const mesh = await build(label, opts, teardown);
    openMeshes.add(mesh);
    return mesh;
  } catch (err) {
    await teardown
      .run()
      .catch((cleanup: unknown) => process.emitWarning(`mesh ${label}: ${String(cleanup)}`));
    throw err;
  }
}

async function build(label: string, opts: MeshNetOptions, teardown: Teardown): Promise<MeshNet> {
  const log = opts.log ?? pino({ level: "silent" });
  const scratch = mkdtempSync(join(tmpdir(), `offmesh-meshnet-${label}-`));
  teardown.push("remove scratch directory", () => rmSync(scratch, { recursive: true, force: true }));
  const cniBin = join(scratch, "bin");
  mkdirSync(cniBin);
  symlinkSync(fromRoot("bin/offmesh-cni"), join(cniBin, "offmesh-cni"));
  const podNetns = new Set<string>();
  teardown.push("delete pod namespaces", async () => {
    const failed: string[] = [];
    for (const ns of podNetns) {
      await deletePodNetns(ns).then(
        () => podNetns.delete(ns),
        (err: unknown) => failed.push(`${ns}: ${(err as Error).message}`),
      );
    }
    if (failed.length > 0) throw new MeshNetError(failed.join("; "));
  });

  const wire = createWire(`${label}-w`);
  teardown.push("delete wire namespace", () => deleteNetns(wire.ns.name));
  const nodeNetns = MESH_NODES.map((spec) => {
    const ns = createNetns(`${label}-${spec.name}`);
    teardown.push(`delete namespace of ${spec.name}`, () => deleteNetns(ns.name));
    wire.plug(ns, NODE_NIC, `${spec.ip}/${WIRE_PREFIX_LENGTH}`);
    return ns;
  });
  const cpNetns = createNetns(`${label}-cp`);
  teardown.push("delete control plane namespace", () => deleteNetns(cpNetns.name));
  wire.plug(cpNetns, NODE_NIC, `${CONTROL_PLANE_IP}/${WIRE_PREFIX_LENGTH}`);
  // The nodes masquerade what leaves the pod network, but the control plane's host knowing the
  // pod networks keeps it reachable whichever source address a proxy's connection arrives with.
  for (const n of MESH_NODES) cpNetns.sh("ip", ["route", "add", n.podCidr, "via", n.ip, "dev", NODE_NIC]);

  const source = new MemoryClusterSource();
  source.setTopology({ text: meshTopologyText(), source: "cluster-conf.yaml" });
  for (const n of MESH_NODES) source.upsertNode(clusterNode(n.name, n.ip, n.podCidr));
  source.upsertNamespace(ambient(MESH_NAMESPACE));
  source.upsertNamespace(namespace(PLAIN_NAMESPACE));
  source.upsertNamespace(namespace(SYSTEM_NAMESPACE));

  const nodes: MeshNode[] = [];
  for (const [i, spec] of MESH_NODES.entries()) {
    const netns = nodeNetns[i] as TestNetns;
    const agent = await startMeshAgent({
      node: netns,
      nodeName: spec.name,
      source,
      dir: join(scratch, spec.name),
      cniPath: [cniBin, "/usr/lib/cni"],
      log: log.child({ node: spec.name }),
    });
    teardown.push(`stop agent of ${spec.name}`, () => agent.stop());
    nodes.push({
      ...spec,
      netns,
      agent: agent.agent,
      runtime: agent.runtime,
      conflist: agent.conflist,
    });
  }

  const stateDir = join(scratch, "controlplane");
  const controlPlane = await startControlPlane(
    {
      clusterState: "",
      clusterConf: "",
      stateDir,
      listen: "127.0.0.1:0",
      trustDomain: TRUST_DOMAIN,
      domain: TRUST_DOMAIN,
      rootNamespace: SYSTEM_NAMESPACE,
      debounceMs: 5,
      tlsIps: [CONTROL_PLANE_IP],
      log: log.child({ component: "controlplane" }),
    },
    { source },
  );
  teardown.push("stop control plane", () => controlPlane.stop());
  const tokenKey = await loadOrCreateTokenKey(stateDir);
  const listener = await listenInNetns(cpNetns.name, CONTROL_PLANE_IP, CONTROL_PLANE_PORT);
  const relay = relayTcp(listener, { host: "127.0.0.1", port: controlPlane.grpcPort });
  teardown.push("close control plane relay", () => relay.close());

  const processes = new NetnsProcesses();
  const mesh = new MeshNetwork({
    label,
    waitMs: opts.waitMs ?? 20_000,
    source,
    wire,
    nodes,
    controlPlane,
    controlPlaneNetns: cpNetns,
    mintToken: (claims, ttl) => issueProxyToken(tokenKey, claims, ttl),
    processes,
    podNetns,
    teardown,
  });
  for (const n of MESH_NODES) await mesh.createPod(ztunnelPodSpec(n.name));
  for (const spec of MESH_WORKLOADS) await mesh.createPod(spec);
  await mesh.resync();
  await mesh.waitProgrammed();
  return mesh;
}

interface MeshParts {
  readonly label: string;
  readonly waitMs: number;
  readonly source: MemoryClusterSource;
  readonly wire: Wire;
  readonly nodes: readonly MeshNode[];
  readonly controlPlane: RunningControlPlane;
  readonly controlPlaneNetns: TestNetns;
  readonly mintToken: (claims: Parameters<typeof issueProxyToken>[1], ttlSeconds: number) => string;
  readonly processes: NetnsProcesses;
  /** Pod namespaces that exist; the teardown deletes what is left in it. */
  readonly podNetns: Set<string>;
  readonly teardown: Teardown;
}

class MeshNetwork implements MeshNet {
  readonly label: string;
  readonly source: MemoryClusterSource;
  readonly wire: Wire;
  readonly nodes: readonly MeshNode[];
  readonly controlPlane: RunningControlPlane;
  readonly controlPlaneNetns: TestNetns;
  readonly controlPlaneAddress = `${CONTROL_PLANE_IP}:${CONTROL_PLANE_PORT}`;
  readonly rootCaPem: string;
  readonly trustDomain = TRUST_DOMAIN;
  private readonly byName = new Map<string, MeshPod>();
  private podSeq = 0;
  private closing: Promise<void> | undefined;

  constructor(private readonly parts: MeshParts) {
    this.label = parts.label;
    this.source = parts.source;
    this.wire = parts.wire;
    this.nodes = parts.nodes;
    this.controlPlane = parts.controlPlane;
    this.controlPlaneNetns = parts.controlPlaneNetns;
    this.rootCaPem = parts.controlPlane.root.certPem;
  }

  node(name: string): MeshNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node)
      throw new MeshNetError(
        `mesh ${this.label} has no node ${name} (${this.nodes.map((n) => n.name).join(", ")})`,
      );
    return node;
  }

  pod(name: string): MeshPod {
    const p = this.byName.get(name);
    if (!p)
      throw new MeshNetError(`mesh ${this.label} has no pod ${name} (${[...this.byName.keys()].join(", ")})`);
    return p;
  }

  pods(): MeshPod[] {
    return [...this.byName.values()];
  }

  ztunnelOn(node: string): MeshPod {
    const running = ztunnelPodOn(this.source.snapshot(), this.node(node).name);
    const p = running && this.pods().find((x) => x.uid === running.uid);
    if (!p) throw new MeshNetError(`mesh ${this.label}: no ztunnel pod of the mesh runs on ${node}`);
    return p;
  }

  tokenFor(podName: string, ttlSeconds = 3600): string {
    const p = this.pod(podName);
    return this.parts.mintToken(
      {
        sub: serviceAccountSubject(p.namespace, p.serviceAccount),
        pod: { name: p.name, uid: p.uid },
        node: p.node,
      },
      ttlSeconds,
    );
  }

  exec(podName: string, cmd: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult> {
    return this.parts.processes.exec(this.pod(podName).netnsName, cmd, args, opts);
  }

  spawn(podName: string, cmd: string, args: readonly string[], opts?: SpawnOptions): NetnsProcess {
    return this.parts.processes.spawn(this.pod(podName).netnsName, cmd, args, opts);
  }

  serveTcp(podName: string, port: number, host?: string): Promise<TcpServer> {
    return serveTcp(this.parts.processes, this.pod(podName).netnsName, podName, port, host);
  }

  probeTcp(podName: string, host: string, port: number, opts?: TcpProbeOptions): Promise<TcpProbeResult> {
    return probeTcp(this.parts.processes, this.pod(podName).netnsName, host, port, opts);
  }

  async addPod(spec: MeshPodSpec): Promise<MeshPod> {
    const p = await this.createPod(spec);
    await this.node(p.node).agent.resync();
    await this.waitProgrammed();
    return p;
  }

  /**
   * What a kubelet does for a new pod: the API has it (Pending) before its sandbox exists; the CNI
   * ADD runs (for a meshed pod, offmesh-cni holds it until the agent captured the address); then
   * the pod is Running with that address.
   */
  async createPod(spec: MeshPodSpec): Promise<MeshPod> {
    if (this.byName.has(spec.name))
      throw new MeshNetError(`mesh ${this.label} already has a pod ${spec.name}`);
    const node = this.node(spec.node);
    const seq = this.podSeq++;
    const pending = pod({
      // Ordered by creation: the agent takes the last uid as a node's newest ztunnel pod.
      uid: `${this.label}-${String(seq).padStart(4, "0")}-${spec.name}`,
      name: spec.name,
      namespace: spec.namespace,
      nodeName: node.name,
      serviceAccount: spec.serviceAccount ?? "default",
      labels: { ...spec.labels },
      annotations: { ...spec.annotations },
      phase: "Pending",
      ...(spec.containerPorts ? { containerPorts: spec.containerPorts } : {}),
    });
    this.source.upsertPod(pending);
    const netnsName = testNetnsName(`${this.label}-p${seq}-${spec.name}`);
    let netnsPath: string;
    try {
      netnsPath = await createPodNetns(netnsName);
    } catch (err) {
      this.source.deletePod(pending.uid);
      throw new MeshNetError(
        `pod ${spec.name}: cannot create its namespace ${netnsName}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    this.parts.podNetns.add(netnsName);
    let ip: string | undefined;
    try {
      const result = await node.runtime.add(node.conflist(), attachment(pending, netnsPath));
      ip = result.ips?.[0]?.address.split("/")[0];
      if (!ip) throw new MeshNetError(`the CNI chain returned no address: ${JSON.stringify(result)}`);
    } catch (err) {
      this.source.deletePod(pending.uid);
      await deletePodNetns(netnsName);
      this.parts.podNetns.delete(netnsName);
      throw new MeshNetError(`pod ${spec.name} on ${node.name}: CNI ADD failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const running: ClusterPod = { ...pending, ips: [ip], phase: "Running" };
    this.source.upsertPod(running);
    const made: MeshPod = {
      name: spec.name,
      namespace: spec.namespace,
      node: node.name,
      serviceAccount: running.serviceAccount,
      uid: running.uid,
      ip,
      netnsPath,
      netnsName,
      cluster: running,
    };
    this.byName.set(spec.name, made);
    return made;
  }

  async deletePod(name: string): Promise<void> {
    const p = this.pod(name);
    const node = this.node(p.node);
    await node.runtime.del(node.conflist(), attachment(p.cluster, p.netnsPath));
    this.source.deletePod(p.uid);
    await deletePodNetns(p.netnsName);
    this.parts.podNetns.delete(p.netnsName);
    this.byName.delete(name);
    await node.agent.resync();
    await this.waitProgrammed();
  }

  async resync(): Promise<void> {
    for (const n of this.nodes) await n.agent.resync();
  }

  programmingProblem(): string | undefined {
    const snapshot = this.source.snapshot();
    for (const node of this.nodes) {
      const status = node.agent.status();
      if (!status.ready) return `${node.name}: agent not ready: ${status.notReadyReason ?? "?"}`;
      if (status.lastApply?.error) return `${node.name}: last apply failed: ${status.lastApply.error}`;

      // The mesh's own pods only: a test may register pods of its own that the agent treats otherwise.
      const members = new Set(ipsetMembers(node.netns));
      for (const p of this.pods().filter((x) => x.node === node.name)) {
        const current = snapshot.pods.get(p.uid);
        if (!current) continue;
        const meshed = isMeshed(current, snapshot.namespaces.get(current.namespace));
        for (const ip of current.ips) {
          if (meshed && !members.has(ip))
            return `${node.name}: meshed pod ${p.name} (${ip}) is not in the ipset`;
          if (!meshed && members.has(ip))
            return `${node.name}: pod ${p.name} (${ip}) is outside the mesh but in the ipset`;
        }
      }

      const main = routeTable(node.netns.name, "main");
      for (const other of this.nodes.filter((o) => o !== node)) {
        if (!main.includes(`${other.podCidr} via ${other.ip} dev ${NODE_NIC}`))
          return `${node.name}: no route to ${other.name}'s pods (${other.podCidr} via ${other.ip})`;
      }

      const running = ztunnelPodOn(snapshot, node.name);
      const z = running && this.pods().find((p) => p.uid === running.uid);
      if (!z) continue;
      const hostEnd = linkDetails(node.netns.name, TUNNEL.inbound.hostLink) ?? "";
      if (!hostEnd.includes(`remote ${z.ip} `))
        return `${node.name}: ${TUNNEL.inbound.hostLink} does not lead to ztunnel ${z.name} at ${z.ip}`;
      for (const link of [TUNNEL.inbound.podLink, TUNNEL.outbound.podLink]) {
        if (linkDetails(z.netnsName, link) === undefined) return `${z.name}: no tunnel end ${link}`;
      }
      if (!mangleRules(z.netnsName).includes(`--on-port ${ZTUNNEL_PORT.outbound}`))
        return `${z.name}: no TPROXY rule to ${ZTUNNEL_PORT.outbound}`;
    }
    return undefined;
  }

  async waitProgrammed(ms = this.parts.waitMs): Promise<void> {
    let problem: string | undefined;
    try {
      await until(
        `the agents of mesh ${this.label} to program it`,
        () => (problem = this.programmingProblem()) === undefined,
        ms,
      );
    } catch (err) {
      throw new MeshNetError(`${(err as Error).message}: ${problem ?? "?"}`, { cause: err });
    }
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        await this.parts.processes.stopAll();
      } finally {
        await this.parts.teardown.run();
        openMeshes.delete(this);
      }
    })();
    return this.closing;
  }
}

function attachment(p: ClusterPod, netns: string): CniAttachment {
  return {
    containerId: `c-${p.uid}`,
    netns,
    ifName: "eth0",
    args: kubernetesCniArgs({ namespace: p.namespace, name: p.name, uid: p.uid }),
  };
}

/** Whether a pod of the mesh is a ztunnel (label app=ztunnel, as the agent decides). */
export const isZtunnelPod = (p: MeshPod): boolean => isZtunnel(p.cluster);
