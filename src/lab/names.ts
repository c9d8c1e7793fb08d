import { createHash } from "node:crypto";
import { join } from "node:path";

// Every name the lab gives to something outside its own memory: network namespaces, links, the
// state directory and its files. All of them derive from the lab name, so `lab down` can find a
// lab's leftovers after a crash from the name alone, and two labs never touch each other's.

export const DEFAULT_LAB_NAME = "oml";
const LAB_NAME = /^[a-z0-9]{1,8}$/;

/** Why `name` cannot name a lab, or undefined when it can. */
export function labNameProblem(name: string): string | undefined {
  if (LAB_NAME.test(name)) return undefined;
  return (
    `"${name}" is not a valid lab name: 1 to 8 lower-case letters or digits ` +
    `(it prefixes every namespace and link name the lab creates, which must stay short)`
  );
}

// `ip netns` allows 255 bytes, but names far beyond a terminal column make `ip netns list`
// unreadable; longer names keep a readable head and end in a hash of the full name.
export const MAX_NETNS_NAME = 60;
const HASH_CHARS = 8;

/** `full` itself when it fits `max`, else its head plus a hash of all of it (same input, same name). */
export function shortenName(full: string, max: number = MAX_NETNS_NAME): string {
  if (full.length <= max) return full;
  const hash = createHash("sha256").update(full).digest("hex").slice(0, HASH_CHARS);
  return `${full.slice(0, max - HASH_CHARS - 1)}-${hash}`;
}

export const labPrefix = (lab: string): string => `${lab}-`;

/** The "physical network": a namespace holding only the bridge every node is plugged into. */
export const wireNetns = (lab: string): string => `${lab}-wire`;

/** The namespace standing in for the internet (203.0.113.0/24), reachable only over the wire. */
export const internetNetns = (lab: string): string => `${lab}-internet`;

export const nodeNetns = (lab: string, node: string): string => shortenName(`${lab}-n-${node}`);

/**
 * A pod's namespace. Namespace and pod are joined by dots, which no node, namespace or pod name
 * of the lab contains (all are DNS labels), so two different pods can never get the same name —
 * `legacy/client` and `default/client` on one node included.
 */
export const podNetns = (lab: string, node: string, namespace: string, pod: string): string =>
  shortenName(`${lab}-p-${node}.${namespace}.${pod}`);

/**
 * Whether `name` is one of the lab's namespaces. Matches the lab's own shapes only, not any name
 * with the prefix, so a lab called `omt` leaves the test suite's `omt-<run>-…` namespaces alone.
 */
export function isLabNetns(lab: string, name: string): boolean {
  return (
    name === wireNetns(lab) ||
    name === internetNetns(lab) ||
    (name.startsWith(`${lab}-n-`) && name.length > `${lab}-n-`.length) ||
    (name.startsWith(`${lab}-p-`) && name.length > `${lab}-p-`.length)
  );
}

// ---- Links -------------------------------------------------------------------------------------

/** The bridge inside the wire namespace. It has no address: the wire is layer 2 only. */
export const WIRE_BRIDGE = "br0";

/** The bridge-side end of node `index`'s cable (inside the wire namespace). */
export const bridgePortName = (index: number): string => `p-${index}`;

export const INTERNET_BRIDGE_PORT = "p-inet";

/** The internet namespace's own end of its cable. */
export const INTERNET_NIC = "eth0";

// ---- Cluster objects the lab creates by itself --------------------------------------------------

export const ZTUNNEL_NAMESPACE = "istio-system";
export const ZTUNNEL_SERVICE_ACCOUNT = "ztunnel";
export const ZTUNNEL_LABELS: Readonly<Record<string, string>> = { app: "ztunnel" };
const ZTUNNEL_POD_PREFIX = "ztunnel-";
/** A pod name is a DNS label; the node name must leave room for the ztunnel pod's prefix. */
export const MAX_ZTUNNEL_HOST_NAME = 63 - ZTUNNEL_POD_PREFIX.length;

export const ztunnelPodName = (node: string): string => `${ZTUNNEL_POD_PREFIX}${node}`;

// ---- Processes ---------------------------------------------------------------------------------

// Component names key the pid and log files; each lab process has exactly one.
export const APISERVER_COMPONENT = "apiserver";
export const CONTROLPLANE_COMPONENT = "controlplane";
export const agentComponent = (node: string): string => `agent-${node}`;
export const ztunnelComponent = (node: string): string => `ztunnel-${node}`;
export const workloadComponent = (namespace: string, pod: string): string => `pod-${namespace}.${pod}`;

// ---- State directory ---------------------------------------------------------------------------

/** tmpfs: a reboot forgets the lab exactly as it forgets the namespaces. */
export const LAB_RUN_ROOT = "/run/offmesh-lab";

export const labStateDir = (lab: string, runRoot: string = LAB_RUN_ROOT): string => join(runRoot, lab);

/** The lab API server's files in a state directory: its socket and its persisted cluster. */
export const API_SOCKET_FILE = "api.sock";
export const CLUSTER_STATE_FILE = "cluster.json";

/** Where the API server of lab `lab` listens. */
export const defaultApiSocket = (lab: string): string => join(labStateDir(lab), API_SOCKET_FILE);

export interface LabNodePaths {
  readonly dir: string;
  /** The CNI conflist directory the node's agent writes and the runtime reads. */
  readonly cniConfDir: string;
  readonly ipamDir: string;
  /** The agent's CNI socket. */
  readonly agentSocket: string;
  readonly agentStateDir: string;
}

export interface LabStatePaths {
  readonly dir: string;
  /** The resolved spec the lab was started from. */
  readonly spec: string;
  readonly clusterConf: string;
  /** The lab API server's persisted state. */
  readonly clusterJson: string;
  readonly apiSocket: string;
  /** What `createLabNetwork` built (namespaces, links, addresses). */
  readonly network: string;
  readonly pidsDir: string;
  readonly logsDir: string;
  readonly controlplaneDir: string;
  readonly tokensDir: string;
  readonly rootCert: string;
  readonly nodesDir: string;
  pidFile(component: string): string;
  logFile(component: string): string;
  tokenFile(ztunnelPod: string): string;
  node(node: string): LabNodePaths;
}

/** The files of a lab's state directory (`labStateDir(lab)` for a real lab, anywhere for tests). */
export function labStatePaths(dir: string): LabStatePaths {
  const pidsDir = join(dir, "pids");
  const logsDir = join(dir, "logs");
  const tokensDir = join(dir, "tokens");
  const nodesDir = join(dir, "nodes");
  return {
    dir,
    spec: join(dir, "spec.yaml"),
    clusterConf: join(dir, "cluster-conf.yaml"),
    clusterJson: join(dir, CLUSTER_STATE_FILE),
    apiSocket: join(dir, API_SOCKET_FILE),
    network: join(dir, "network.json"),
    pidsDir,
    logsDir,
    controlplaneDir: join(dir, "controlplane"),
    tokensDir,
    rootCert: join(dir, "root-cert.pem"),
    nodesDir,
    pidFile: (component) => join(pidsDir, `${component}.pid`),
    logFile: (component) => join(logsDir, `${component}.log`),
    tokenFile: (ztunnelPod) => join(tokensDir, `${ztunnelPod}.token`),
    node: (node) => {
      const nodeDir = join(nodesDir, node);
      return {
        dir: nodeDir,
        cniConfDir: join(nodeDir, "net.d"),
        ipamDir: join(nodeDir, "ipam"),
        agentSocket: join(nodeDir, "cni.sock"),
        agentStateDir: join(nodeDir, "state"),
      };
    },
  };
}
