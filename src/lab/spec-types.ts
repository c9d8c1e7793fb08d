import type { Labels, ServicePort } from "../cluster/types.js";
import type { NodeRole } from "../topology/types.js";

// The resolved lab spec: every default filled in, every rule of spec-check.ts satisfied.

export interface LabNodeSpec {
  readonly name: string;
  /** The node's address on the wire (IPv4, inside `wire.subnet`). */
  readonly ip: string;
  readonly podCIDR: string;
}

export interface LabPairSpec {
  readonly cpu: LabNodeSpec;
  readonly dpu: LabNodeSpec;
}

export interface LabNamespaceSpec {
  readonly name: string;
  readonly labels: Labels;
}

export interface LabWorkloadSpec {
  readonly name: string;
  readonly namespace: string;
  readonly node: string;
  /** Default: the workload's name. */
  readonly serviceAccount: string;
  /** Default: `{app: <name>}`. */
  readonly labels: Labels;
}

export interface LabServiceSpec {
  readonly name: string;
  readonly namespace: string;
  readonly clusterIP: string;
  readonly ports: readonly ServicePort[];
  readonly selector?: Labels;
}

/** An Istio AuthorizationPolicy: `spec` as in Kubernetes, checked by the control plane's converter. */
export interface LabPolicySpec {
  readonly name: string;
  readonly namespace: string;
  readonly annotations: Labels;
  readonly spec: Readonly<Record<string, unknown>>;
}

export interface LabSpec {
  /** Prefix of every namespace, link and directory the lab creates. */
  readonly name: string;
  readonly wire: { readonly subnet: string };
  /** The name of every node's NIC (its end of the cable into the wire). */
  readonly nic: string;
  readonly pairs: readonly LabPairSpec[];
  readonly singles: readonly LabNodeSpec[];
  readonly internet: {
    /** The internet's own address, inside 203.0.113.0/24. */
    readonly address: string;
    /** Its address on the wire: the nodes' next hop to 203.0.113.0/24. Default: the subnet's last host. */
    readonly wireAddress: string;
  };
  readonly namespaces: readonly LabNamespaceSpec[];
  readonly workloads: readonly LabWorkloadSpec[];
  readonly policies: readonly LabPolicySpec[];
  readonly services: readonly LabServiceSpec[];
}

/** One node of the lab with its role, in declaration order (pairs' CPU then DPU, then singles). */
export interface LabNode extends LabNodeSpec {
  readonly role: NodeRole;
  /** Where the spec declares it: `pairs[0].cpu`, `singles[1]`. */
  readonly declaredAt: string;
}
