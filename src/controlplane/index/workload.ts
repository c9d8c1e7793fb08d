import { canonicalIp, ipToBigInt, ipv4Bytes } from "../../configfile/net.js";
import { isMeshed } from "../../cluster/membership.js";
import type { ClusterNamespace, ClusterPod, ClusterService } from "../../cluster/types.js";
import type { Port, PortList, Service, Workload } from "../../xds/types.js";
import { NetworkMode, TunnelProtocol, WorkloadStatus, WorkloadType } from "../../xds/types.js";

// Pure conversions from cluster objects to workload API resources, as istiod's ambient index
// makes them (names, UIDs, canonical labels), so an upstream ztunnel reads them unchanged.

export interface IndexOptions {
  /** `Workload.cluster_id` and the first part of pod UIDs (istiod: "Kubernetes"). */
  readonly clusterId: string;
  readonly trustDomain: string;
  /** Cluster DNS domain: services are `<name>.<ns>.svc.<domain>`. */
  readonly domain: string;
  readonly rootNamespace: string;
}

export const DEFAULT_INDEX_OPTIONS: IndexOptions = {
  clusterId: "Kubernetes",
  trustDomain: "cluster.local",
  domain: "cluster.local",
  rootNamespace: "istio-system",
};

export const workloadUid = (clusterId: string, pod: { namespace: string; name: string }): string =>
  `${clusterId}//Pod/${pod.namespace}/${pod.name}`;

export const serviceHostname = (svc: { name: string; namespace: string }, domain: string): string =>
  `${svc.name}.${svc.namespace}.svc.${domain}`;

/** xDS name of a service: `<namespace>/<hostname>`. */
export const serviceKey = (svc: { name: string; namespace: string }, domain: string): string =>
  `${svc.namespace}/${serviceHostname(svc, domain)}`;

/** Raw address bytes (4 or 16), as the workload API carries IPs. */
export function ipBytes(ip: string): Uint8Array | undefined {
  const v4 = ipv4Bytes(ip);
  if (v4) return v4;
  if (!ip.includes(":")) return undefined;
  // Canonical first: an IPv6 address with an embedded IPv4 part (::ffff:10.0.0.1) becomes all hex.
  const parsed = canonicalIp(ip);
  if (!parsed || parsed.family !== 6) return undefined;
  const value = ipToBigInt(parsed.ip, 6);
  const out = new Uint8Array(16);
  for (let i = 15, v = value; i >= 0; i--, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

/** The first label present, else `fallback` (istiod's canonical service name/revision rules). */
function firstLabel(
  labels: Readonly<Record<string, string>>,
  keys: readonly string[],
  fallback: string,
): string {
  for (const k of keys) {
    const v = labels[k];
    if (v) return v;
  }
  return fallback;
}

const WORKLOAD_NAME_LABELS = ["app.kubernetes.io/name", "app"] as const;

/** A workload's name as telemetry shows it: the owning Deployment's name, approximated from labels. */
function workloadName(pod: ClusterPod): string {
  return firstLabel(pod.labels, WORKLOAD_NAME_LABELS, pod.name);
}

/**
 * A service's ports as one workload serves them: named target ports resolved against the pod
 * (without a pod, a named port is served by none).
 */
export function portsFor(svc: ClusterService, pod: ClusterPod | undefined): Port[] {
  const out: Port[] = [];
  for (const p of svc.ports) {
    if (p.protocol !== "TCP") continue;
    let target: number | undefined;
    if (typeof p.targetPort === "number") target = p.targetPort;
    else if (/^\d+$/.test(p.targetPort)) target = Number(p.targetPort);
    else
      target = pod?.containerPorts?.find(
        (c) => c.name === p.targetPort && c.protocol === "TCP",
      )?.containerPort;
    // A named port this pod does not declare: the pod does not serve that service port.
    if (target === undefined) continue;
    out.push({ servicePort: p.port, targetPort: target });
  }
  return out;
}

/**
 * A service as the workloads it selects refer to it, made once per service rather than once per
 * selected pod: its xDS name and, unless a target port is named (resolved per pod), the port list
 * every one of its workloads carries and the `services` map of a workload of this service alone —
 * objects shared by all those workloads, to be read, not changed.
 */
export interface ServiceRef {
  readonly service: ClusterService;
  /** `serviceKey(service, domain)`: the key of the workload's `services` map. */
  readonly key: string;
  readonly sharedPorts: PortList | undefined;
  readonly onlyService: Readonly<Record<string, PortList>> | undefined;
}

export function serviceRef(svc: ClusterService, opts: IndexOptions): ServiceRef {
  const named = svc.ports.some(
    (p) => p.protocol === "TCP" && typeof p.targetPort === "string" && !/^\d+$/.test(p.targetPort),
  );
  const key = serviceKey(svc, opts.domain);
  // With no named target port, portsFor does not read the pod.
  const sharedPorts = named ? undefined : { ports: portsFor(svc, undefined) };
  return {
    service: svc,
    key,
    sharedPorts,
    onlyService: sharedPorts ? { [key]: sharedPorts } : undefined,
  };
}

/** Whether a pod is a workload of the index: it has an address and is not finished. */
export function isIndexed(pod: ClusterPod): boolean {
  return (
    pod.ips.length > 0 && pod.phase !== "Succeeded" && pod.phase !== "Failed" && pod.nodeName !== undefined
  );
}

const CANONICAL_NAME_LABELS = ["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"] as const;
const CANONICAL_REVISION_LABELS = [
  "service.istio.io/canonical-revision",
  "app.kubernetes.io/version",
  "version",
] as const;

// Built for every pod of the cluster at start and for every pod event: written without spreads
// and intermediate arrays, and with fields assigned in one order so the objects share a shape.
export function buildWorkload(
  pod: ClusterPod,
  namespace: ClusterNamespace | undefined,
  services: readonly ServiceRef[],
  policyKeys: readonly string[],
  opts: IndexOptions,
  uid: string = workloadUid(opts.clusterId, pod),
): Workload {
  const addresses: Uint8Array[] = [];
  for (const ip of pod.ips) {
    const b = ipBytes(ip);
    if (b) addresses.push(b);
  }
  const name = workloadName(pod);
  const w: Workload = {
    uid,
    name: pod.name,
    namespace: pod.namespace,
    addresses,
    tunnelProtocol: isMeshed(pod, namespace) ? TunnelProtocol.HBONE : TunnelProtocol.NONE,
    trustDomain: opts.trustDomain,
    serviceAccount: pod.serviceAccount,
    canonicalName: firstLabel(pod.labels, CANONICAL_NAME_LABELS, name),
    canonicalRevision: firstLabel(pod.labels, CANONICAL_REVISION_LABELS, "latest"),
    workloadType: WorkloadType.POD,
    workloadName: name,
    status: pod.ready && !pod.terminating ? WorkloadStatus.HEALTHY : WorkloadStatus.UNHEALTHY,
    clusterId: opts.clusterId,
  };
  if (pod.nodeName) w.node = pod.nodeName;
  if (pod.hostNetwork) w.networkMode = NetworkMode.HOST_NETWORK;
  const only = services.length === 1 ? services[0]?.onlyService : undefined;
  // A record keyed by a service name costs more to make than the rest of the workload.
  if (only) w.services = only as Record<string, PortList>;
  else if (services.length > 0) {
    const servicePorts: Record<string, PortList> = {};
    const ordered =
      services.length > 1
        ? [...services].sort((a, b) => (a.service.name < b.service.name ? -1 : 1))
        : services;
    for (const s of ordered) servicePorts[s.key] = s.sharedPorts ?? { ports: portsFor(s.service, pod) };
    w.services = servicePorts;
  }
  if (policyKeys.length > 0) w.authorizationPolicies = [...policyKeys].sort();
  return w;
}

export function buildService(svc: ClusterService, opts: IndexOptions): Service {
  return {
    name: svc.name,
    namespace: svc.namespace,
    hostname: serviceHostname(svc, opts.domain),
    addresses: svc.clusterIPs
      .map(ipBytes)
      .filter((b): b is Uint8Array => b !== undefined)
      .map((address) => ({ network: "", address })),
    ports: svc.ports
      .filter((p) => p.protocol === "TCP")
      .map((p) => ({
        servicePort: p.port,
        ...(typeof p.targetPort === "number"
          ? { targetPort: p.targetPort }
          : /^\d+$/.test(p.targetPort)
            ? { targetPort: Number(p.targetPort) }
            : {}),
      })),
  };
}

/** Aliases of an address resource: `<network>/<ip>` per IP, what on-demand lookups match. */
export const ipAliases = (ips: readonly string[]): string[] =>
  ips.filter((ip) => ipBytes(ip) !== undefined).map((ip) => `/${ip}`);

const NO_ALIASES: readonly string[] = [];

/**
 * The aliases of `workload`, built from `pod`: none for a hostNetwork pod (its IP is the node's),
 * else `ipAliases(pod.ips)` — without parsing the IPs again when buildWorkload kept all of them.
 */
export function workloadAliases(pod: ClusterPod, workload: Workload): readonly string[] {
  if (pod.hostNetwork) return NO_ALIASES;
  if (workload.addresses.length === pod.ips.length) return pod.ips.map((ip) => `/${ip}`);
  return ipAliases(pod.ips);
}
