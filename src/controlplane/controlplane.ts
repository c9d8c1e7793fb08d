import type { Logger } from "pino";
import type { ClusterEvent, ClusterSource } from "../cluster/types.js";
import { formatIssue } from "../configfile/issues.js";
import type { DeltaDiscoveryResponse } from "../xds/messages.js";
import type { ServedNodes } from "../xds/types.js";
import { servedNodes } from "../topology/lookup.js";
import { parseTopology } from "../topology/parse.js";
import type { Topology } from "../topology/types.js";
import { AmbientIndex } from "./index/index.js";
import type { IndexedType, ResourceChange } from "./index/index.js";
import { DEFAULT_INDEX_OPTIONS } from "./index/workload.js";
import type { IndexOptions } from "./index/workload.js";
import { ControlPlaneMetrics } from "./metrics.js";
import { ProxySession } from "./xds/session.js";
import type { ProxyPeer } from "./xds/session.js";

export interface ControlPlaneOptions {
  readonly source: ClusterSource;
  readonly index?: Partial<IndexOptions>;
  /** Changes arriving within this window go out in one response per proxy and type. */
  readonly debounceMs?: number;
  readonly log: Logger;
  readonly metrics?: ControlPlaneMetrics;
}

/**
 * The istiod job of offmesh, without its transport: the ambient index fed by the cluster source,
 * the topology (validated before use), and one session per connected ztunnel to which index
 * changes are pushed, debounced.
 */
export class ControlPlane {
  readonly index: AmbientIndex;
  readonly metrics: ControlPlaneMetrics;
  private topology: Topology | undefined;
  private topologyError: string | undefined;
  private readonly sessions = new Map<string, ProxySession>();
  private pending = new Map<IndexedType, Set<string>>();
  private oldestPending: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private nextId = 0;
  private ready = false;

  constructor(private readonly opts: ControlPlaneOptions) {
    this.index = new AmbientIndex({ ...DEFAULT_INDEX_OPTIONS, ...opts.index });
    this.metrics = opts.metrics ?? new ControlPlaneMetrics();
  }

  async start(): Promise<void> {
    await this.opts.source.start();
    const snapshot = this.opts.source.snapshot();
    if (snapshot.topology) this.adoptTopology(snapshot.topology.text, snapshot.topology.source);
    // Subscribed after the first build: no proxy is connected yet, there is nothing to push.
    this.index.load(snapshot);
    this.index.subscribe((changes) => this.queue(changes));
    this.unsubscribe = this.opts.source.subscribe((e) => this.onEvent(e));
    this.updateGauges();
    this.ready = true;
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    if (this.timer) clearTimeout(this.timer);
    await this.opts.source.stop();
  }

  isReady(): boolean {
    return this.ready;
  }

  cluster(): ClusterSource {
    return this.opts.source;
  }

  currentTopology(): { topology?: Topology; error?: string } {
    return {
      ...(this.topology ? { topology: this.topology } : {}),
      ...(this.topologyError ? { error: this.topologyError } : {}),
    };
  }

  /** The nodes whose workloads the ztunnel on `node` serves; never "all" (fix of bug 29). */
  servedNodes(node: string): ServedNodes {
    if (!this.topology) return { node, nodes: [], reason: this.topologyError ?? "no topology loaded" };
    const nodes = servedNodes(this.topology, node).map((n) => n.name);
    if (nodes.length > 0) return { node, nodes };
    const known = this.topology.byName.get(node);
    return {
      node,
      nodes: [],
      reason: known
        ? `${node} is a CPU node; its workloads are served by the ztunnel on ${known.partner?.name ?? "its DPU"}`
        : `${node} is not declared in ${this.topology.file}`,
    };
  }

  /** A ztunnel's stream opened; `send` delivers responses to it. */
  open(peer: ProxyPeer, send: (res: DeltaDiscoveryResponse) => void): ProxySession {
    const id = `${peer.podName}.${peer.namespace}-${++this.nextId}`;
    const session = new ProxySession(id, peer, this.index, (n) => this.servedNodes(n), send, {
      onPush: (typeUrl, resources, _removed, oldest) => {
        this.metrics.pushes.inc({ type: typeUrl });
        this.metrics.pushedResources.inc({ type: typeUrl }, resources);
        if (oldest !== undefined) this.metrics.pushLatency.observe((performance.now() - oldest) / 1000);
      },
      onNack: (typeUrl, message) => {
        this.metrics.nacks.inc({ type: typeUrl });
        this.opts.log.warn({ proxy: id, typeUrl, message }, "proxy rejected a response");
      },
    });
    this.sessions.set(id, session);
    this.metrics.connectedProxies.set(this.sessions.size);
    this.opts.log.info(
      { proxy: id, node: peer.node, served: session.servedNodesValue()?.nodes },
      "proxy connected",
    );
    return session;
  }

  close(session: ProxySession): void {
    if (this.sessions.delete(session.id)) this.opts.log.info({ proxy: session.id }, "proxy disconnected");
    this.metrics.connectedProxies.set(this.sessions.size);
  }

  proxies(): readonly ProxySession[] {
    return [...this.sessions.values()];
  }

  /** Push what is pending now (tests and the debounce timer). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const changed = this.pending;
    const oldest = this.oldestPending ?? performance.now();
    this.pending = new Map();
    this.oldestPending = undefined;
    if (changed.size === 0) return;
    for (const s of this.sessions.values()) s.push(changed, oldest);
  }

  private onEvent(event: ClusterEvent): void {
    if (event.kind === "topology") {
      this.adoptTopology(event.object.text, event.object.source);
      return;
    }
    this.index.apply(event);
    this.updateGauges();
  }

  private adoptTopology(text: string, source: string): void {
    const parsed = parseTopology(text, source);
    if (!parsed.ok) {
      this.topologyError = `${source} rejected, ${this.topology ? "keeping the previous topology" : "no topology in force"}: ${parsed.issues.map(formatIssue).join("; ")}`;
      this.metrics.topologyRejections.inc();
      this.opts.log.error({ issues: parsed.issues }, this.topologyError);
      return;
    }
    this.topology = parsed.value;
    this.topologyError = undefined;
    for (const s of this.sessions.values()) s.refreshServed();
  }

  private queue(changes: readonly ResourceChange[]): void {
    for (const c of changes) {
      let set = this.pending.get(c.typeUrl);
      if (!set) this.pending.set(c.typeUrl, (set = new Set()));
      set.add(c.name);
      if (this.oldestPending === undefined || c.at < this.oldestPending) this.oldestPending = c.at;
    }
    if (!this.timer) this.timer = setTimeout(() => this.flush(), this.opts.debounceMs ?? 10);
  }

  private updateGauges(): void {
    const s = this.index.stats();
    this.metrics.indexedResources.set({ kind: "workload" }, s.workloads);
    this.metrics.indexedResources.set({ kind: "service" }, s.services);
    this.metrics.indexedResources.set({ kind: "authorization" }, s.authorizations);
  }
}
