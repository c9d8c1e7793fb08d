import type { IpFamily } from "../configfile/net.js";

export type NodeRole = "cpu" | "dpu" | "single";

export interface NodeRef {
  readonly name: string;
  readonly ip: string;
}

/** One node as `cluster-conf.yaml` describes it. */
export interface TopologyNode extends NodeRef {
  readonly role: NodeRole;
  /** The other half of a CPU/DPU pair; absent for singles. */
  readonly partner?: NodeRef;
  /** Where the node is declared, for messages: `pairs[0].cpuNodeName`, `singles[2].nodeName`. */
  readonly declaredAt: string;
}

export interface Pair {
  readonly cpu: NodeRef;
  readonly dpu: NodeRef;
}

/** The validated cluster description. Build it with `parseTopology`; query it with `lookup.ts`. */
export interface Topology {
  readonly file: string;
  readonly family: IpFamily | undefined;
  readonly pairs: readonly Pair[];
  readonly singles: readonly NodeRef[];
  readonly nodes: readonly TopologyNode[];
  readonly byName: ReadonlyMap<string, TopologyNode>;
  readonly byIp: ReadonlyMap<string, TopologyNode>;
}

/** A lookup answer: a node, or an explicit "not in the topology" with the reason spelled out. */
export type NodeLookup = { found: true; node: TopologyNode } | { found: false; reason: string };
