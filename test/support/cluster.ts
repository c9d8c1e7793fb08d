import { readFileSync } from "node:fs";
import type { ClusterNamespace, ClusterNode, ClusterPod } from "../../src/cluster/types.js";
import { fromRoot } from "./paths.js";

// Builders of cluster objects for tests: every field a real one has, overridable.

export function pod(p: Partial<ClusterPod> & Pick<ClusterPod, "uid" | "name" | "namespace">): ClusterPod {
  return {
    ips: [],
    hostNetwork: false,
    labels: {},
    annotations: {},
    phase: "Running",
    ready: true,
    serviceAccount: "default",
    terminating: false,
    ...p,
  };
}

export function namespace(name: string, labels: Record<string, string> = {}): ClusterNamespace {
  return { name, labels };
}

export const ambient = (name: string): ClusterNamespace =>
  namespace(name, { "istio.io/dataplane-mode": "ambient" });

export function clusterNode(name: string, ip: string, podCIDR: string): ClusterNode {
  return { name, internalIPs: [ip], podCIDRs: [podCIDR], labels: {} };
}

/** The seed cluster's nodes with the pod CIDRs of examples/seed. */
export const SEED_NODES: readonly ClusterNode[] = [
  clusterNode("master", "192.168.50.130", "10.244.0.0/24"),
  clusterNode("master-dpu", "192.168.50.131", "10.244.1.0/24"),
  clusterNode("worker1-dpu", "192.168.50.128", "10.244.2.0/24"),
  clusterNode("worker1", "192.168.50.133", "10.244.3.0/24"),
];

export const seedTopologyText = (): string =>
  readFileSync(fromRoot("examples/seed/cluster-conf.yaml"), "utf8");
