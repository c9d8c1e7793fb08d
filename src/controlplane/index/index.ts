import type {
  ClusterEvent,
  ClusterNamespace,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
  ClusterSnapshot,
} from "../../cluster/types.js";
import { decodeAddress, decodeAuthorization, encodeAuthorization } from "../../xds/proto.js";
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
  serviceRef,
  workloadAliases,
  workloadUid,
} from "./workload.js";
import type { IndexOptions, ServiceRef } from "./workload.js";
import { AliasIndex } from "./aliases.js";
import { SelectorIndex } from "./selectors.js";
import { fnv1a64 } from "./version.js";
import { AddressEncoder } from "./address-encoder.js";

export { fnv1a64 };

export type IndexedType = typeof TYPE_URL.address | typeof TYPE_URL.authorization;

/**
 * One resource as the xDS server sends it: encoded once, versioned by its bytes. Only the bytes
 * are kept (the index of a large cluster is mostly these); `value` decodes them when asked.
 */
export class IndexedResource {
  /** Made on first use: the index tells changes by the bytes themselves, only proxies need it. */
  private versionText: string | undefined = undefined;

  constructor(
    readonly typeUrl: IndexedType,
    readonly name: string,
    readonly bytes: Uint8Array,
    readonly aliases: readonly string[],
    readonly isWorkload: boolean,
  ) {}

  /** 64-bit FNV-1a of the bytes, as 16 hex digits. */
  get version(): string {
    return (this.versionText ??= fnv1a64(this.bytes));
  }

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
  private readonly addresses = new Map<string, IndexedResource>();
  private readonly authorizations = new Map<string, IndexedResource>();
  private readonly aliasIndex = new AliasIndex(() => this.addresses.values());
  /**
   * Workload uid (`<cluster>//Pod/<ns>/<name>`) → the pods of that name, in the order first seen. A recreated pod
   * reuses the workload uid while its predecessor may still exist (terminating, or its delete not
   * yet delivered); the newest one that is not terminating owns the workload.
   */
  private readonly podsByName = new Map<string, ClusterPod | ClusterPod[]>();
  private readonly namespaces = new Map<string, ClusterNamespace>();
  private readonly services = new Map<string, ClusterService>();
  /** Selected pods find their services' refs here. */
  private readonly serviceSelectors = new SelectorIndex<ServiceRef>(false);
  private readonly policies = new Map<string, PolicyState>();
  /** Selected pods find the names of their policies' authorizations here. */
  private readonly policySelectors = new SelectorIndex<string>(true);
  private readonly encoder = new AddressEncoder();
  private readonly listeners = new Set<(changes: readonly ResourceChange[]) => void>();
  private readonly pending = new PendingChanges();
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
    // forEach: iterating entries would make a [key, value] array per pod.
    this.podsByName.forEach((held, uid) => {
      const pod = ownerOfHeld(held);
      if (pod) this.refreshWorkload(pod.namespace, pod.name, pod, uid);
    });
    // After the workloads, so that the code they share is first compiled for workloads, 10× more.
    for (const svc of this.services.values()) this.putService(svc);
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
    return this.mapOf(typeUrl).get(name);
  }

  all(typeUrl: IndexedType): ReadonlyMap<string, IndexedResource> {
    return this.mapOf(typeUrl);
  }

  /** Resource names an on-demand key refers to: the name itself, or an alias such as `/10.0.0.5`. */
  resolve(typeUrl: IndexedType, keyName: string): string[] {
    if (this.get(typeUrl, keyName)) return [keyName];
    if (typeUrl !== TYPE_URL.address) return [];
    return this.aliasIndex.lookup(keyName);
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
    this.serviceSelectors.set(svc.namespace, k, svc.selector, serviceRef(svc, this.opts));
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
      this.putAuthorization(resourceName, fallback.authorization);
    } else {
      state = {
        policy,
        warnings: result.warnings,
        converted: result.authorization !== undefined,
        ...(result.selector ? { selector: result.selector } : {}),
      };
      if (result.authorization) this.putAuthorization(resourceName, result.authorization);
      else this.remove(TYPE_URL.authorization, resourceName);
    }
    this.policies.set(k, state);
    this.policySelectors.set(policy.namespace, k, state.converted ? state.selector : undefined, resourceName);
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
    const workload = buildWorkload(
      pod,
      this.namespaces.get(namespace),
      this.serviceSelectors.matching(namespace, pod.labels),
      this.policySelectors.matching(namespace, pod.labels),
      this.opts,
      resourceName,
    );
    this.store(
      TYPE_URL.address,
      resourceName,
      this.encoder.workload(workload),
      workloadAliases(pod, workload),
      true,
    );
  }

  private putService(svc: ClusterService): void {
    this.store(
      TYPE_URL.address,
      serviceKey(svc, this.opts.domain),
      this.encoder.service(buildService(svc, this.opts)),
      ipAliases(svc.clusterIPs),
      false,
    );
  }

  private putAuthorization(name: string, authorization: Authorization): void {
    this.store(TYPE_URL.authorization, name, encodeAuthorization(authorization), [], false);
  }

  /** Keep `encoded` (copied: it may be a view of a reused buffer) unless it is what is held already. */
  private store(
    typeUrl: IndexedType,
    name: string,
    encoded: Uint8Array,
    aliases: readonly string[],
    isWorkload: boolean,
  ): void {
    const map = this.mapOf(typeUrl);
    const existing = map.get(name);
    if (existing && sameBytes(existing.bytes, encoded) && sameAliases(existing.aliases, aliases)) return;
    // protobufjs's buffers are slices of Node's shared pool, which a long-kept slice would keep
    // alive whole. The first build copies into slabs of its own (dense: every resource in them is
    // live); later resources get memory of their own, so churn never pins a slab of dead ones.
    const bytes = this.slab ? this.slab.copy(encoded) : new Uint8Array(encoded);
    if (existing) this.aliasIndex.delete(name, existing.aliases);
    else if (isWorkload) this.workloadCount++;
    map.set(name, new IndexedResource(typeUrl, name, bytes, aliases, isWorkload));
    this.aliasIndex.add(name, aliases);
    this.pending.add(typeUrl, name, false);
  }

  private remove(typeUrl: IndexedType, name: string): void {
    const map = this.mapOf(typeUrl);
    const existing = map.get(name);
    if (!existing) return;
    map.delete(name);
    if (existing.isWorkload) this.workloadCount--;
    this.aliasIndex.delete(name, existing.aliases);
    this.pending.add(typeUrl, name, true);
  }

  private mapOf(typeUrl: IndexedType): Map<string, IndexedResource> {
    return typeUrl === TYPE_URL.address ? this.addresses : this.authorizations;
  }

  private flush(): readonly ResourceChange[] {
    const changes = this.pending.take(this.changeTime);
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

/**
 * Changes not yet reported, kept as names and flags; the ResourceChange objects are made when they
 * are reported. Made as they happen, the 110,000 of a large first build would live through every
 * young-generation collection of the build, each of which copies them.
 */
class PendingChanges {
  private names: string[] = [];
  /** Per name: AUTHORIZATION (else an address) | REMOVED (else put). */
  private flags: number[] = [];
  private static readonly AUTHORIZATION = 1;
  private static readonly REMOVED = 2;

  add(typeUrl: IndexedType, name: string, removed: boolean): void {
    this.names.push(name);
    this.flags.push(
      (typeUrl === TYPE_URL.authorization ? PendingChanges.AUTHORIZATION : 0) |
        (removed ? PendingChanges.REMOVED : 0),
    );
  }

  /** The changes so far, stamped `at`; none are pending after. */
  take(at: number): ResourceChange[] {
    const changes = new Array<ResourceChange>(this.names.length);
    for (let i = 0; i < this.names.length; i++) {
      const f = this.flags[i] ?? 0;
      changes[i] = {
        typeUrl: f & PendingChanges.AUTHORIZATION ? TYPE_URL.authorization : TYPE_URL.address,
        name: this.names[i] ?? "",
        removed: (f & PendingChanges.REMOVED) !== 0,
        at,
      };
    }
    this.names = [];
    this.flags = [];
    return changes;
  }
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

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameAliases(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
