import { existsSync, readFileSync } from "node:fs";
import { labGet } from "../cluster/lab-client.js";
import { isMeshed, isZtunnel } from "../cluster/membership.js";
import type { ClusterNamespace, ClusterPod } from "../cluster/types.js";
import { DEFAULT_TRUST_DOMAIN, formatSpiffeId } from "../identity/spiffe.js";
import {
  labStateDir,
  labStatePaths,
  nodeNetns,
  podNetns,
  ZTUNNEL_NAMESPACE,
  ztunnelComponent,
  ztunnelPodName,
} from "./names.js";
import type { LabStatePaths } from "./names.js";
import { labNodes, resolveSpec } from "./spec.js";
import type { LabNode, LabSpec } from "./spec.js";

// A running lab as the checks see it: its spec, the pods the API shows, and for every pod where it
// lives, which ztunnel serves it and the identity it has. `castOf` picks the pods that play each
// part of the walks, preferring the default spec's names so its report reads naturally.

export class LabViewError extends Error {
  constructor(
    readonly lab: string,
    message: string,
  ) {
    super(`lab ${lab}: ${message}`);
    this.name = "LabViewError";
  }
}

export interface LabPodView {
  readonly namespace: string;
  readonly name: string;
  /** `namespace/name`. */
  readonly ref: string;
  readonly node: LabNode;
  readonly ip: string;
  readonly netns: string;
  readonly meshed: boolean;
  readonly identity: string;
  readonly uid: string;
}

export interface LabView {
  readonly lab: string;
  readonly paths: LabStatePaths;
  readonly spec: LabSpec;
  readonly nodes: readonly LabNode[];
  readonly pods: readonly LabPodView[];
  readonly namespaces: readonly ClusterNamespace[];
}

export async function loadLabView(lab: string): Promise<LabView> {
  const paths = labStatePaths(labStateDir(lab));
  if (!existsSync(paths.spec))
    throw new LabViewError(
      lab,
      `no lab of that name is up (no ${paths.spec}); start one with: offmesh lab up --name ${lab}`,
    );
  const resolved = resolveSpec(readFileSync(paths.spec, "utf8"), paths.spec);
  if ("issues" in resolved) throw new LabViewError(lab, `its spec ${paths.spec} does not read back`);
  const spec = resolved.spec;
  const got = await labGet(paths.apiSocket, 5_000).catch((err: unknown) => ({
    ok: false as const,
    error: (err as Error).message,
  }));
  if (!got.ok) throw new LabViewError(lab, `the lab API does not answer: ${got.error}`);
  const nodes = labNodes(spec);
  const namespaces = got.state.namespaces;
  const pods = got.state.pods
    .filter((p) => !isZtunnel(p) && p.phase === "Running" && !p.terminating)
    .flatMap((p) => {
      const view = podView(lab, nodes, namespaces, p);
      return view ? [view] : [];
    });
  return { lab, paths, spec, nodes, pods, namespaces };
}

export function podView(
  lab: string,
  nodes: readonly LabNode[],
  namespaces: readonly ClusterNamespace[],
  p: ClusterPod,
): LabPodView | undefined {
  const node = nodes.find((n) => n.name === p.nodeName);
  const ip = p.ips[0];
  if (!node || !ip) return undefined;
  return {
    namespace: p.namespace,
    name: p.name,
    ref: `${p.namespace}/${p.name}`,
    node,
    ip,
    netns: podNetns(lab, node.name, p.namespace, p.name),
    meshed: isMeshed(
      p,
      namespaces.find((n) => n.name === p.namespace),
    ),
    identity: spiffeOf(p.namespace, p.serviceAccount),
    uid: p.uid,
  };
}

export const spiffeOf = (namespace: string, serviceAccount: string): string =>
  formatSpiffeId({ trustDomain: DEFAULT_TRUST_DOMAIN, namespace, serviceAccount });

/** The node whose ztunnel serves `node`'s pods: a CPU's DPU, else the node itself. */
export function servingNode(spec: LabSpec, node: string): string {
  return spec.pairs.find((p) => p.cpu.name === node)?.dpu.name ?? node;
}

export interface ZtunnelView {
  readonly node: string;
  readonly component: string;
  readonly netns: string;
}

export function ztunnelOf(view: LabView, node: string): ZtunnelView {
  const serving = servingNode(view.spec, node);
  return {
    node: serving,
    component: ztunnelComponent(serving),
    netns: podNetns(view.lab, serving, ZTUNNEL_NAMESPACE, ztunnelPodName(serving)),
  };
}

export const nodeNetnsOf = (view: LabView, node: string): string => nodeNetns(view.lab, node);

/** The pods that play each part of the walks; a part no pod can play is absent. */
export interface Cast {
  /** Meshed, on a CPU node. */
  readonly client?: LabPodView;
  /** Meshed, on another CPU node. */
  readonly remote?: LabPodView;
  /** Meshed, on the client's node. */
  readonly neighbour?: LabPodView;
  /** Not meshed, on the client's node. */
  readonly plainNeighbour?: LabPodView;
  /** Not meshed, on the client's node, to act as a source (may be plainNeighbour itself). */
  readonly plainSource?: LabPodView;
  /** Not meshed, on another node. */
  readonly plainRemote?: LabPodView;
  /** Meshed, on a single node. */
  readonly single?: LabPodView;
}

/** The first of `pods` matching `ok`, those named `preferred` first. */
function pick(
  pods: readonly LabPodView[],
  preferred: string,
  ok: (p: LabPodView) => boolean,
): LabPodView | undefined {
  const fits = pods.filter(ok);
  return fits.find((p) => p.name === preferred) ?? fits[0];
}

export function castOf(view: LabView): Cast {
  const pods = view.pods;
  const onCpu = (p: LabPodView): boolean => p.node.role === "cpu";
  // The client wants a meshed peer on another CPU: prefer a client that has one.
  const hasRemote = (c: LabPodView): boolean =>
    pods.some((p) => p.meshed && onCpu(p) && p.node.name !== c.node.name);
  const client =
    pick(pods, "client", (p) => p.meshed && onCpu(p) && hasRemote(p)) ??
    pick(pods, "client", (p) => p.meshed && onCpu(p));
  const parts: Record<string, LabPodView | undefined> = { client };
  if (client) {
    const here = (p: LabPodView): boolean => p.node.name === client.node.name && p !== client;
    parts["remote"] = pick(pods, "server", (p) => p.meshed && onCpu(p) && p.node.name !== client.node.name);
    parts["neighbour"] = pick(pods, "neighbour", (p) => p.meshed && here(p));
    parts["plainNeighbour"] = pick(pods, "neighbour", (p) => !p.meshed && here(p));
    parts["plainSource"] = pick(pods, "client", (p) => !p.meshed && here(p));
    parts["plainRemote"] = pick(pods, "server", (p) => !p.meshed && p.node.name !== client.node.name);
  }
  parts["single"] = pick(pods, "edge", (p) => p.meshed && p.node.role === "single");
  for (const k of Object.keys(parts)) if (parts[k] === undefined) delete parts[k];
  return parts as Cast;
}
