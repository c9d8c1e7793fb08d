import { canonicalIp, cidrContains, ipToBigInt, parseCidr } from "../configfile/net.js";
import type { Cidr } from "../configfile/net.js";
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
  // Parsed once per node: this runs for every pod of the node on every pod event.
  const cidrCache = new Map<string, Cidr[]>();
  const cidrsOf = (node: string): Cidr[] => {
    let cidrs = cidrCache.get(node);
    if (!cidrs) {
      const texts =
        node === self.name ? facts.podCIDRs : (facts.nodes.find((n) => n.name === node)?.podCIDRs ?? []);
      cidrs = texts.map((c) => parseCidr(c)).filter((c) => c !== undefined);
      cidrCache.set(node, cidrs);
    }
    return cidrs;
  };
  const ztunnelIp = facts.ztunnel ? canonicalIp(facts.ztunnel.ip)?.ip : undefined;
  const notes: string[] = [];
  const byIp = new Map<string, IpSetMember>();

  // Sorted first so that the plan, notes included, does not depend on the order pods were listed in.
  const ordered = pods
    .map((p) => ({ p, key: podKey(p) }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map((x) => x.p);
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
    const cidrs = cidrsOf(pod.node);
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
  const members = sortByAddress([...byIp.values()], (m) => m.ip);
  return { members, notes };
}

const podKey = (p: PodFacts): string => `${p.node}\u0000${p.namespace}\u0000${p.name}\u0000${p.uid}`;

/** Numeric order of addresses (10.244.0.9 before 10.244.0.10); IPv4 before IPv6. */
export function compareIps(a: string, b: string): number {
  const ka = addressKey(a);
  const kb = addressKey(b);
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

/** Sort by address, computing each key once (sorting thousands of pods runs on every pod event). */
export function sortByAddress<T>(items: readonly T[], address: (item: T) => string): T[] {
  return items
    .map((item) => ({ item, key: addressKey(address(item)) }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map((x) => x.item);
}

function addressKey(text: string): bigint {
  const parsed = canonicalIp(text);
  if (!parsed) return -1n;
  const value = ipToBigInt(parsed.ip, parsed.family);
  return parsed.family === 4 ? value : value + (1n << 32n);
}
