import { bigIntToIp, canonicalIp, parseCidr } from "../configfile/net.js";
import type { IpFamily } from "../configfile/net.js";
import type { ClusterPod, ClusterSnapshot } from "../cluster/types.js";
import type { NodeFacts, PodFacts } from "../netplan/facts.js";
import type { TunnelKind } from "../netplan/types.js";
import { pairPartner } from "../topology/lookup.js";
import type { Topology, TopologyNode } from "../topology/types.js";
import { isZtunnel, meshDecision } from "../cluster/membership.js";

/** What the agent learnt from the kernel of its node. */
export interface KernelFacts {
  readonly nic: { readonly name: string; readonly ip: string; readonly mtu: number };
  readonly tunnel: TunnelKind;
  /** Host-side veth of the local ztunnel pod, found through the pod's /32 route. */
  readonly ztunnelVeth?: string;
}

export interface FactsInputs {
  readonly topology: Topology;
  readonly self: TopologyNode;
  readonly snapshot: ClusterSnapshot;
  readonly kernel: KernelFacts;
  /**
   * Pod addresses the CNI plugin reported, keyed by pod uid: known before the API shows them (a
   * pod's IP reaches the API only after its ADD returns), and empty after a DEL.
   */
  readonly cniAddresses: ReadonlyMap<string, readonly string[]>;
  /** The cluster's pod CIDRs (masquerade exemption); default: every node's pod CIDRs. */
  readonly clusterPodCIDRs?: readonly string[];
  /** Consider only these pods (the agent's fast path for one new pod); default: all. */
  readonly onlyPods?: readonly ClusterPod[];
  /**
   * Pods the paired CPU told this DPU about that the API has not confirmed yet (the pair
   * channel). They count as meshed pods of the CPU and win over what the API shows for their uid.
   */
  readonly heldPods?: readonly PodFacts[];
}

/** Annotation on a ztunnel pod asking for DNS capture (upstream: ISTIO_META_DNS_CAPTURE). */
export const DNS_CAPTURE_ANNOTATION = "offmesh.io/dns-capture";

/**
 * Node facts from the cluster view and the kernel: the same shape `offmesh render` reads from a
 * file, so what the agent applies is exactly what render shows for the same inputs.
 */
export function buildFacts(input: FactsInputs): NodeFacts {
  const { topology, self, snapshot, kernel } = input;
  const me = snapshot.nodes.get(self.name);
  const podCIDRs = (me?.podCIDRs ?? [])
    .map((c) => parseCidr(c)?.text)
    .filter((c): c is string => c !== undefined);
  const family: IpFamily = topology.family ?? 4;
  const nodes = [...snapshot.nodes.values()]
    .filter((n) => n.name !== self.name)
    .map((n) => ({ name: n.name, ips: [...n.internalIPs], podCIDRs: [...n.podCIDRs] }))
    .filter((n) => n.ips.length > 0);
  const allCidrs = [...snapshot.nodes.values()].flatMap((n) => n.podCIDRs);
  return {
    node: self.name,
    nic: kernel.nic,
    podCIDRs,
    podGateway: gatewayOf(podCIDRs, family) ?? kernel.nic.ip,
    clusterPodCIDRs: [...(input.clusterPodCIDRs ?? allCidrs)],
    nodes,
    ...ztunnelFacts(input),
    tunnel: kernel.tunnel,
    pods: withHeld(
      meshedPods(snapshot, input.onlyPods ?? [...snapshot.pods.values()], input.cniAddresses),
      input.heldPods ?? [],
    ),
  };
}

/** host-local's default gateway: the first address of the node's pod CIDR of the topology family. */
export function gatewayOf(podCIDRs: readonly string[], family: IpFamily): string | undefined {
  const cidr = podCIDRs.map((c) => parseCidr(c)).find((c) => c?.family === family);
  if (!cidr) return undefined;
  return bigIntToIp(cidr.network + 1n, family);
}

/** The ztunnel whose address this node's rules need: its own (DPU, single) or its DPU's (CPU). */
function ztunnelFacts(input: FactsInputs): { ztunnel?: NodeFacts["ztunnel"] } {
  const { topology, self, snapshot, kernel } = input;
  const host = self.role === "cpu" ? pairPartner(topology, self.name) : { found: true as const, node: self };
  if (!host.found) return {};
  const pod = ztunnelPodOn(snapshot, host.node.name);
  if (!pod) return {};
  const ip = pod.ips.map((a) => canonicalIp(a)).find((a) => a?.family === (topology.family ?? 4))?.ip;
  if (!ip) return {};
  const captureDNS = pod.annotations[DNS_CAPTURE_ANNOTATION] === "true";
  if (self.role === "cpu") return { ztunnel: { ip, captureDNS } };
  return { ztunnel: { ip, captureDNS, ...(kernel.ztunnelVeth ? { hostVeth: kernel.ztunnelVeth } : {}) } };
}

/** The running ztunnel pod on a node, if any (the newest when a replacement is starting). */
export function ztunnelPodOn(snapshot: ClusterSnapshot, node: string): ClusterPod | undefined {
  return [...snapshot.pods.values()]
    .filter(
      (p) =>
        isZtunnel(p) && p.nodeName === node && !p.terminating && p.phase === "Running" && p.ips.length > 0,
    )
    .sort((a, b) => a.uid.localeCompare(b.uid))
    .at(-1);
}

function withHeld(pods: PodFacts[], held: readonly PodFacts[]): PodFacts[] {
  if (held.length === 0) return pods;
  const uids = new Set(held.map((p) => p.uid));
  return [...pods.filter((p) => !uids.has(p.uid)), ...held];
}

function meshedPods(
  snapshot: ClusterSnapshot,
  pods: readonly ClusterPod[],
  cni: ReadonlyMap<string, readonly string[]>,
): PodFacts[] {
  const out: PodFacts[] = [];
  for (const pod of pods) {
    if (!pod.nodeName) continue;
    if (!meshDecision(pod, snapshot.namespaces.get(pod.namespace)).meshed) continue;
    // What the CNI reported on this node is the current truth for its own pods: the API lags
    // behind an ADD, and still shows the address of a pod whose sandbox a DEL has torn down.
    const ips = cni.get(pod.uid) ?? pod.ips;
    out.push({
      uid: pod.uid,
      name: pod.name,
      namespace: pod.namespace,
      node: pod.nodeName,
      ips: ips.map((a) => canonicalIp(a)?.ip ?? a),
      hostNetwork: pod.hostNetwork,
    });
  }
  return out;
}
