import { EventEmitter } from "node:events";
import type { ApplyResult, RejectedResource, ResourceChanges, WatchedType } from "../../xds/client.js";
import type { Resource } from "../../xds/messages.js";
import { decodeAddress, decodeAuthorization, decodeServedNodes, unpackAny } from "../../xds/proto.js";
import type { Address, Authorization, Service, ServedNodes, Workload } from "../../xds/types.js";
import { AuthzScope, NetworkMode, TYPE_URL, WorkloadStatus } from "../../xds/types.js";
import { authorizationProblem } from "../policy/validate.js";
import { ClaimIndex } from "./claims.js";
import { dumpPolicy, dumpService, dumpWorkload } from "./dump.js";
import type { PolicyDump, ServiceDump, WorkloadDump } from "./dump.js";
import { EndpointIndex } from "./endpoints.js";
import { identityOf } from "./identity.js";
import { canonicalIpText, lookupKey, networkAddressKey } from "./ip.js";
import { serviceKeyOf, serviceProblem, workloadProblem } from "./validate.js";

// What a ztunnel knows of the mesh, built from the three xDS types it watches: workloads and
// services (Address), L4 policies (Authorization) and the nodes it serves (ServedNodes). Updates
// are per resource and incremental; every lookup the data path makes is a Map read.
//
// Nothing here is ever cleared wholesale: when the ADS stream drops the client stops calling
// apply, and the last accepted state keeps serving until the next stream updates it. A rejected
// update likewise leaves the previous version of that resource in place.

export interface ZtunnelStateOptions {
  /** The node this proxy runs on: a ServedNodes resource for another node is rejected. */
  readonly node?: string;
}

/** Which parts of state one applied response changed. */
export interface StateChange {
  readonly version: number;
  readonly workloads: boolean;
  readonly services: boolean;
  readonly policies: boolean;
  readonly servedNodes: boolean;
}

export interface ZtunnelStateEvents {
  /**
   * Emitted synchronously at the end of an apply that changed something. A listener that throws
   * does not fail the apply (valid config would be NACKed); the error is rethrown on the next tick.
   */
  changed: [change: StateChange];
}

export interface ServedNodesView {
  /** The node the control plane says this proxy runs on. */
  readonly node: string;
  /** The nodes whose workloads this proxy serves; empty: none. */
  readonly nodes: ReadonlySet<string>;
  /** Why the set is empty, when the control plane said. */
  readonly reason?: string;
}

export interface ServiceEndpoint {
  readonly workload: Workload;
  /** The port to dial on the workload. */
  readonly targetPort: number;
  /** The workload's IP to dial: of the VIP's family when it has one, else its first. */
  readonly address: string;
}

export type ServiceResolution =
  | { readonly service: Service; readonly endpoint: ServiceEndpoint; readonly reason?: undefined }
  | { readonly service: Service | undefined; readonly endpoint: undefined; readonly reason: string };

export interface ConfigDump {
  version: number;
  servedNodes: { node: string; nodes: string[]; reason?: string } | null;
  workloads: WorkloadDump[];
  services: ServiceDump[];
  policies: PolicyDump[];
  /** Addresses claimed by several workloads (`<network>/<ip>`), the answering one first. */
  addressConflicts: { address: string; workloads: string[] }[];
}

type Decoded<T> = { value: T; error?: undefined } | { value?: undefined; error: string };

function decodeBody<T>(resource: Resource, typeUrl: string, decode: (bytes: Uint8Array) => T): Decoded<T> {
  if (resource.resource === undefined) return { error: "resource without a body" };
  try {
    return { value: decode(unpackAny(resource.resource, typeUrl)) };
  } catch (err) {
    return { error: `cannot decode: ${err instanceof Error ? err.message : String(err)}` };
  }
}

/** The `<network>/<ip>` keys of a validated workload's addresses. */
const workloadAddressKeys = (w: Workload): string[] =>
  w.addresses.map((a) => networkAddressKey(w.network ?? "", canonicalIpText(a) as string));

const serviceVipKeys = (s: Service): string[] =>
  s.addresses.map((a) => networkAddressKey(a.network ?? "", canonicalIpText(a.address) as string));

const policyKeyOf = (p: Pick<Authorization, "namespace" | "name">): string => `${p.namespace}/${p.name}`;

/**
 * Which of several workloads claiming one address answers for it: a pod network address beats a
 * host-network one (a host-network pod shares its node's IP), then a healthy workload an unhealthy
 * one (a terminating pod whose IP a new pod already has). Ties go to the latest claim.
 */
const workloadRank = (w: Workload): number =>
  (w.networkMode === NetworkMode.HOST_NETWORK ? 0 : 2) +
  ((w.status ?? WorkloadStatus.HEALTHY) === WorkloadStatus.HEALTHY ? 1 : 0);

/** LoadBalancing.HealthPolicy ALLOW_ALL: unhealthy endpoints may be used when no healthy one is. */
const HEALTH_POLICY_ALLOW_ALL = 1;

const noServedNodes: ServedNodesView = { node: "", nodes: new Set() };

class ChangeTracker {
  workloads = false;
  services = false;
  policies = false;
  servedNodes = false;

  get any(): boolean {
    return this.workloads || this.services || this.policies || this.servedNodes;
  }
}

export class ZtunnelState extends EventEmitter<ZtunnelStateEvents> {
  private readonly options: ZtunnelStateOptions;
  private changeVersion = 0;
  /** Bumped on every policy change or a change of which policies a workload names. */
  private policyVersion = 0;

  private readonly workloadsByUid = new Map<string, Workload>();
  private readonly workloadsByAddress = new ClaimIndex<Workload>((w) => w.uid, workloadRank);
  private readonly workloadsByNode = new Map<string, Map<string, Workload>>();
  private readonly servicesByKey = new Map<string, Service>();
  private readonly servicesByVip = new ClaimIndex<Service>(serviceKeyOf, () => 0);
  private readonly endpointIndex = new EndpointIndex();
  /** Address resource name → what it holds (a name could switch kind in a broken stream). */
  private readonly addressKinds = new Map<string, "workload" | "service">();

  private readonly policiesByKey = new Map<string, Authorization>();
  private readonly globalPolicies = new Map<string, Authorization>();
  private readonly namespacePolicies = new Map<string, Map<string, Authorization>>();
  private readonly policiesForCache = new WeakMap<Workload, { version: number; list: Authorization[] }>();

  private served: { name: string; view: ServedNodesView } | undefined;

  constructor(options: ZtunnelStateOptions = {}) {
    super();
    this.options = options;
  }

  /** Increases with every apply that changed something. */
  get version(): number {
    return this.changeVersion;
  }

  /** The three wildcard types this state is built from, to hand to DeltaAdsClient. */
  watchedTypes(): WatchedType[] {
    return [
      { typeUrl: TYPE_URL.address, mode: "wildcard", apply: (c) => this.applyAddresses(c) },
      { typeUrl: TYPE_URL.authorization, mode: "wildcard", apply: (c) => this.applyAuthorizations(c) },
      { typeUrl: TYPE_URL.servedNodes, mode: "wildcard", apply: (c) => this.applyServedNodes(c) },
    ];
  }

  // ---- applying xDS -----------------------------------------------------------------------------

  /** Workloads and services: removals by resource name first, then each added resource. */
  applyAddresses(changes: ResourceChanges): ApplyResult {
    const change = new ChangeTracker();
    const rejected: RejectedResource[] = [];
    for (const name of changes.removed) this.removeAddress(name, change);
    for (const resource of changes.added) {
      const decoded = decodeBody<Address>(resource, TYPE_URL.address, decodeAddress);
      if (decoded.error !== undefined) {
        rejected.push({ name: resource.name, reason: decoded.error });
        continue;
      }
      const { workload, service } = decoded.value;
      let problem: string | undefined;
      if (workload !== undefined && service !== undefined)
        problem = "address with both a workload and a service";
      else if (workload !== undefined) problem = workloadProblem(workload, resource.name);
      else if (service !== undefined) problem = serviceProblem(service, resource.name);
      else problem = "address with neither a workload nor a service";
      if (problem !== undefined) {
        rejected.push({ name: resource.name, reason: problem });
        continue;
      }
      if (workload !== undefined) this.putWorkload(resource.name, workload, change);
      else this.putService(resource.name, service as Service, change);
    }
    this.finish(change);
    return { rejected };
  }

  applyAuthorizations(changes: ResourceChanges): ApplyResult {
    const change = new ChangeTracker();
    const rejected: RejectedResource[] = [];
    for (const name of changes.removed) {
      if (this.removePolicy(name)) change.policies = true;
    }
    for (const resource of changes.added) {
      const decoded = decodeBody<Authorization>(resource, TYPE_URL.authorization, decodeAuthorization);
      if (decoded.error !== undefined) {
        rejected.push({ name: resource.name, reason: decoded.error });
        continue;
      }
      const policy = decoded.value;
      const key = policyKeyOf(policy);
      const problem =
        authorizationProblem(policy) ??
        (resource.name === key ? undefined : `resource name is not the policy's <namespace>/<name> ${key}`);
      if (problem !== undefined) {
        rejected.push({ name: resource.name, reason: problem });
        continue;
      }
      this.removePolicy(key);
      this.policiesByKey.set(key, policy);
      if (policy.scope === AuthzScope.GLOBAL) this.globalPolicies.set(key, policy);
      else if (policy.scope === AuthzScope.NAMESPACE) {
        let inNamespace = this.namespacePolicies.get(policy.namespace);
        if (inNamespace === undefined)
          this.namespacePolicies.set(policy.namespace, (inNamespace = new Map()));
        inNamespace.set(key, policy);
      }
      change.policies = true;
    }
    if (change.policies) this.policyVersion++;
    this.finish(change);
    return { rejected };
  }

  /** The one ServedNodes resource, named by this proxy's node. Its removal means: serve nothing. */
  applyServedNodes(changes: ResourceChanges): ApplyResult {
    const change = new ChangeTracker();
    const rejected: RejectedResource[] = [];
    for (const name of changes.removed) {
      if (this.served?.name === name) {
        this.served = undefined;
        change.servedNodes = true;
      }
    }
    for (const resource of changes.added) {
      const decoded = decodeBody<ServedNodes>(resource, TYPE_URL.servedNodes, decodeServedNodes);
      let problem = decoded.error;
      const value = decoded.value;
      if (value !== undefined) {
        if (value.node !== resource.name)
          problem = `resource name is not the node ${JSON.stringify(value.node)}`;
        else if (this.options.node !== undefined && value.node !== this.options.node) {
          problem = `served nodes of ${value.node}, but this proxy runs on ${this.options.node}`;
        }
      }
      if (problem !== undefined || value === undefined) {
        rejected.push({ name: resource.name, reason: problem ?? "no value" });
        continue;
      }
      this.served = {
        name: resource.name,
        view: {
          node: value.node,
          nodes: new Set(value.nodes),
          ...(value.reason ? { reason: value.reason } : {}),
        },
      };
      change.servedNodes = true;
    }
    this.finish(change);
    return { rejected };
  }

  private finish(change: ChangeTracker): void {
    if (!change.any) return;
    this.changeVersion++;
    const event: StateChange = {
      version: this.changeVersion,
      workloads: change.workloads,
      services: change.services,
      policies: change.policies,
      servedNodes: change.servedNodes,
    };
    try {
      this.emit("changed", event);
    } catch (err) {
      process.nextTick(() => {
        throw err;
      });
    }
  }

  private removeAddress(name: string, change: ChangeTracker): void {
    const kind = this.addressKinds.get(name);
    if (kind === "workload") {
      const old = this.workloadsByUid.get(name);
      if (old !== undefined) this.unindexWorkload(old);
      this.workloadsByUid.delete(name);
      change.workloads = true;
      // Which policies apply to a workload is cached per workload object; a gone workload's entry
      // is collected with it.
    } else if (kind === "service") {
      const old = this.servicesByKey.get(name);
      if (old !== undefined) this.unindexService(old);
      this.servicesByKey.delete(name);
      change.services = true;
    }
    this.addressKinds.delete(name);
  }

  private putWorkload(name: string, workload: Workload, change: ChangeTracker): void {
    if (this.addressKinds.get(name) === "service") this.removeAddress(name, change);
    const old = this.workloadsByUid.get(workload.uid);
    if (old !== undefined) this.unindexWorkload(old, workload);
    this.workloadsByUid.set(workload.uid, workload);
    this.addressKinds.set(name, "workload");
    this.indexWorkload(workload);
    change.workloads = true;
  }

  private indexWorkload(w: Workload): void {
    // Addresses the workload already claimed are claimed again in place (ClaimIndex.set keeps the
    // position of a claimant with the same id), so an update does not win contested addresses.
    for (const key of workloadAddressKeys(w)) this.workloadsByAddress.set(key, w);
    if (w.node) {
      let onNode = this.workloadsByNode.get(w.node);
      if (onNode === undefined) this.workloadsByNode.set(w.node, (onNode = new Map()));
      onNode.set(w.uid, w);
    }
    this.endpointIndex.add(w);
  }

  /** Drop the indexes of `w`; with `next`, the version replacing it, keep the addresses it keeps. */
  private unindexWorkload(w: Workload, next?: Workload): void {
    const kept = next === undefined ? undefined : new Set(workloadAddressKeys(next));
    for (const key of workloadAddressKeys(w)) {
      if (!kept?.has(key)) this.workloadsByAddress.delete(key, w.uid);
    }
    if (w.node) {
      const onNode = this.workloadsByNode.get(w.node);
      onNode?.delete(w.uid);
      if (onNode?.size === 0) this.workloadsByNode.delete(w.node);
    }
    this.endpointIndex.remove(w);
  }

  private putService(name: string, service: Service, change: ChangeTracker): void {
    if (this.addressKinds.get(name) === "workload") this.removeAddress(name, change);
    const key = serviceKeyOf(service);
    const old = this.servicesByKey.get(key);
    if (old !== undefined) this.unindexService(old, service);
    this.servicesByKey.set(key, service);
    this.addressKinds.set(name, "service");
    for (const vip of serviceVipKeys(service)) this.servicesByVip.set(vip, service);
    change.services = true;
  }

  private unindexService(s: Service, next?: Service): void {
    const kept = next === undefined ? undefined : new Set(serviceVipKeys(next));
    const key = serviceKeyOf(s);
    for (const vip of serviceVipKeys(s)) {
      if (!kept?.has(vip)) this.servicesByVip.delete(vip, key);
    }
  }

  /** Whether a policy was held under `key`. */
  private removePolicy(key: string): boolean {
    const old = this.policiesByKey.get(key);
    if (old === undefined) return false;
    this.policiesByKey.delete(key);
    this.globalPolicies.delete(key);
    const inNamespace = this.namespacePolicies.get(old.namespace);
    inNamespace?.delete(key);
    if (inNamespace?.size === 0) this.namespacePolicies.delete(old.namespace);
    this.policyVersion++;
    return true;
  }

  // ---- queries ----------------------------------------------------------------------------------

  workload(uid: string): Workload | undefined {
    return this.workloadsByUid.get(uid);
  }

  /** The workload answering for `ip` in `network` (see workloadRank when several claim it). */
  workloadByIp(ip: string, network = ""): Workload | undefined {
    const key = lookupKey(network, ip);
    return key === undefined ? undefined : this.workloadsByAddress.get(key);
  }

  service(namespace: string, hostname: string): Service | undefined {
    return this.servicesByKey.get(`${namespace}/${hostname}`);
  }

  /** A service by its xDS name `<namespace>/<hostname>`. */
  serviceByKey(key: string): Service | undefined {
    return this.servicesByKey.get(key);
  }

  /** The service with VIP `ip` in `network`; the latest to claim it when several do. */
  serviceByVip(ip: string, network = ""): Service | undefined {
    const key = lookupKey(network, ip);
    return key === undefined ? undefined : this.servicesByVip.get(key);
  }

  /** A policy by its xDS name `<namespace>/<name>`. */
  policy(key: string): Authorization | undefined {
    return this.policiesByKey.get(key);
  }

  /** What the control plane said this proxy serves; nothing until it has said. */
  servedNodes(): ServedNodesView {
    return this.served?.view ?? noServedNodes;
  }

  isServedHere(workload: Workload): boolean {
    return workload.node !== undefined && this.servedNodes().nodes.has(workload.node);
  }

  /** The workload at `ip` if this proxy serves it. */
  servedWorkloadByIp(ip: string, network = ""): Workload | undefined {
    const w = this.workloadByIp(ip, network);
    return w !== undefined && this.isServedHere(w) ? w : undefined;
  }

  /** Every workload on a node this proxy serves. */
  servedWorkloads(): Workload[] {
    const out: Workload[] = [];
    for (const node of this.servedNodes().nodes) {
      for (const w of this.workloadsByNode.get(node)?.values() ?? []) out.push(w);
    }
    return out;
  }

  identityOf(workload: Workload): string {
    return identityOf(workload);
  }

  /**
   * An endpoint for a connection to service VIP `vip`:`port`: among the workloads whose
   * `services[<ns>/<hostname>]` lists the port, healthy ones in round-robin; unhealthy ones only
   * when none is healthy and the service's health policy is ALLOW_ALL.
   */
  resolveService(vip: string, port: number, network = ""): ServiceResolution {
    const service = this.serviceByVip(vip, network);
    if (service === undefined) {
      return { service: undefined, endpoint: undefined, reason: `no service has VIP ${network}/${vip}` };
    }
    const key = serviceKeyOf(service);
    if (service.ports.length > 0 && !service.ports.some((p) => p.servicePort === port)) {
      return { service, endpoint: undefined, reason: `service ${key} has no port ${port}` };
    }
    const endpoints = this.endpointIndex.endpoints(key, port);
    const allowUnhealthy = service.loadBalancing?.healthPolicy === HEALTH_POLICY_ALLOW_ALL;
    const slot = endpoints?.pick(allowUnhealthy);
    if (slot === undefined) {
      const unhealthy = endpoints?.unhealthyCount ?? 0;
      const reason =
        unhealthy > 0
          ? `service ${key} has no healthy endpoint for port ${port} (${unhealthy} unhealthy)`
          : `service ${key} has no endpoint for port ${port}`;
      return { service, endpoint: undefined, reason };
    }
    const wantV6 = vip.includes(":") && !vip.toLowerCase().startsWith("::ffff:");
    const addresses = slot.workload.addresses;
    const chosen = addresses.find((a) => (a.length === 16) === wantV6) ?? (addresses[0] as Uint8Array);
    return {
      service,
      endpoint: {
        workload: slot.workload,
        targetPort: slot.targetPort,
        address: canonicalIpText(chosen) as string,
      },
    };
  }

  /**
   * The policies that apply to connections to `workload`: GLOBAL ones, NAMESPACE ones of its
   * namespace, and the ones its `authorizationPolicies` names (unknown names skipped), each once.
   * The list is cached per workload object until policies change; treat it as read-only.
   */
  policiesFor(workload: Workload): readonly Authorization[] {
    const cached = this.policiesForCache.get(workload);
    if (cached !== undefined && cached.version === this.policyVersion) return cached.list;
    const list: Authorization[] = [...this.globalPolicies.values()];
    for (const p of this.namespacePolicies.get(workload.namespace)?.values() ?? []) list.push(p);
    const named = workload.authorizationPolicies ?? [];
    if (named.length > 0) {
      const seen = new Set(list);
      for (const key of named) {
        const p = this.policiesByKey.get(key);
        if (p !== undefined && !seen.has(p)) {
          seen.add(p);
          list.push(p);
        }
      }
    }
    this.policiesForCache.set(workload, { version: this.policyVersion, list });
    return list;
  }

  counts(): { workloads: number; services: number; policies: number; servedNodes: number } {
    return {
      workloads: this.workloadsByUid.size,
      services: this.servicesByKey.size,
      policies: this.policiesByKey.size,
      servedNodes: this.servedNodes().nodes.size,
    };
  }

  /** Everything held, as the admin endpoint shows it; lists sorted by name. */
  configDump(): ConfigDump {
    const served = this.served?.view;
    const byName = <T>(entries: Iterable<[string, T]>): [string, T][] =>
      [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return {
      version: this.changeVersion,
      servedNodes:
        served === undefined
          ? null
          : {
              node: served.node,
              nodes: [...served.nodes].sort(),
              ...(served.reason !== undefined ? { reason: served.reason } : {}),
            },
      workloads: byName(this.workloadsByUid).map(([, w]) => dumpWorkload(w, this.isServedHere(w))),
      services: byName(this.servicesByKey).map(([key, s]) =>
        dumpService(s, key, this.endpointIndex.membersOf(key)?.values() ?? []),
      ),
      policies: byName(this.policiesByKey).map(([, p]) => dumpPolicy(p)),
      addressConflicts: this.workloadsByAddress
        .conflicts()
        .map(({ key, ids }) => ({ address: key, workloads: ids }))
        .sort((a, b) => (a.address < b.address ? -1 : 1)),
    };
  }
}
