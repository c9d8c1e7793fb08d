import { canonicalIp } from "../configfile/net.js";
import type { NodeLookup, Topology, TopologyNode } from "./types.js";

// Lookups never fall back to an empty name: the original compared against "" on a miss and so
// matched every unscheduled pod (bug 20) and served every workload to an unknown ztunnel (bug 29).

export function lookupByName(topo: Topology, name: string): NodeLookup {
  const node = topo.byName.get(name);
  return node
    ? { found: true, node }
    : {
        found: false,
        reason: `node "${name}" is not declared in ${topo.file} (neither in pairs nor in singles)`,
      };
}

export function lookupByIp(topo: Topology, ip: string): NodeLookup {
  const canonical = canonicalIp(ip)?.ip;
  const node = canonical === undefined ? undefined : topo.byIp.get(canonical);
  return node
    ? { found: true, node }
    : { found: false, reason: `no node with address ${ip} is declared in ${topo.file}` };
}

/** The node whose ztunnel serves workloads of `name`: a CPU's DPU; a DPU or single itself. */
export function servingNode(topo: Topology, name: string): NodeLookup {
  const found = lookupByName(topo, name);
  if (!found.found) return found;
  const { node } = found;
  if (node.role !== "cpu") return found;
  const partner = node.partner ? topo.byName.get(node.partner.name) : undefined;
  return partner
    ? { found: true, node: partner }
    : { found: false, reason: `CPU node "${name}" has no paired DPU in ${topo.file}` };
}

/**
 * The nodes whose workloads the ztunnel on `name` serves: a DPU serves itself and its paired CPU,
 * a single serves itself; a CPU runs no ztunnel and an unknown node serves nothing (never "all").
 */
export function servedNodes(topo: Topology, name: string): readonly TopologyNode[] {
  const node = topo.byName.get(name);
  if (!node || node.role === "cpu") return [];
  if (node.role === "single") return [node];
  const cpu = node.partner ? topo.byName.get(node.partner.name) : undefined;
  return cpu ? [node, cpu] : [node];
}

export function pairPartner(topo: Topology, name: string): NodeLookup {
  const found = lookupByName(topo, name);
  if (!found.found) return found;
  const partner = found.node.partner ? topo.byName.get(found.node.partner.name) : undefined;
  return partner
    ? { found: true, node: partner }
    : { found: false, reason: `node "${name}" is a single and has no pair partner` };
}
