// The cluster as every part of offmesh sees it. Two implementations feed it: Kubernetes informers
// and the lab (later issues); `MemoryClusterSource` serves tests and `FileClusterSource` a state
// file. No consumer knows which one it talks to.

export type Labels = Readonly<Record<string, string>>;

export interface ClusterNode {
  readonly name: string;
  /** InternalIP addresses, one per family at most. */
  readonly internalIPs: readonly string[];
  /** spec.podCIDRs; empty until the node is allocated one. */
  readonly podCIDRs: readonly string[];
  readonly labels: Labels;
}

export type PodPhase = "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown";

export interface ClusterPod {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  /** spec.nodeName; absent while unscheduled. */
  readonly nodeName?: string;
  /** status.podIPs; empty until the CNI ADD has returned and the kubelet reported them. */
  readonly ips: readonly string[];
  readonly hostNetwork: boolean;
  readonly labels: Labels;
  readonly annotations: Labels;
  readonly phase: PodPhase;
  readonly ready: boolean;
  readonly serviceAccount: string;
  /** metadata.deletionTimestamp is set: the pod is terminating. */
  readonly terminating: boolean;
  /** Named container ports, for services whose targetPort is a name. */
  readonly containerPorts?: readonly ContainerPort[];
}

export interface ContainerPort {
  readonly name?: string;
  readonly containerPort: number;
  readonly protocol: "TCP" | "UDP" | "SCTP";
}

export interface ClusterNamespace {
  readonly name: string;
  readonly labels: Labels;
}

export interface ServicePort {
  readonly name?: string;
  readonly port: number;
  readonly targetPort: number | string;
  readonly protocol: "TCP" | "UDP" | "SCTP";
}

export interface ClusterService {
  readonly namespace: string;
  readonly name: string;
  readonly clusterIPs: readonly string[];
  readonly ports: readonly ServicePort[];
  /** Absent: a service without selector (endpoints managed elsewhere). */
  readonly selector?: Labels;
}

/** An Istio AuthorizationPolicy as stored; the control plane interprets `spec`. */
export interface ClusterPolicy {
  readonly namespace: string;
  readonly name: string;
  readonly spec: unknown;
}

/** The cluster description (`cluster-conf.yaml` text) and where it came from, for messages. */
export interface ClusterTopology {
  readonly text: string;
  readonly source: string;
}

export interface ClusterSnapshot {
  readonly nodes: ReadonlyMap<string, ClusterNode>;
  /** Keyed by uid. */
  readonly pods: ReadonlyMap<string, ClusterPod>;
  readonly namespaces: ReadonlyMap<string, ClusterNamespace>;
  /** Keyed by `namespace/name`. */
  readonly services: ReadonlyMap<string, ClusterService>;
  /** Keyed by `namespace/name`. */
  readonly policies: ReadonlyMap<string, ClusterPolicy>;
  readonly topology?: ClusterTopology;
}

export type ClusterEvent =
  | { readonly kind: "node"; readonly type: "upsert" | "delete"; readonly object: ClusterNode }
  | { readonly kind: "pod"; readonly type: "upsert" | "delete"; readonly object: ClusterPod }
  | { readonly kind: "namespace"; readonly type: "upsert" | "delete"; readonly object: ClusterNamespace }
  | { readonly kind: "service"; readonly type: "upsert" | "delete"; readonly object: ClusterService }
  | { readonly kind: "policy"; readonly type: "upsert" | "delete"; readonly object: ClusterPolicy }
  | { readonly kind: "topology"; readonly type: "upsert"; readonly object: ClusterTopology };

export type Unsubscribe = () => void;

export interface ClusterSource {
  /** Resolves once the first full view of the cluster is loaded. */
  start(): Promise<void>;
  /** The current view. Cheap: consumers call it on every event. */
  snapshot(): ClusterSnapshot;
  /** Events after start, in order. */
  subscribe(listener: (event: ClusterEvent) => void): Unsubscribe;
  stop(): Promise<void>;
}

export const serviceKey = (o: { namespace: string; name: string }): string => `${o.namespace}/${o.name}`;
