import { canonicalIp, cidrContains, parseCidr } from "../configfile/net.js";
import type { Topology, TopologyNode } from "../topology/types.js";
import type { PairPod } from "./pair.js";

// Who may tell a DPU to capture what. A valid MAC proves the caller holds the pair key; these
// checks bound what even a key holder can do: only the DPU's own paired CPU, calling from its node
// address, and only for addresses inside that CPU's pod CIDRs — so a leaked key cannot make a DPU
// capture (and so divert) the traffic of addresses that are not its CPU's pods.

export interface Refusal {
  readonly ok: false;
  readonly reason: string;
  /** The refusal may go away without the caller changing anything (the DPU's view lags). */
  readonly retryable: boolean;
}

const refuse = (reason: string, retryable = false): Refusal => ({ ok: false, reason, retryable });

/** The CPU whose pods this node holds: only a DPU serves the pair channel, for its partner only. */
export function pairedCpu(
  topology: Topology | undefined,
  selfName: string,
  topologyError?: string,
): { readonly ok: true; readonly cpu: TopologyNode } | Refusal {
  if (!topology) return refuse(`${selfName} has no topology yet (${topologyError ?? "not loaded"})`, true);
  const self = topology.byName.get(selfName);
  if (!self) return refuse(`${selfName} is not declared in ${topology.file}`);
  if (self.role !== "dpu")
    return refuse(`${selfName} is a ${self.role} node, not a DPU; only a DPU holds its CPU's pods`);
  const cpu = self.partner ? topology.byName.get(self.partner.name) : undefined;
  if (!cpu) return refuse(`DPU ${selfName} has no paired CPU in ${topology.file}`);
  return { ok: true, cpu };
}

/** The caller must be the paired CPU's node address (from the topology). */
export function admitCaller(cpu: TopologyNode, remoteAddress: string | undefined): { ok: true } | Refusal {
  const remote = canonicalIp(unmapIpv4(remoteAddress ?? ""))?.ip;
  if (remote === cpu.ip) return { ok: true };
  return refuse(
    `caller ${remoteAddress ?? "(unknown address)"} is not ${cpu.name} (${cpu.ip}), this DPU's paired CPU`,
  );
}

/**
 * A hold is admitted for a pod of the paired CPU whose every address lies in that CPU's pod
 * CIDRs, as this node's view of the cluster's node objects has them. Returns the pod with its
 * addresses in canonical form.
 */
export function admitHold(
  cpu: TopologyNode,
  cpuPodCIDRs: readonly string[],
  pod: PairPod,
): { readonly ok: true; readonly pod: PairPod } | Refusal {
  const who = `pod ${pod.namespace}/${pod.name}`;
  if (pod.node !== cpu.name)
    return refuse(`${who} is on node ${pod.node}, not on ${cpu.name}, this DPU's paired CPU`);
  const cidrs = cpuPodCIDRs.map((c) => parseCidr(c)).filter((c) => c !== undefined);
  if (cidrs.length === 0)
    return refuse(`no pod CIDR of node ${cpu.name} is known to this DPU yet (node object missing?)`, true);
  const ips: string[] = [];
  for (const text of pod.ips) {
    const ip = canonicalIp(text)?.ip;
    if (ip === undefined) return refuse(`${who}: "${text}" is not an IP address`);
    if (!cidrs.some((c) => cidrContains(c, ip)))
      return refuse(
        `${who}: address ${ip} is outside the pod CIDR${cidrs.length > 1 ? "s" : ""} of ${cpu.name} (${cidrs.map((c) => c.text).join(", ")})`,
      );
    if (!ips.includes(ip)) ips.push(ip);
  }
  return { ok: true, pod: { ...pod, ips } };
}

/** "::ffff:10.0.0.1" (how a dual-stack socket reports an IPv4 peer) → "10.0.0.1". */
function unmapIpv4(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m?.[1] ?? address;
}
