import type {
  Authorization,
  AuthzAddress,
  GatewayAddress,
  Match,
  Port,
  Service,
  StringMatch,
  Workload,
} from "../../xds/types.js";
import { canonicalIpText } from "./ip.js";
import { identityOf } from "./identity.js";

// JSON renderings of state for the admin config dump, shaped like upstream ztunnel's
// (camelCase keys, IPs as text, enums by name), plus what offmesh adds (servedHere, identity).

export interface WorkloadDump {
  uid: string;
  workloadIps: string[];
  protocol: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  workloadName: string;
  workloadType: string;
  canonicalName: string;
  canonicalRevision: string;
  clusterId: string;
  trustDomain: string;
  node: string;
  network: string;
  status: string;
  networkMode: string;
  hostname?: string;
  waypoint?: GatewayDump;
  capacity?: number;
  /** Service key → service port → target port. */
  services: Record<string, Record<string, number>>;
  authorizationPolicies: string[];
  identity: string;
  servedHere: boolean;
}

export interface GatewayDump {
  destination: string;
  hboneMtlsPort?: number;
}

export interface ServiceDump {
  name: string;
  namespace: string;
  hostname: string;
  /** `<network>/<ip>`. */
  vips: string[];
  ports: Record<string, number>;
  endpoints: Record<
    string,
    { workloadUid: string; service: string; status: string; port: Record<string, number> }
  >;
  subjectAltNames: string[];
  waypoint?: GatewayDump;
  ipFamilies?: string;
}

export interface PolicyDump {
  name: string;
  namespace: string;
  scope: string;
  action: string;
  dryRun: boolean;
  /** Rules → clauses → matches, as upstream nests them. */
  rules: Record<string, unknown>[][][];
}

const PROTOCOLS = ["NONE", "HBONE", "LEGACY_ISTIO_MTLS"];
const STATUSES = ["Healthy", "Unhealthy"];
const WORKLOAD_TYPES = ["deployment", "cronjob", "pod", "job"];
const NETWORK_MODES = ["Standard", "HostNetwork"];
const SCOPES = ["Global", "Namespace", "WorkloadSelector"];
const ACTIONS = ["Allow", "Deny"];
const IP_FAMILIES = ["Automatic", "IPv4", "IPv6", "Dual"];

const enumName = (names: readonly string[], value: number | undefined): string =>
  names[value ?? 0] ?? `Unknown(${value})`;

const ipText = (bytes: Uint8Array): string => canonicalIpText(bytes) ?? `invalid(${bytes.length} bytes)`;

function portMap(ports: readonly Port[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of ports) out[String(p.servicePort)] ??= p.targetPort || p.servicePort;
  return out;
}

function gateway(g: GatewayAddress | undefined): GatewayDump | undefined {
  if (g === undefined) return undefined;
  const destination =
    g.address !== undefined
      ? `${g.address.network ?? ""}/${ipText(g.address.address)}`
      : g.hostname !== undefined
        ? `${g.hostname.namespace}/${g.hostname.hostname}`
        : "";
  return { destination, ...(g.hboneMtlsPort ? { hboneMtlsPort: g.hboneMtlsPort } : {}) };
}

export function dumpWorkload(w: Workload, servedHere: boolean): WorkloadDump {
  const services: Record<string, Record<string, number>> = {};
  for (const [key, list] of Object.entries(w.services ?? {})) services[key] = portMap(list.ports);
  const waypoint = gateway(w.waypoint);
  return {
    uid: w.uid,
    workloadIps: w.addresses.map(ipText),
    protocol: enumName(PROTOCOLS, w.tunnelProtocol),
    name: w.name,
    namespace: w.namespace,
    serviceAccount: w.serviceAccount || "default",
    workloadName: w.workloadName ?? "",
    workloadType: enumName(WORKLOAD_TYPES, w.workloadType),
    canonicalName: w.canonicalName ?? "",
    canonicalRevision: w.canonicalRevision ?? "",
    clusterId: w.clusterId ?? "",
    trustDomain: w.trustDomain || "cluster.local",
    node: w.node ?? "",
    network: w.network ?? "",
    status: enumName(STATUSES, w.status),
    networkMode: enumName(NETWORK_MODES, w.networkMode),
    ...(w.hostname ? { hostname: w.hostname } : {}),
    ...(waypoint ? { waypoint } : {}),
    ...(w.capacity !== undefined ? { capacity: w.capacity.value } : {}),
    services,
    authorizationPolicies: [...(w.authorizationPolicies ?? [])],
    identity: identityOf(w),
    servedHere,
  };
}

export function dumpService(s: Service, key: string, members: Iterable<Workload>): ServiceDump {
  const endpoints: ServiceDump["endpoints"] = {};
  for (const w of members) {
    endpoints[w.uid] = {
      workloadUid: w.uid,
      service: key,
      status: enumName(STATUSES, w.status),
      port: portMap(w.services?.[key]?.ports ?? []),
    };
  }
  const waypoint = gateway(s.waypoint);
  return {
    name: s.name,
    namespace: s.namespace,
    hostname: s.hostname,
    vips: s.addresses.map((a) => `${a.network ?? ""}/${ipText(a.address)}`),
    ports: portMap(s.ports),
    endpoints,
    subjectAltNames: [...(s.subjectAltNames ?? [])],
    ...(waypoint ? { waypoint } : {}),
    ...(s.ipFamilies !== undefined ? { ipFamilies: enumName(IP_FAMILIES, s.ipFamilies) } : {}),
  };
}

function stringMatch(m: StringMatch): Record<string, string> {
  if (m.exact !== undefined) return { exact: m.exact };
  if (m.prefix !== undefined) return { prefix: m.prefix };
  if (m.suffix !== undefined) return { suffix: m.suffix };
  return { presence: "*" };
}

const cidr = (a: AuthzAddress): string => `${ipText(a.address)}/${a.length}`;

function match(m: Match): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const put = <T>(field: keyof Match, list: readonly T[] | undefined, render: (v: T) => unknown): void => {
    if (list !== undefined && list.length > 0) out[field] = list.map(render);
  };
  put("namespaces", m.namespaces, stringMatch);
  put("notNamespaces", m.notNamespaces, stringMatch);
  put("principals", m.principals, stringMatch);
  put("notPrincipals", m.notPrincipals, stringMatch);
  put("serviceAccounts", m.serviceAccounts, (s) => `${s.namespace}/${s.serviceAccount}`);
  put("notServiceAccounts", m.notServiceAccounts, (s) => `${s.namespace}/${s.serviceAccount}`);
  put("sourceIps", m.sourceIps, cidr);
  put("notSourceIps", m.notSourceIps, cidr);
  put("destinationIps", m.destinationIps, cidr);
  put("notDestinationIps", m.notDestinationIps, cidr);
  put("destinationPorts", m.destinationPorts, (p) => p);
  put("notDestinationPorts", m.notDestinationPorts, (p) => p);
  return out;
}

export function dumpPolicy(p: Authorization): PolicyDump {
  return {
    name: p.name,
    namespace: p.namespace,
    scope: enumName(SCOPES, p.scope),
    action: enumName(ACTIONS, p.action),
    dryRun: p.dryRun === true,
    rules: p.rules.map((r) => r.clauses.map((c) => c.matches.map(match))),
  };
}
