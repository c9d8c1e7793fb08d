import { canonicalIp, parseCidr } from "../configfile/net.js";
import type { IpFamily } from "../configfile/net.js";
import type { Topology, TopologyNode } from "../topology/types.js";
import type { NodeFacts } from "./facts.js";
import type { Route } from "./types.js";

export interface CniRoutes {
  readonly routes: readonly Route[];
  readonly notes: readonly string[];
}

/**
 * Main-table routes to the other nodes' pod CIDRs (the kindnet-offMesh job). The invariant they
 * keep: every packet into or out of a CPU's pod CIDR crosses that CPU's DPU, in both directions.
 *
 * | this node | target                         | next hop                 |
 * |-----------|--------------------------------|--------------------------|
 * | cpu       | any                            | its own DPU              |
 * | dpu       | its own CPU, a DPU, a single   | the target (direct)      |
 * | dpu       | another CPU                    | that CPU's DPU           |
 * | single    | a CPU                          | that CPU's DPU           |
 * | single    | a DPU or a single              | the target (direct)      |
 * | dpu/single| a node not in the topology     | the target (direct), with a note |
 *
 * Fix of bug 2: singles and unknown targets get real routes, never an "empty route".
 * Fix of bug 4: a CIDR of the other family is routed via the next hop's address of that family,
 * or skipped with a note when the next hop has none.
 */
export function planCniRoutes(topo: Topology, self: TopologyNode, facts: NodeFacts): CniRoutes {
  const routes: Route[] = [];
  const notes: string[] = [];
  // The node's own pod CIDR is reached through its pods' veths (ptp), never through a route here.
  const others = facts.nodes.filter((n) => n.name !== self.name).sort((a, b) => a.name.localeCompare(b.name));

  for (const target of others) {
    const known = topo.byName.get(target.name);
    if (!known) {
      notes.push(
        self.role === "cpu"
          ? `node ${target.name} is not in ${topo.file}; its pods are reached through this CPU's DPU like any other`
          : `node ${target.name} is not in ${topo.file}; its pods are routed to it directly`,
      );
    }
    const hop = nextHop(topo, self, target.name, known);
    for (const cidrText of target.podCIDRs) {
      const cidr = parseCidr(cidrText);
      if (!cidr) continue;
      const via = addressOf(topo, facts, hop, cidr.family);
      if (!via) {
        notes.push(
          `no IPv${cidr.family} address known for ${hop} (next hop to ${target.name}); ${cidr.text} not routed`,
        );
        continue;
      }
      routes.push({
        family: cidr.family,
        table: "main",
        dst: cidr.text,
        via,
        dev: facts.nic.name,
        proto: "offmesh",
      });
    }
    if (target.podCIDRs.length === 0) notes.push(`node ${target.name} has no pod CIDR yet; nothing to route`);
  }
  return { routes, notes };
}

/** Name of the node the route to `target`'s pods goes through. */
function nextHop(
  topo: Topology,
  self: TopologyNode,
  target: string,
  known: TopologyNode | undefined,
): string {
  if (self.role === "cpu") return self.partner?.name ?? target;
  if (known?.role === "cpu" && known.partner?.name !== self.name) return known.partner?.name ?? target;
  return target;
}

/** An address of `node` in `family`: the topology's address first, then what the node reports. */
function addressOf(topo: Topology, facts: NodeFacts, node: string, family: IpFamily): string | undefined {
  const declared = topo.byName.get(node)?.ip;
  const candidates = [declared, ...(facts.nodes.find((n) => n.name === node)?.ips ?? [])];
  for (const text of candidates) {
    const parsed = text === undefined ? undefined : canonicalIp(text);
    if (parsed?.family === family) return parsed.ip;
  }
  return undefined;
}
