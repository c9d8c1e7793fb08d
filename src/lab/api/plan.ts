import { isDeepStrictEqual } from "node:util";
import { convertPolicy } from "../../controlplane/policy.js";
import { bigIntToIp } from "../../configfile/net.js";
import type { Cidr } from "../../configfile/net.js";
import type {
  ClusterEvent,
  ClusterNamespace,
  ClusterNode,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
  ClusterSnapshot,
  ClusterTopology,
} from "../../cluster/types.js";
import { parseTopology } from "../../topology/index.js";
import type { AppliedObject, CheckedObject, DeletedObject, ObjectRef } from "./protocol.js";
import type { ApiIssue, ObjectKind, PodApply, ServiceApply } from "./schema.js";

// What a request does to the cluster, decided without touching it: the events that turn the
// current state into the next one, or every reason the request cannot be done. All or nothing —
// the server commits the events only when there is no issue.

export interface PlanContext {
  /** Where clusterIPs of services applied without one come from. */
  readonly serviceCIDR: Cidr;
  /** A uid for a pod that has none (randomUUID in the server; fixed in tests). */
  readonly newUid: () => string;
}

export type Plan<R> =
  | { readonly ok: true; readonly events: ClusterEvent[]; readonly results: R[] }
  | { readonly ok: false; readonly issues: ApiIssue[] };

const key = (o: { namespace: string; name: string }): string => `${o.namespace}/${o.name}`;
const NAMESPACED: ReadonlySet<ObjectKind> = new Set(["pod", "service", "policy"]);

export function describeRef(ref: { kind: ObjectKind; namespace?: string; name: string }): string {
  return `${ref.kind} ${ref.namespace !== undefined ? `${ref.namespace}/` : ""}${ref.name}`;
}

const refOf = (c: CheckedObject): ObjectRef =>
  NAMESPACED.has(c.kind)
    ? { kind: c.kind, namespace: (c.object as { namespace: string }).namespace, name: c.object.name }
    : { kind: c.kind, name: c.object.name };

/** Pods keyed by namespace/name, the way a request names them (the state keys them by uid). */
function podsByName(pods: Iterable<ClusterPod>): Map<string, ClusterPod> {
  return new Map([...pods].map((p) => [key(p), p]));
}

/**
 * Create or update `objects`. Within one request the order does not matter: a pod may come
 * before the namespace and node it refers to. Each object may appear once.
 */
export function planApply(
  state: ClusterSnapshot,
  objects: readonly CheckedObject[],
  ctx: PlanContext,
): Plan<AppliedObject> {
  const issues: ApiIssue[] = [];
  const issue = (index: number, field: string, message: string): void =>
    void issues.push({ index, field, message });

  const seen = new Map<string, number>();
  objects.forEach((o, index) => {
    const id = describeRef(refOf(o));
    const first = seen.get(id);
    if (first !== undefined)
      issue(index, "name", `${id} is also at objects[${first}]; give each object once`);
    else seen.set(id, index);
  });
  if (issues.length > 0) return { ok: false, issues };

  const of = <K extends ObjectKind>(kind: K) =>
    objects.flatMap((o, index) =>
      o.kind === kind ? [{ index, object: o.object as Extract<CheckedObject, { kind: K }>["object"] }] : [],
    );
  const namespaces = new Map(state.namespaces);
  for (const { object } of of("namespace")) namespaces.set(object.name, object);
  const nodes = new Map(state.nodes);
  for (const { object } of of("node")) nodes.set(object.name, object);

  const needNamespace = (index: number, namespace: string): void => {
    if (!namespaces.has(namespace))
      issue(
        index,
        "namespace",
        `namespace "${namespace}" does not exist; create it first (or in the same request)`,
      );
  };

  const services = planServices(state, of("service"), ctx, issue);
  for (const { index, object } of of("service")) needNamespace(index, object.namespace);

  const policies = new Map<number, ClusterPolicy>();
  for (const { index, object } of of("policy")) {
    needNamespace(index, object.namespace);
    const converted = convertPolicy(object, { rootNamespace: "istio-system" });
    if ("error" in converted)
      for (const p of policyProblems(converted.error)) issue(index, p.field, p.message);
    policies.set(index, object);
  }

  const pods = planPods(state, of("pod"), nodes, ctx, issue);
  for (const { index, object } of of("pod")) {
    needNamespace(index, object.namespace);
    if (object.nodeName !== undefined && !nodes.has(object.nodeName))
      issue(index, "nodeName", `node "${object.nodeName}" does not exist`);
  }
  // In the order of the request, which is the order of the manifest.
  if (issues.length > 0) return { ok: false, issues: issues.sort((x, y) => (x.index ?? 0) - (y.index ?? 0)) };

  // Events in dependency order, so that a consumer never sees a pod before its namespace and node.
  const events: ClusterEvent[] = [];
  const results: AppliedObject[] = [];
  const record = <O>(kind: ObjectKind, current: O | undefined, next: O, push: (o: O) => void): void => {
    const action =
      current === undefined ? "created" : isDeepStrictEqual(current, next) ? "unchanged" : "configured";
    if (action !== "unchanged") push(next);
    const o = next as unknown as AppliedObject["object"] & { namespace?: string; name: string };
    results.push({
      kind,
      ...(NAMESPACED.has(kind) ? { namespace: o.namespace } : {}),
      name: o.name,
      action,
      object: o,
    });
  };
  for (const { object } of of("namespace"))
    record<ClusterNamespace>("namespace", state.namespaces.get(object.name), object, (o) =>
      events.push({ kind: "namespace", type: "upsert", object: o }),
    );
  for (const { object } of of("node"))
    record<ClusterNode>("node", state.nodes.get(object.name), object, (o) =>
      events.push({ kind: "node", type: "upsert", object: o }),
    );
  for (const { index } of of("service")) {
    const svc = services.get(index) as ClusterService;
    record<ClusterService>("service", state.services.get(key(svc)), svc, (o) =>
      events.push({ kind: "service", type: "upsert", object: o }),
    );
  }
  for (const { index } of of("policy")) {
    const policy = policies.get(index) as ClusterPolicy;
    record<ClusterPolicy>("policy", state.policies.get(key(policy)), policy, (o) =>
      events.push({ kind: "policy", type: "upsert", object: o }),
    );
  }
  const byName = podsByName(state.pods.values());
  for (const { index } of of("pod")) {
    const pod = pods.get(index) as ClusterPod;
    const current = byName.get(key(pod));
    if (current && current.uid !== pod.uid) {
      // A new uid is a new pod: the old one goes first, as when a pod is deleted and re-created.
      events.push({ kind: "pod", type: "delete", object: current });
      record<ClusterPod>("pod", undefined, pod, (o) =>
        events.push({ kind: "pod", type: "upsert", object: o }),
      );
    } else {
      record<ClusterPod>("pod", current, pod, (o) => events.push({ kind: "pod", type: "upsert", object: o }));
    }
  }
  return { ok: true, events, results };
}

type Issue = (index: number, field: string, message: string) => void;

/** Services as they will be stored, by request index: clusterIPs kept, checked or allocated. */
function planServices(
  state: ClusterSnapshot,
  applied: readonly { index: number; object: ServiceApply }[],
  ctx: PlanContext,
  issue: Issue,
): Map<number, ClusterService> {
  const next = new Map(state.services);
  const out = new Map<number, ClusterService>();
  const allocate: number[] = [];
  for (const { index, object } of applied) {
    const current = state.services.get(key(object));
    // Like Kubernetes: a service applied without clusterIPs keeps the addresses it has.
    const clusterIPs = object.clusterIPs ?? current?.clusterIPs;
    if (clusterIPs === undefined) allocate.push(index);
    const svc: ClusterService = {
      namespace: object.namespace,
      name: object.name,
      clusterIPs: clusterIPs ?? [],
      ports: object.ports,
      ...(object.selector !== undefined ? { selector: object.selector } : {}),
    };
    out.set(index, svc);
    next.set(key(svc), svc);
  }
  const owner = new Map<string, string>();
  for (const svc of next.values())
    for (const ip of svc.clusterIPs) if (!owner.has(ip)) owner.set(ip, key(svc));
  for (const { index } of applied) {
    const svc = out.get(index) as ClusterService;
    svc.clusterIPs.forEach((ip, i) => {
      const holder = owner.get(ip);
      if (holder !== undefined && holder !== key(svc))
        issue(index, `clusterIPs[${i}]`, `${ip} is already the address of service ${holder}`);
    });
  }
  for (const index of allocate) {
    const svc = out.get(index) as ClusterService;
    const ip = freeAddress(ctx.serviceCIDR, owner);
    if (ip === undefined) {
      issue(index, "clusterIPs", `no free address left in the service range ${ctx.serviceCIDR.text}`);
      continue;
    }
    owner.set(ip, key(svc));
    out.set(index, { ...svc, clusterIPs: [ip] });
  }
  return out;
}

/** The lowest address of `cidr` after the network address that nothing holds. */
function freeAddress(cidr: Cidr, taken: ReadonlyMap<string, string>): string | undefined {
  const bits = cidr.family === 4 ? 32 : 128;
  const size = 1n << BigInt(bits - cidr.prefix);
  // The broadcast address of an IPv4 range is left out, as Kubernetes does.
  const last = cidr.family === 4 ? size - 2n : size - 1n;
  for (let offset = 1n; offset <= last; offset++) {
    const ip = bigIntToIp(cidr.network + offset, cidr.family);
    if (!taken.has(ip)) return ip;
  }
  return undefined;
}

/** Pods as they will be stored, by request index: uid resolved, host-network addresses filled. */
function planPods(
  state: ClusterSnapshot,
  applied: readonly { index: number; object: PodApply }[],
  nodes: ReadonlyMap<string, ClusterNode>,
  ctx: PlanContext,
  issue: Issue,
): Map<number, ClusterPod> {
  const byName = podsByName(state.pods.values());
  const next = new Map(byName);
  const out = new Map<number, ClusterPod>();
  const uids = new Map<string, number>();
  for (const { index, object } of applied) {
    const current = byName.get(key(object));
    const uid = object.uid ?? current?.uid ?? ctx.newUid();
    const holder = state.pods.get(uid);
    if (holder && key(holder) !== key(object))
      issue(index, "uid", `uid ${uid} belongs to pod ${key(holder)}; a uid names one pod`);
    const twin = uids.get(uid);
    if (twin !== undefined) issue(index, "uid", `uid ${uid} is also given to objects[${twin}]`);
    uids.set(uid, index);
    const node = object.nodeName !== undefined ? nodes.get(object.nodeName) : undefined;
    // A host-network pod has its node's addresses, as the kubelet reports them.
    const ips = object.ips.length === 0 && object.hostNetwork && node ? node.internalIPs : object.ips;
    const pod: ClusterPod = { ...object, uid, ips };
    out.set(index, pod);
    next.set(key(pod), pod);
  }
  // Two running pods with one address would make traffic to it go to either: a lab bug to catch.
  const owner = new Map<string, string>();
  const holdsAddress = (p: ClusterPod): boolean =>
    !p.hostNetwork && p.phase !== "Succeeded" && p.phase !== "Failed";
  for (const p of next.values())
    if (holdsAddress(p)) for (const ip of p.ips) if (!owner.has(ip)) owner.set(ip, key(p));
  for (const { index } of applied) {
    const pod = out.get(index) as ClusterPod;
    if (!holdsAddress(pod)) continue;
    pod.ips.forEach((ip, i) => {
      const holder = owner.get(ip);
      if (holder !== undefined && holder !== key(pod))
        issue(index, `ips[${i}]`, `${ip} is already the address of pod ${holder}`);
    });
  }
  return out;
}

/** The control plane's conversion error (`ns/name: spec.x: msg; spec.y: msg`) as field issues. */
function policyProblems(error: string): { field: string; message: string }[] {
  const body = error.slice(error.indexOf(": ") + 2);
  const starts = [...body.matchAll(/(?:^|; )(spec(?:\.[A-Za-z_]\w*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*): /g)];
  if (starts.length === 0) return [{ field: "spec", message: body }];
  return starts.map((m, i) => {
    const from = (m.index ?? 0) + m[0].length;
    const to = starts[i + 1]?.index ?? body.length;
    return { field: m[1] ?? "spec", message: body.slice(from, to) };
  });
}

export interface DeleteOptions {
  /** Skip refs to objects that do not exist instead of failing. */
  readonly ignoreMissing?: boolean;
}

/**
 * Delete `refs`. As in Kubernetes, deleting a namespace deletes what is in it, and deleting a node
 * deletes the pods bound to it (Kubernetes' pod garbage collector does so).
 */
export function planDelete(
  state: ClusterSnapshot,
  refs: readonly ObjectRef[],
  opts: DeleteOptions = {},
): Plan<DeletedObject> {
  const issues: ApiIssue[] = [];
  const pods = new Map<string, { pod: ClusterPod; cascade: boolean }>();
  const services = new Map<string, { svc: ClusterService; cascade: boolean }>();
  const policies = new Map<string, { policy: ClusterPolicy; cascade: boolean }>();
  const nodes = new Map<string, ClusterNode>();
  const namespaces = new Map<string, ClusterNamespace>();
  const byName = podsByName(state.pods.values());
  const explicit = <T>(map: Map<string, { cascade: boolean } & T>, k: string, value: T): void =>
    void map.set(k, { ...value, cascade: false });
  const cascaded = <T>(map: Map<string, { cascade: boolean } & T>, k: string, value: T): void => {
    if (!map.has(k)) map.set(k, { ...value, cascade: true });
  };

  refs.forEach((ref, index) => {
    const namespaced = NAMESPACED.has(ref.kind);
    if (!namespaced && ref.namespace !== undefined) {
      issues.push({ index, field: "namespace", message: `a ${ref.kind} has no namespace` });
      return;
    }
    const ns = ref.namespace ?? "default";
    const k = `${ns}/${ref.name}`;
    const found = ((): boolean => {
      switch (ref.kind) {
        case "pod": {
          const pod = byName.get(k);
          if (pod) explicit(pods, k, { pod });
          return pod !== undefined;
        }
        case "service": {
          const svc = state.services.get(k);
          if (svc) explicit(services, k, { svc });
          return svc !== undefined;
        }
        case "policy": {
          const policy = state.policies.get(k);
          if (policy) explicit(policies, k, { policy });
          return policy !== undefined;
        }
        case "node": {
          const node = state.nodes.get(ref.name);
          if (node) nodes.set(ref.name, node);
          return node !== undefined;
        }
        case "namespace": {
          const namespace = state.namespaces.get(ref.name);
          if (namespace) namespaces.set(ref.name, namespace);
          return namespace !== undefined;
        }
      }
    })();
    if (!found && !opts.ignoreMissing)
      issues.push({
        index,
        field: "name",
        message: `${describeRef({ kind: ref.kind, ...(namespaced ? { namespace: ns } : {}), name: ref.name })} does not exist`,
      });
  });
  if (issues.length > 0) return { ok: false, issues };

  for (const pod of state.pods.values())
    if (namespaces.has(pod.namespace) || (pod.nodeName !== undefined && nodes.has(pod.nodeName)))
      cascaded(pods, key(pod), { pod });
  for (const svc of state.services.values())
    if (namespaces.has(svc.namespace)) cascaded(services, key(svc), { svc });
  for (const policy of state.policies.values())
    if (namespaces.has(policy.namespace)) cascaded(policies, key(policy), { policy });

  // Dependents first: a consumer never holds a pod whose namespace or node is gone.
  const events: ClusterEvent[] = [];
  const results: DeletedObject[] = [];
  const done = (ref: ObjectRef, cascade: boolean): void =>
    void results.push({ ...ref, ...(cascade ? { cascade: true as const } : {}) });
  for (const { pod, cascade } of pods.values()) {
    events.push({ kind: "pod", type: "delete", object: pod });
    done({ kind: "pod", namespace: pod.namespace, name: pod.name }, cascade);
  }
  for (const { policy, cascade } of policies.values()) {
    events.push({ kind: "policy", type: "delete", object: policy });
    done({ kind: "policy", namespace: policy.namespace, name: policy.name }, cascade);
  }
  for (const { svc, cascade } of services.values()) {
    events.push({ kind: "service", type: "delete", object: svc });
    done({ kind: "service", namespace: svc.namespace, name: svc.name }, cascade);
  }
  for (const node of nodes.values()) {
    events.push({ kind: "node", type: "delete", object: node });
    done({ kind: "node", name: node.name }, false);
  }
  for (const namespace of namespaces.values()) {
    events.push({ kind: "namespace", type: "delete", object: namespace });
    done({ kind: "namespace", name: namespace.name }, false);
  }
  return { ok: true, events, results };
}

/** Replace the topology; refused, with every issue located in the text, when it does not validate. */
export function planTopology(
  state: ClusterSnapshot,
  topology: ClusterTopology,
): { ok: true; events: ClusterEvent[] } | { ok: false; issues: ApiIssue[] } {
  const parsed = parseTopology(topology.text, topology.source);
  if (!parsed.ok) return { ok: false, issues: parsed.issues };
  if (isDeepStrictEqual(state.topology, topology)) return { ok: true, events: [] };
  return { ok: true, events: [{ kind: "topology", type: "upsert", object: topology }] };
}
