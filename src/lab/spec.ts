import { stringify } from "yaml";
import type {
  ClusterNamespace,
  ClusterNode,
  ClusterPolicy,
  ClusterService,
  Labels,
} from "../cluster/types.js";
import type { ConfigIssue } from "../configfile/issues.js";
import { YamlSource } from "../configfile/yamldoc.js";
import type { NodeRole } from "../topology/types.js";
import {
  labNameProblem,
  ZTUNNEL_LABELS,
  ZTUNNEL_NAMESPACE,
  ZTUNNEL_SERVICE_ACCOUNT,
  ztunnelPodName,
} from "./names.js";
import { checkSpec, defaultInternetWireAddress } from "./spec-check.js";
import { labSpecSchema } from "./spec-schema.js";
import { reportProblems, reportZodIssues } from "./spec-yaml.js";
import type { LabNode, LabSpec } from "./spec-types.js";

export type * from "./spec-types.js";
export { DEFAULT_SPEC_FILE, DEFAULT_SPEC_TEXT } from "./spec-default.js";
export { DEFAULT_INTERNET_ADDRESS, DEFAULT_NIC, DEFAULT_WIRE_SUBNET, INTERNET_CIDR } from "./spec-schema.js";

export type SpecResolution = { spec: LabSpec } | { issues: ConfigIssue[] };

export interface SpecOverrides {
  /** `--name`: replaces the spec's `name`. */
  readonly name?: string;
}

/**
 * Parse and validate a lab spec (lab.yaml) and fill in its defaults. Every problem is reported,
 * each with file, line, column and field; nothing partial is returned.
 */
export function resolveSpec(text: string, file: string, overrides: SpecOverrides = {}): SpecResolution {
  const nameProblem = overrides.name === undefined ? undefined : labNameProblem(overrides.name);
  // The flag is not in the file: its issue names the flag and comes first.
  const withFlags = (fileIssues: readonly ConfigIssue[]): ConfigIssue[] => [
    ...(nameProblem ? [{ file: "--name", field: "name", message: nameProblem }] : []),
    ...inFileOrder(fileIssues),
  ];
  const src = new YamlSource(file, text);
  if (!src.wellFormed) return { issues: withFlags(src.issues) };
  const parsed = labSpecSchema.safeParse(src.doc.toJS() ?? {});
  if (!parsed.success) {
    reportZodIssues(src, parsed.error, labSpecSchema);
    return { issues: withFlags(src.issues) };
  }
  const fields = parsed.data;
  const spec: LabSpec = {
    ...fields,
    name: overrides.name ?? fields.name,
    internet: {
      address: fields.internet.address,
      wireAddress: fields.internet.wireAddress ?? defaultInternetWireAddress(fields.wire.subnet) ?? "",
    },
  };
  reportProblems(src, checkSpec(spec));
  const issues = withFlags(src.issues);
  return issues.length > 0 ? { issues } : { spec };
}

/** Issues from top to bottom of the file, whole-file ones first; the order they were found otherwise. */
function inFileOrder(issues: readonly ConfigIssue[]): ConfigIssue[] {
  return [...issues].sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
}

/** The resolved spec as YAML (the lab's state dir keeps it); `resolveSpec` reads it back unchanged. */
export function formatSpec(spec: LabSpec): string {
  return `# The resolved spec of lab "${spec.name}": defaults filled in.\n${stringify(spec)}`;
}

/** The lab's nodes with their roles: each pair's CPU then DPU, then the singles. */
export function labNodes(spec: LabSpec): LabNode[] {
  const out: LabNode[] = [];
  spec.pairs.forEach((p, i) => {
    out.push({ ...p.cpu, role: "cpu", declaredAt: `pairs[${i}].cpu` });
    out.push({ ...p.dpu, role: "dpu", declaredAt: `pairs[${i}].dpu` });
  });
  spec.singles.forEach((s, i) => out.push({ ...s, role: "single", declaredAt: `singles[${i}]` }));
  return out;
}

/** The node the control plane runs on: the first pair's CPU, or the first single without pairs. */
export function controlPlaneNode(spec: LabSpec): LabNode {
  const nodes = labNodes(spec);
  const node = nodes.find((n) => n.role === "cpu") ?? nodes[0];
  // resolveSpec rejects a spec without nodes.
  if (!node) throw new Error(`lab "${spec.name}" has no nodes`);
  return node;
}

/** The `cluster-conf.yaml` of the lab, as the topology parser (src/topology) reads it. */
export function topologyText(spec: LabSpec): string {
  const doc: Record<string, unknown> = {};
  if (spec.pairs.length > 0)
    doc["pairs"] = spec.pairs.map((p) => ({
      cpuNodeIP: p.cpu.ip,
      dpuNodeIP: p.dpu.ip,
      cpuNodeName: p.cpu.name,
      dpuNodeName: p.dpu.name,
    }));
  if (spec.singles.length > 0) doc["singles"] = spec.singles.map((s) => ({ nodeIP: s.ip, nodeName: s.name }));
  return `# cluster-conf.yaml of lab "${spec.name}", generated from its spec.\n${stringify(doc)}`;
}

/** The node label the original offMesh install put on nodes by hand (`kubectl label nodes`). */
export const NODE_TYPE_LABEL = "offMeshNodeType";

export function nodeLabels(name: string, role: NodeRole): Labels {
  return { "kubernetes.io/hostname": name, [NODE_TYPE_LABEL]: role };
}

export function clusterNodes(spec: LabSpec): ClusterNode[] {
  return labNodes(spec).map((n) => ({
    name: n.name,
    internalIPs: [n.ip],
    podCIDRs: [n.podCIDR],
    labels: nodeLabels(n.name, n.role),
  }));
}

/** The spec's namespaces, plus the ztunnels' namespace when the spec does not list it. */
export function clusterNamespaces(spec: LabSpec): ClusterNamespace[] {
  const out = spec.namespaces.map((n) => ({ name: n.name, labels: { ...n.labels } }));
  if (!out.some((n) => n.name === ZTUNNEL_NAMESPACE)) out.push({ name: ZTUNNEL_NAMESPACE, labels: {} });
  return out;
}

export function clusterServices(spec: LabSpec): ClusterService[] {
  return spec.services.map((s) => ({
    namespace: s.namespace,
    name: s.name,
    clusterIPs: [s.clusterIP],
    ports: s.ports.map((p) => ({ ...p })),
    ...(s.selector ? { selector: { ...s.selector } } : {}),
  }));
}

export function clusterPolicies(spec: LabSpec): (ClusterPolicy & { readonly annotations: Labels })[] {
  return spec.policies.map((p) => ({
    namespace: p.namespace,
    name: p.name,
    annotations: { ...p.annotations },
    spec: p.spec,
  }));
}

/** A pod the lab creates: a workload of the spec, or a ztunnel. */
export interface LabPod {
  readonly name: string;
  readonly namespace: string;
  readonly node: string;
  readonly serviceAccount: string;
  readonly labels: Labels;
}

/** One ztunnel pod per DPU and per single: the spec never lists them. */
export function ztunnelPods(spec: LabSpec): LabPod[] {
  return labNodes(spec)
    .filter((n) => n.role !== "cpu")
    .map((n) => ({
      name: ztunnelPodName(n.name),
      namespace: ZTUNNEL_NAMESPACE,
      node: n.name,
      serviceAccount: ZTUNNEL_SERVICE_ACCOUNT,
      labels: { ...ZTUNNEL_LABELS },
    }));
}

export function workloadPods(spec: LabSpec): LabPod[] {
  return spec.workloads.map((w) => ({ ...w, labels: { ...w.labels } }));
}
