import { canonicalIp, cidrContains, parseCidr } from "../configfile/net.js";
import type { IpFamily } from "../configfile/net.js";
import { servedNodes } from "../topology/lookup.js";
import type { Topology, TopologyNode } from "../topology/types.js";
import type { NodeFacts, PodFacts } from "./facts.js";
import type { IpSetMember } from "./types.js";

export interface Membership {
  readonly members: readonly IpSetMember[];
  readonly notes: readonly string[];
}

/**
 * Which meshed pods this node's rules capture. A CPU captures its own pods; a DPU the pods of the
 * nodes its ztunnel serves (itself and its paired CPU: the original captured DPU-scheduled pods
 * without serving them, bug 26); a single its own pods.
 *
 * Fix of bug 17: hostNetwork pods (their "IP" is the node's) and pods without an IP never enter
 * the set. Addresses outside the pod CIDR of the pod's node, of another family, or equal to the
 * ztunnel's are refused too: any of them would capture traffic that is not a meshed pod's.
 */
export function selectMembers(
  topo: Topology,
  self: TopologyNode,
  facts: NodeFacts,
  pods: readonly PodFacts[],
  family: IpFamily,
): Membership {
  const captured = new Set(
    self.role === "cpu" ? [self.name] : servedNodes(topo, self.name).map((n) => n.name),
  );
  const cidrsOf = (node: string): string[] =>
    node === self.name ? facts.podCIDRs : (facts.nodes.find((n) => n.name === node)?.podCIDRs ?? []);
  const ztunnelIp = facts.ztunnel ? canonicalIp(facts.ztunnel.ip)?.ip : undefined;
  const notes: string[] = [];
  const byIp = new Map<string, IpSetMember>();

  // Sorted first so that the plan, notes included, does not depend on the order pods were listed in.
  const ordered = [...pods].sort((a, b) => podKey(a).localeCompare(podKey(b)));
  for (const pod of ordered) {
    if (!captured.has(pod.node)) continue;
    const who = `pod ${pod.namespace}/${pod.name}`;
    if (pod.hostNetwork) {
      notes.push(`${who} uses the host network; it is not captured (bug 17)`);
      continue;
    }
    const addrs = pod.ips.map((text) => canonicalIp(text)).filter((a) => a !== undefined);
    const mine = addrs.filter((a) => a.family === family);
    if (mine.length === 0) {
      notes.push(`${who} has no IPv${family} address yet; it is not captured until it has one (bug 17)`);
      continue;
    }
    const cidrs = cidrsOf(pod.node)
      .map((c) => parseCidr(c))
      .filter((c) => c !== undefined);
    for (const { ip } of mine) {
      if (ip === ztunnelIp) {
        notes.push(`${who} has the ztunnel's address ${ip}; the ztunnel is never captured`);
      } else if (!cidrs.some((c) => cidrContains(c, ip))) {
        notes.push(`${who} address ${ip} is outside the pod CIDR of node ${pod.node}; not captured`);
      } else if (byIp.has(ip)) {
        notes.push(
          `${who} address ${ip} is already held by pod uid ${byIp.get(ip)?.comment}; kept the first`,
        );
      } else {
        byIp.set(ip, { ip, comment: pod.uid });
      }
    }
  }
  const members = [...byIp.values()].sort((a, b) => compareIps(a.ip, b.ip));
  return { members, notes };
}

const podKey = (p: PodFacts): string => `${p.node}\u0000${p.namespace}\u0000${p.name}\u0000${p.uid}`;

export function compareIps(a: string, b: string): number {
  const pa = canonicalIp(a);
  const pb = canonicalIp(b);
  if (!pa || !pb || pa.family !== pb.family) return a < b ? -1 : a > b ? 1 : 0;
  const ca = parseCidr(`${pa.ip}/${pa.family === 4 ? 32 : 128}`)?.network ?? 0n;
  const cb = parseCidr(`${pb.ip}/${pb.family === 4 ? 32 : 128}`)?.network ?? 0n;
  return ca < cb ? -1 : ca > cb ? 1 : 0;
}
