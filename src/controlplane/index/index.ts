import { createHash } from "node:crypto";
import type {
  ClusterEvent,
  ClusterNamespace,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
  ClusterSnapshot,
} from "../../cluster/types.js";
import { encodeAddress, encodeAuthorization } from "../../xds/proto.js";
import type { Address, Authorization } from "../../xds/types.js";
import { AuthzAction, AuthzScope, TYPE_URL } from "../../xds/types.js";
import { authorizationKey, convertPolicy } from "../policy.js";
import {
  buildService,
  buildWorkload,
  DEFAULT_INDEX_OPTIONS,
  ipAliases,
  isIndexed,
  selects,
  serviceKey,
  workloadUid,
} from "./workload.js";
import type { IndexOptions } from "./workload.js";

export type IndexedType = typeof TYPE_URL.address | typeof TYPE_URL.authorization;

/** One resource as the xDS server sends it: encoded once, versioned by its bytes. */
export interface IndexedResource {
  readonly name: string;
  readonly version: string;
  readonly bytes: Uint8Array;
  readonly aliases: readonly string[];
  readonly value: Address | Authorization;
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
  private readonly aliasIndex = new Map<string, Set<string>>();
  private readonly pods = new Map<string, ClusterPod>();
  /** `namespace/name` → uid of the current pod of that name (a recreated pod reuses the workload uid). */
  private readonly podByName = new Map<string, string>();
  private readonly podsByNs = new Map<string, Set<string>>();
  private readonly namespaces = new Map<string, ClusterNamespace>();
  private readonly services = new Map<string, ClusterService>();
  private readonly servicesByNs = new Map<string, Set<string>>();
  private readonly policies = new Map<string, PolicyState>();
  private readonly selectorPoliciesByNs = new Map<string, Set<string>>();
  private readonly listeners = new Set<(changes: readonly ResourceChange[]) => void>();
  private pending: ResourceChange[] = [];
  /** Kept as resources come and go: stats are read on every event. */
  private workloadCount = 0;

  constructor(readonly opts: IndexOptions = DEFAULT_INDEX_OPTIONS) {}

  /** Build from a full view. Changes are reported like any others (to listeners already subscribed). */
  load(snapshot: ClusterSnapshot): readonly ResourceChange[] {
    for (const ns of snapshot.namespaces.values()) this.namespaces.set(ns.name, ns);
    for (const svc of snapshot.services.values()) this.indexService(svc);
    for (const p of snapshot.policies.values()) this.indexPolicy(p);
    for (const pod of snapshot.pods.values()) this.indexPod(pod);
    for (const svc of this.services.values()) this.putService(svc);
    for (const pod of this.pods.values()) this.refreshWorkload(pod.namespace, pod.name);
    return this.flush();
  }

  /** Apply one cluster event; returns (and tells listeners) the resources that changed. */
  apply(event: ClusterEvent): readonly ResourceChange[] {
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
    return [...(this.aliasIndex.get(keyName) ?? [])];
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
      this.pods.delete(pod.uid);
      this.podsByNs.get(pod.namespace)?.delete(pod.uid);
      // A replacement with the same name may already be here; it keeps the workload.
      if (this.podByName.get(key(pod)) === pod.uid) this.podByName.delete(key(pod));
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
      this.servicesByNs.get(svc.namespace)?.delete(k);
      this.remove(TYPE_URL.address, serviceKey(svc, this.opts.domain));
    } else {
      this.indexService(svc);
      this.putService(svc);
    }
    this.refreshSelected(svc.namespace, [before?.selector, deleted ? undefined : svc.selector]);
  }

  private onPolicy(policy: ClusterPolicy, deleted: boolean): void {
    const k = key(policy);
    const before = this.policies.get(k);
    if (deleted) {
      this.policies.delete(k);
      this.selectorPoliciesByNs.get(policy.namespace)?.delete(k);
      this.remove(TYPE_URL.authorization, authorizationKey(policy.namespace, policy.name));
    } else {
      this.indexPolicy(policy);
    }
    this.refreshSelected(policy.namespace, [before?.selector, this.policies.get(k)?.selector]);
  }

  private onNamespace(ns: ClusterNamespace, deleted: boolean): void {
    if (deleted) this.namespaces.delete(ns.name);
    else this.namespaces.set(ns.name, ns);
    for (const uid of this.podsByNs.get(ns.name) ?? []) {
      const pod = this.pods.get(uid);
      if (pod) this.refreshWorkload(pod.namespace, pod.name);
    }
  }

  // --- bookkeeping ---

  private indexPod(pod: ClusterPod): void {
    this.pods.set(pod.uid, pod);
    this.podByName.set(key(pod), pod.uid);
    let set = this.podsByNs.get(pod.namespace);
    if (!set) this.podsByNs.set(pod.namespace, (set = new Set()));
    set.add(pod.uid);
  }

  private indexService(svc: ClusterService): void {
    const k = key(svc);
    this.services.set(k, svc);
    let set = this.servicesByNs.get(svc.namespace);
    if (!set) this.servicesByNs.set(svc.namespace, (set = new Set()));
    set.add(k);
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
    let set = this.selectorPoliciesByNs.get(policy.namespace);
    if (!set) this.selectorPoliciesByNs.set(policy.namespace, (set = new Set()));
    if (state.selector && state.converted) set.add(k);
    else set.delete(k);
  }

  /** Workloads of `ns` matched by any of the selectors (old and new) are recomputed. */
  private refreshSelected(
    ns: string,
    selectors: readonly (Readonly<Record<string, string>> | undefined)[],
  ): void {
    const live = selectors.filter((s): s is Readonly<Record<string, string>> => s !== undefined);
    if (live.length === 0) return;
    for (const uid of this.podsByNs.get(ns) ?? []) {
      const pod = this.pods.get(uid);
      if (pod && live.some((s) => selects(s, pod.labels))) this.refreshWorkload(pod.namespace, pod.name);
    }
  }

  private refreshWorkload(namespace: string, name: string): void {
    const resourceName = workloadUid(this.opts.clusterId, { namespace, name });
    const uid = this.podByName.get(`${namespace}/${name}`);
    const pod = uid === undefined ? undefined : this.pods.get(uid);
    if (!pod || !isIndexed(pod)) {
      this.remove(TYPE_URL.address, resourceName);
      return;
    }
    const services: ClusterService[] = [];
    for (const k of this.servicesByNs.get(namespace) ?? []) {
      const svc = this.services.get(k);
      if (svc && selects(svc.selector, pod.labels)) services.push(svc);
    }
    const policyKeys: string[] = [];
    for (const k of this.selectorPoliciesByNs.get(namespace) ?? []) {
      const p = this.policies.get(k);
      if (p?.selector && selects(p.selector, pod.labels))
        policyKeys.push(authorizationKey(p.policy.namespace, p.policy.name));
    }
    const workload = buildWorkload(pod, this.namespaces.get(namespace), services, policyKeys, this.opts);
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
    const bytes =
      typeUrl === TYPE_URL.address
        ? encodeAddress(value as Address)
        : encodeAuthorization(value as Authorization);
    const version = createHash("sha1").update(bytes).digest("hex").slice(0, 16);
    const map = this.resources.get(typeUrl);
    const existing = map?.get(name);
    if (existing && existing.version === version && sameAliases(existing.aliases, aliases)) return;
    if (existing) this.unalias(name, existing.aliases);
    else if ((value as Address).workload) this.workloadCount++;
    map?.set(name, { name, version, bytes, aliases, value });
    for (const a of aliases) {
      let set = this.aliasIndex.get(a);
      if (!set) this.aliasIndex.set(a, (set = new Set()));
      set.add(name);
    }
    this.pending.push({ typeUrl, name, removed: false, at: performance.now() });
  }

  private remove(typeUrl: IndexedType, name: string): void {
    const map = this.resources.get(typeUrl);
    const existing = map?.get(name);
    if (!existing) return;
    map?.delete(name);
    if ((existing.value as Address).workload) this.workloadCount--;
    this.unalias(name, existing.aliases);
    this.pending.push({ typeUrl, name, removed: true, at: performance.now() });
  }

  private unalias(name: string, aliases: readonly string[]): void {
    for (const a of aliases) {
      const set = this.aliasIndex.get(a);
      set?.delete(name);
      if (set?.size === 0) this.aliasIndex.delete(a);
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

function sameAliases(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
