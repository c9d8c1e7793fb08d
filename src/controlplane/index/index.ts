import type {
  ClusterEvent,
  ClusterNamespace,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
  ClusterSnapshot,
} from "../../cluster/types.js";
import { decodeAddress, decodeAuthorization, encodeAddress, encodeAuthorization } from "../../xds/proto.js";
import type { Address, Authorization } from "../../xds/types.js";
import { AuthzAction, AuthzScope, TYPE_URL } from "../../xds/types.js";
import { authorizationKey, convertPolicy, selectorMatches } from "../policy.js";
import {
  buildService,
  buildWorkload,
  DEFAULT_INDEX_OPTIONS,
  ipAliases,
  isIndexed,
  serviceKey,
  workloadUid,
} from "./workload.js";
import type { IndexOptions } from "./workload.js";
import { SelectorIndex } from "./selectors.js";

export type IndexedType = typeof TYPE_URL.address | typeof TYPE_URL.authorization;

/**
 * One resource as the xDS server sends it: encoded once, versioned by its bytes. Only the bytes
 * are kept (the index of a large cluster is mostly these); `value` decodes them when asked.
 */
export class IndexedResource {
  constructor(
    readonly typeUrl: IndexedType,
    readonly name: string,
    readonly version: string,
    readonly bytes: Uint8Array,
    readonly aliases: readonly string[],
    readonly isWorkload: boolean,
  ) {}

  get value(): Address | Authorization {
    return this.typeUrl === TYPE_URL.address ? decodeAddress(this.bytes) : decodeAuthorization(this.bytes);
  }
}

export interface ResourceChange {
  readonly typeUrl: IndexedType;
  readonly name: string;
  readonly removed: boolean;
  /** When the cluster change that caused it was applied (for push latency). */
  readonly at: number;
}

interface PolicyState {
  readonly policy: ClusterPolicy;
  readonly selector?: Readonly<Record<string, string>>;
  readonly warnings: readonly string[];
  readonly error?: string;
  readonly converted: boolean;
}

const key = (o: { namespace: string; name: string }): string => `${o.namespace}/${o.name}`;

/**
 * The ambient index: workloads, services and L4 policies as workload API resources, kept
 * incrementally. A cluster change recomputes only the resources it can affect — a pod event its
 * own workload; a service event the service and the workloads its selector matches (before and
 * after); a policy event the policy and the workloads it selects; a namespace event that
 * namespace's workloads — and reports a change only for resources whose bytes changed.
 */
export class AmbientIndex {
  private readonly resources = new Map<IndexedType, Map<string, IndexedResource>>([
    [TYPE_URL.address, new Map()],
    [TYPE_URL.authorization, new Map()],
  ]);
  /** alias → the resource name holding it; a set only when several do (one address, one workload is the rule). */
  private readonly aliasIndex = new Map<string, string | Set<string>>();
  /**
   * Workload uid (`<cluster>//Pod/<ns>/<name>`) → the pods of that name, in the order first seen. A recreated pod
   * reuses the workload uid while its predecessor may still exist (terminating, or its delete not
   * yet delivered); the newest one that is not terminating owns the workload.
   */
  private readonly podsByName = new Map<string, ClusterPod | ClusterPod[]>();
  private readonly namespaces = new Map<string, ClusterNamespace>();
  private readonly services = new Map<string, ClusterService>();
  private readonly serviceSelectors = new SelectorIndex(false);
  private readonly policies = new Map<string, PolicyState>();
  private readonly policySelectors = new SelectorIndex(true);
  private readonly listeners = new Set<(changes: readonly ResourceChange[]) => void>();
  private pending: ResourceChange[] = [];
  /** Kept as resources come and go: stats are read on every event. */
  private workloadCount = 0;
  /** When the event being applied arrived; stamped on the changes it causes. */
  private changeTime = 0;
  /** Set while `load` builds the index. */
  private slab: Slab | undefined;

  constructor(readonly opts: IndexOptions = DEFAULT_INDEX_OPTIONS) {}

  /** Build from a full view. Changes are reported like any others (to listeners already subscribed). */
  load(snapshot: ClusterSnapshot): readonly ResourceChange[] {
    this.changeTime = performance.now();
    this.slab = new Slab();
    for (const ns of snapshot.namespaces.values()) this.namespaces.set(ns.name, ns);
    for (const svc of snapshot.services.values()) this.indexService(svc);
    for (const p of snapshot.policies.values()) this.indexPolicy(p);
    for (const pod of snapshot.pods.values()) this.indexPod(pod);
    for (const svc of this.services.values()) this.putService(svc);
    for (const [uid, held] of this.podsByName) {
      const pod = ownerOfHeld(held);
      if (pod) this.refreshWorkload(pod.namespace, pod.name, pod, uid);
    }
    this.slab = undefined;
    return this.flush();
  }

  /** Apply one cluster event; returns (and tells listeners) the resources that changed. */
  apply(event: ClusterEvent): readonly ResourceChange[] {
    this.changeTime = performance.now();
    switch (event.kind) {
      case "pod":
        this.onPod(event.object, event.type === "delete");
        break;
      case "service":
        this.onService(event.object, event.type === "delete");
        break;
      case "policy":
        this.onPolicy(event.object, event.type === "delete");
        break;
      case "namespace":
        this.onNamespace(event.object, event.type === "delete");
        break;
      default:
        break;
    }
    return this.flush();
  }

  subscribe(listener: (changes: readonly ResourceChange[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get(typeUrl: IndexedType, name: string): IndexedResource | undefined {
    return this.resources.get(typeUrl)?.get(name);
  }

  all(typeUrl: IndexedType): ReadonlyMap<string, IndexedResource> {
    return this.resources.get(typeUrl) ?? new Map();
  }

  /** Resource names an on-demand key refers to: the name itself, or an alias such as `/10.0.0.5`. */
  resolve(typeUrl: IndexedType, keyName: string): string[] {
    if (this.get(typeUrl, keyName)) return [keyName];
    if (typeUrl !== TYPE_URL.address) return [];
    const held = this.aliasIndex.get(keyName);
    return held === undefined ? [] : typeof held === "string" ? [held] : [...held];
  }

  /** Policies that could not be converted, or were converted with warnings (status for operators). */
  policyStatus(): { key: string; error?: string; warnings: readonly string[] }[] {
    return [...this.policies.entries()]
      .filter(([, s]) => s.error !== undefined || s.warnings.length > 0)
      .map(([k, s]) => ({ key: k, ...(s.error ? { error: s.error } : {}), warnings: s.warnings }));
  }

  stats(): { workloads: number; services: number; authorizations: number } {
    return {
      workloads: this.workloadCount,
      services: this.all(TYPE_URL.address).size - this.workloadCount,
      authorizations: this.all(TYPE_URL.authorization).size,
    };
  }

  // --- events ---

  private onPod(pod: ClusterPod, deleted: boolean): void {
    if (deleted) {
      // A replacement with the same name may already be here; it keeps the workload.
      const k = workloadUid(this.opts.clusterId, pod);
      const others = podsOf(this.podsByName.get(k)).filter((p) => p.uid !== pod.uid);
      if (others.length > 1) this.podsByName.set(k, others);
      else if (others[0]) this.podsByName.set(k, others[0]);
      else this.podsByName.delete(k);
    } else {
      this.indexPod(pod);
    }
    this.refreshWorkload(pod.namespace, pod.name);
  }

  private onService(svc: ClusterService, deleted: boolean): void {
    const k = key(svc);
    const before = this.services.get(k);
    if (deleted) {
      this.services.delete(k);
      this.serviceSelectors.delete(k);
      this.remove(TYPE_URL.address, serviceKey(svc, this.opts.domain));
    } else {
      this.indexService(svc);
      this.putService(svc);
    }
    this.refreshSelected(svc.namespace, [before?.selector, deleted ? undefined : svc.selector], false);
  }

  private onPolicy(policy: ClusterPolicy, deleted: boolean): void {
    const k = key(policy);
    const before = this.policies.get(k);
    if (deleted) {
      this.policies.delete(k);
      this.policySelectors.delete(k);
      this.remove(TYPE_URL.authorization, authorizationKey(policy.namespace, policy.name));
    } else {
      this.indexPolicy(policy);
    }
    this.refreshSelected(policy.namespace, [before?.selector, this.policies.get(k)?.selector], true);
  }

  private onNamespace(ns: ClusterNamespace, deleted: boolean): void {
    if (deleted) this.namespaces.delete(ns.name);
    else this.namespaces.set(ns.name, ns);
    for (const pod of this.podsIn(ns.name)) this.refreshWorkload(pod.namespace, pod.name, pod);
  }

  /**
   * The owning pod of every name in a namespace. A walk over all pods: namespace, service and
   * policy changes are rare next to pod events, and a per-namespace index would cost every pod
   * event (and the first build) an extra insertion.
   */
  private *podsIn(ns: string): Iterable<ClusterPod> {
    for (const held of this.podsByName.values()) {
      const pod = ownerOfHeld(held);
      if (pod?.namespace === ns) yield pod;
    }
  }

  // --- bookkeeping ---

  private indexPod(pod: ClusterPod): void {
    // One pod per name is the rule; an array only while a replacement overlaps its predecessor.
    // Keyed by the workload's uid, the one string per pod the index needs anyway.
    const k = workloadUid(this.opts.clusterId, pod);
    const held = this.podsByName.get(k);
    if (held === undefined || (!Array.isArray(held) && held.uid === pod.uid)) this.podsByName.set(k, pod);
    else {
      const pods = podsOf(held);
      const i = pods.findIndex((p) => p.uid === pod.uid);
      if (i >= 0) pods[i] = pod;
      else pods.push(pod);
      this.podsByName.set(k, pods);
    }
  }

  private indexService(svc: ClusterService): void {
    const k = key(svc);
    this.services.set(k, svc);
    this.serviceSelectors.set(svc.namespace, k, svc.selector);
  }

  private indexPolicy(policy: ClusterPolicy): void {
    const k = key(policy);
    const result = convertPolicy(policy, { rootNamespace: this.opts.rootNamespace });
    const resourceName = authorizationKey(policy.namespace, policy.name);
    let state: PolicyState;
    if ("error" in result) {
      // Fail closed: a policy that cannot be understood must not leave its workloads open (an
      // ALLOW that vanished) nor let through what it meant to deny.
      const fallback = failClosed(policy, this.opts.rootNamespace);
      state = {
        policy,
        warnings: [`not understood, enforced as ${fallback.description}`],
        error: result.error,
        converted: true,
        ...(fallback.selector ? { selector: fallback.selector } : {}),
      };
      this.put(TYPE_URL.authorization, resourceName, fallback.authorization, []);
    } else {
      state = {
        policy,
        warnings: result.warnings,
        converted: result.authorization !== undefined,
        ...(result.selector ? { selector: result.selector } : {}),
      };
      if (result.authorization) this.put(TYPE_URL.authorization, resourceName, result.authorization, []);
      else this.remove(TYPE_URL.authorization, resourceName);
    }
    this.policies.set(k, state);
    this.policySelectors.set(policy.namespace, k, state.converted ? state.selector : undefined);
  }

  /** Workloads of `ns` matched by any of the selectors (old and new) are recomputed. */
  private refreshSelected(
    ns: string,
    selectors: readonly (Readonly<Record<string, string>> | undefined)[],
    emptyMatchesAll: boolean,
  ): void {
    const live = selectors.filter((s): s is Readonly<Record<string, string>> => s !== undefined);
    if (live.length === 0) return;
    const matches = (
      s: Readonly<Record<string, string>>,
      labels: Readonly<Record<string, string>>,
    ): boolean => (Object.keys(s).length === 0 ? emptyMatchesAll : selectorMatches(s, labels));
    for (const pod of this.podsIn(ns)) {
      if (live.some((s) => matches(s, pod.labels))) this.refreshWorkload(pod.namespace, pod.name, pod);
    }
  }

  /** `owner`, `uid`: the pod owning the name and the workload's uid, when the caller has them. */
  private refreshWorkload(namespace: string, name: string, owner?: ClusterPod, uid?: string): void {
    const resourceName = uid ?? workloadUid(this.opts.clusterId, { namespace, name });
    const pod = owner ?? ownerOfHeld(this.podsByName.get(resourceName));
    if (!pod || !isIndexed(pod)) {
      this.remove(TYPE_URL.address, resourceName);
      return;
    }
    const services: ClusterService[] = [];
    for (const k of this.serviceSelectors.matching(namespace, pod.labels)) {
      const svc = this.services.get(k);
      if (svc) services.push(svc);
    }
    const policyKeys: string[] = [];
    for (const k of this.policySelectors.matching(namespace, pod.labels)) {
      const p = this.policies.get(k);
      if (p) policyKeys.push(authorizationKey(p.policy.namespace, p.policy.name));
    }
    const workload = buildWorkload(
      pod,
      this.namespaces.get(namespace),
      services,
      policyKeys,
      this.opts,
      resourceName,
    );
    this.put(TYPE_URL.address, resourceName, { workload }, pod.hostNetwork ? [] : ipAliases(pod.ips));
  }

  private putService(svc: ClusterService): void {
    this.put(
      TYPE_URL.address,
      serviceKey(svc, this.opts.domain),
      { service: buildService(svc, this.opts) },
      ipAliases(svc.clusterIPs),
    );
  }

  private put(
    typeUrl: IndexedType,
    name: string,
    value: Address | Authorization,
    aliases: readonly string[],
  ): void {
    const workload = (value as Address).workload;
    const encoded =
      typeUrl === TYPE_URL.address
        ? encodeAddress(value as Address)
        : encodeAuthorization(value as Authorization);
    const version = fnv1a64(encoded);
    const map = this.resources.get(typeUrl);
    const existing = map?.get(name);
    if (existing && existing.version === version && sameAliases(existing.aliases, aliases)) return;
    // protobufjs's buffers are slices of Node's shared pool, which a long-kept slice would keep
    // alive whole. The first build copies into slabs of its own (dense: every resource in them is
    // live); later resources get memory of their own, so churn never pins a slab of dead ones.
    const bytes = this.slab ? this.slab.copy(encoded) : new Uint8Array(encoded);
    const isWorkload = workload !== undefined;
    if (existing) this.unalias(name, existing.aliases);
    else if (isWorkload) this.workloadCount++;
    map?.set(name, new IndexedResource(typeUrl, name, version, bytes, aliases, isWorkload));
    for (const a of aliases) {
      const held = this.aliasIndex.get(a);
      if (held === undefined || held === name) this.aliasIndex.set(a, name);
      else if (typeof held === "string") this.aliasIndex.set(a, new Set([held, name]));
      else held.add(name);
    }
    this.pending.push({ typeUrl, name, removed: false, at: this.changeTime });
  }

  private remove(typeUrl: IndexedType, name: string): void {
    const map = this.resources.get(typeUrl);
    const existing = map?.get(name);
    if (!existing) return;
    map?.delete(name);
    if (existing.isWorkload) this.workloadCount--;
    this.unalias(name, existing.aliases);
    this.pending.push({ typeUrl, name, removed: true, at: this.changeTime });
  }

  private unalias(name: string, aliases: readonly string[]): void {
    for (const a of aliases) {
      const held = this.aliasIndex.get(a);
      if (held === name) this.aliasIndex.delete(a);
      else if (typeof held === "object") {
        held.delete(name);
        if (held.size === 1) this.aliasIndex.set(a, [...held][0] ?? "");
        else if (held.size === 0) this.aliasIndex.delete(a);
      }
    }
  }

  private flush(): readonly ResourceChange[] {
    const changes = this.pending;
    this.pending = [];
    if (changes.length > 0) for (const l of this.listeners) l(changes);
    return changes;
  }
}

/** What an unparseable policy is enforced as: an ALLOW that allows nothing, or a DENY of everything. */
function failClosed(
  policy: ClusterPolicy,
  rootNamespace: string,
): { authorization: Authorization; selector?: Record<string, string>; description: string } {
  const spec = (typeof policy.spec === "object" && policy.spec !== null ? policy.spec : {}) as Record<
    string,
    unknown
  >;
  const deny = spec.action === "DENY";
  const selectorRaw = (spec.selector as { matchLabels?: unknown } | undefined)?.matchLabels;
  const selector =
    typeof selectorRaw === "object" && selectorRaw !== null
      ? (Object.fromEntries(Object.entries(selectorRaw).filter(([, v]) => typeof v === "string")) as Record<
          string,
          string
        >)
      : undefined;
  const scope = selector
    ? AuthzScope.WORKLOAD_SELECTOR
    : policy.namespace === rootNamespace
      ? AuthzScope.GLOBAL
      : AuthzScope.NAMESPACE;
  return {
    authorization: {
      name: policy.name,
      namespace: policy.namespace,
      scope,
      action: deny ? AuthzAction.DENY : AuthzAction.ALLOW,
      // A rule without clauses matches every connection; no rules match none.
      rules: deny ? [{ clauses: [] }] : [],
    },
    ...(selector ? { selector } : {}),
    description: deny ? "a DENY of every connection" : "an ALLOW of nothing",
  };
}

/** Bump allocation of byte arrays in 1 MiB chunks: cheaper than one allocation per resource. */
class Slab {
  private chunk = new Uint8Array(0);
  private used = 0;

  copy(bytes: Uint8Array): Uint8Array {
    if (this.used + bytes.length > this.chunk.length) {
      this.chunk = new Uint8Array(Math.max(1 << 20, bytes.length));
      this.used = 0;
    }
    const out = this.chunk.subarray(this.used, this.used + bytes.length);
    out.set(bytes);
    this.used += bytes.length;
    return out;
  }
}

const podsOf = (held: ClusterPod | ClusterPod[] | undefined): ClusterPod[] =>
  held === undefined ? [] : Array.isArray(held) ? [...held] : [held];

/** Of the pods holding one name, the newest that is not terminating (else the newest). */
function ownerOfHeld(held: ClusterPod | ClusterPod[] | undefined): ClusterPod | undefined {
  if (!Array.isArray(held)) return held;
  return held.filter((p) => !p.terminating).at(-1) ?? held.at(-1);
}

/** 64-bit FNV-1a of the bytes, as 16 hex digits: a resource's version (change detection, not security). */
export function fnv1a64(bytes: Uint8Array): string {
  // The 64-bit state in two 32-bit halves; the prime 0x100000001b3 = 2^40 + 0x1b3, so
  // state * prime = state * 0x1b3 + (lo << 40), computed with 16-bit partial products.
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  for (let i = 0; i < bytes.length; i++) {
    lo = (lo ^ (bytes[i] ?? 0)) >>> 0;
    const l0 = lo & 0xffff;
    const l1 = lo >>> 16;
    const p0 = l0 * 0x1b3;
    const p1 = l1 * 0x1b3 + (p0 >>> 16);
    const newLo = ((p1 & 0xffff) << 16) | (p0 & 0xffff);
    hi = (Math.imul(hi, 0x1b3) + (p1 >>> 16) + (lo << 8)) >>> 0;
    lo = newLo >>> 0;
  }
  return hi.toString(16).padStart(8, "0") + lo.toString(16).padStart(8, "0");
}

function sameAliases(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
