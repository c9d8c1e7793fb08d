import { isIPv4, isIPv6 } from "node:net";
import { meshDecision } from "../../cluster/membership.js";
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
  if (isIPv4(ip)) return Uint8Array.from(ip.split(".").map(Number));
  if (!isIPv6(ip) || ip.includes("%")) return undefined;
  const [head = "", tail = ""] = ip.split("::");
  const h = head === "" ? [] : head.split(":");
  const t = ip.includes("::") ? (tail === "" ? [] : tail.split(":")) : [];
  const groups = ip.includes("::") ? [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t] : h;
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
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

/** A workload's name as telemetry shows it: the owning Deployment's name, approximated from labels. */
function workloadName(pod: ClusterPod): string {
  return firstLabel(pod.labels, ["app.kubernetes.io/name", "app"], pod.name);
}

export const selects = (
  selector: Readonly<Record<string, string>> | undefined,
  labels: Readonly<Record<string, string>>,
): boolean =>
  selector !== undefined &&
  Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels[k] === v);

/** A service's ports as one workload serves them: named target ports resolved against the pod. */
export function portsFor(svc: ClusterService, pod: ClusterPod): Port[] {
  const out: Port[] = [];
  for (const p of svc.ports) {
    if (p.protocol !== "TCP") continue;
    let target: number | undefined;
    if (typeof p.targetPort === "number") target = p.targetPort;
    else if (/^\d+$/.test(p.targetPort)) target = Number(p.targetPort);
    else
      target = pod.containerPorts?.find(
        (c) => c.name === p.targetPort && c.protocol === "TCP",
      )?.containerPort;
    // A named port this pod does not declare: the pod does not serve that service port.
    if (target === undefined) continue;
    out.push({ servicePort: p.port, targetPort: target });
  }
  return out;
}

/** Whether a pod is a workload of the index: it has an address and is not finished. */
export function isIndexed(pod: ClusterPod): boolean {
  return (
    pod.ips.length > 0 && pod.phase !== "Succeeded" && pod.phase !== "Failed" && pod.nodeName !== undefined
  );
}

export function buildWorkload(
  pod: ClusterPod,
  namespace: ClusterNamespace | undefined,
  services: readonly ClusterService[],
  policyKeys: readonly string[],
  opts: IndexOptions,
): Workload {
  const meshed = meshDecision(pod, namespace).meshed;
  const addresses = pod.ips.map(ipBytes).filter((b): b is Uint8Array => b !== undefined);
  const servicePorts: Record<string, PortList> = {};
  for (const svc of [...services].sort((a, b) => (a.namespace + a.name < b.namespace + b.name ? -1 : 1))) {
    servicePorts[serviceKey(svc, opts.domain)] = { ports: portsFor(svc, pod) };
  }
  const w: Workload = {
    uid: workloadUid(opts.clusterId, pod),
    name: pod.name,
    namespace: pod.namespace,
    addresses,
    tunnelProtocol: meshed ? TunnelProtocol.HBONE : TunnelProtocol.NONE,
    trustDomain: opts.trustDomain,
    serviceAccount: pod.serviceAccount,
    ...(pod.nodeName ? { node: pod.nodeName } : {}),
    canonicalName: firstLabel(
      pod.labels,
      ["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"],
      workloadName(pod),
    ),
    canonicalRevision: firstLabel(
      pod.labels,
      ["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"],
      "latest",
    ),
    workloadType: WorkloadType.POD,
    workloadName: workloadName(pod),
    status: pod.ready && !pod.terminating ? WorkloadStatus.HEALTHY : WorkloadStatus.UNHEALTHY,
    clusterId: opts.clusterId,
    ...(pod.hostNetwork ? { networkMode: NetworkMode.HOST_NETWORK } : {}),
  };
  if (Object.keys(servicePorts).length > 0) w.services = servicePorts;
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
