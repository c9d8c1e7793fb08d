// Plain-object shapes of the workload API messages, as protobufjs encodes and decodes them:
// camelCase field names, bytes as Uint8Array, enums as numbers, absent fields omitted.

export const TYPE_URL = {
  address: "type.googleapis.com/istio.workload.Address",
  authorization: "type.googleapis.com/istio.security.Authorization",
  servedNodes: "type.googleapis.com/offmesh.v1.ServedNodes",
} as const;

export type TypeUrl = (typeof TYPE_URL)[keyof typeof TYPE_URL];

export const TunnelProtocol = { NONE: 0, HBONE: 1, LEGACY_ISTIO_MTLS: 2 } as const;
export const WorkloadStatus = { HEALTHY: 0, UNHEALTHY: 1 } as const;
export const WorkloadType = { DEPLOYMENT: 0, CRONJOB: 1, POD: 2, JOB: 3 } as const;
export const NetworkMode = { STANDARD: 0, HOST_NETWORK: 1 } as const;
export const AppProtocol = { UNKNOWN: 0, HTTP11: 1, HTTP2: 2, GRPC: 3, TCP: 4, TLS: 5 } as const;
export const AuthzScope = { GLOBAL: 0, NAMESPACE: 1, WORKLOAD_SELECTOR: 2 } as const;
export const AuthzAction = { ALLOW: 0, DENY: 1 } as const;

export interface NetworkAddress {
  network?: string;
  address: Uint8Array;
  length?: number;
}

export interface Port {
  servicePort: number;
  targetPort?: number;
  appProtocol?: number;
}

export interface PortList {
  ports: Port[];
}

export interface NamespacedHostname {
  namespace: string;
  hostname: string;
}

export interface GatewayAddress {
  hostname?: NamespacedHostname;
  address?: NetworkAddress;
  hboneMtlsPort?: number;
}

export interface Workload {
  uid: string;
  name: string;
  namespace: string;
  addresses: Uint8Array[];
  hostname?: string;
  network?: string;
  tunnelProtocol?: number;
  trustDomain?: string;
  serviceAccount?: string;
  waypoint?: GatewayAddress;
  node?: string;
  canonicalName?: string;
  canonicalRevision?: string;
  workloadType?: number;
  workloadName?: string;
  services?: Record<string, PortList>;
  authorizationPolicies?: string[];
  status?: number;
  clusterId?: string;
  networkMode?: number;
  capacity?: { value: number };
}

export interface Service {
  name: string;
  namespace: string;
  hostname: string;
  addresses: NetworkAddress[];
  ports: Port[];
  subjectAltNames?: string[];
  waypoint?: GatewayAddress;
  loadBalancing?: { routingPreference?: number[]; mode?: number; healthPolicy?: number };
  ipFamilies?: number;
  canonical?: boolean;
}

/** `Address` is a oneof: exactly one of the two is set. */
export interface Address {
  workload?: Workload;
  service?: Service;
}

export interface StringMatch {
  exact?: string;
  prefix?: string;
  suffix?: string;
  /** google.protobuf.Empty: presence of any value. */
  presence?: Record<string, never>;
}

export interface AuthzAddress {
  address: Uint8Array;
  length: number;
}

export interface ServiceAccountMatch {
  namespace: string;
  serviceAccount: string;
}

export interface Match {
  namespaces?: StringMatch[];
  notNamespaces?: StringMatch[];
  serviceAccounts?: ServiceAccountMatch[];
  notServiceAccounts?: ServiceAccountMatch[];
  principals?: StringMatch[];
  notPrincipals?: StringMatch[];
  sourceIps?: AuthzAddress[];
  notSourceIps?: AuthzAddress[];
  destinationIps?: AuthzAddress[];
  notDestinationIps?: AuthzAddress[];
  destinationPorts?: number[];
  notDestinationPorts?: number[];
}

export interface Clause {
  matches: Match[];
}

export interface Rule {
  clauses: Clause[];
}

export interface Authorization {
  name: string;
  namespace: string;
  scope: number;
  action: number;
  rules: Rule[];
  dryRun?: boolean;
}

export interface ServedNodes {
  node: string;
  nodes: string[];
  reason?: string;
}
