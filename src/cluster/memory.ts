import type {
  ClusterEvent,
  ClusterNamespace,
  ClusterNode,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
  ClusterSnapshot,
  ClusterSource,
  ClusterTopology,
  Unsubscribe,
} from "./types.js";
import { serviceKey } from "./types.js";

/** Mutable maps behind a snapshot; shared by the sources that keep the whole cluster in memory. */
export class ClusterState {
  readonly nodes = new Map<string, ClusterNode>();
  readonly pods = new Map<string, ClusterPod>();
  readonly namespaces = new Map<string, ClusterNamespace>();
  readonly services = new Map<string, ClusterService>();
  readonly policies = new Map<string, ClusterPolicy>();
  topology: ClusterTopology | undefined;
  /** Copies are made once per change, not once per read: consumers read on every event. */
  private cached: ClusterSnapshot | undefined;

  /** Apply an event to the maps. */
  apply(event: ClusterEvent): void {
    this.cached = undefined;
    const del = event.type === "delete";
    switch (event.kind) {
      case "node":
        if (del) this.nodes.delete(event.object.name);
        else this.nodes.set(event.object.name, event.object);
        return;
      case "pod":
        if (del) this.pods.delete(event.object.uid);
        else this.pods.set(event.object.uid, event.object);
        return;
      case "namespace":
        if (del) this.namespaces.delete(event.object.name);
        else this.namespaces.set(event.object.name, event.object);
        return;
      case "service":
        if (del) this.services.delete(serviceKey(event.object));
        else this.services.set(serviceKey(event.object), event.object);
        return;
      case "policy":
        if (del) this.policies.delete(serviceKey(event.object));
        else this.policies.set(serviceKey(event.object), event.object);
        return;
      case "topology":
        this.topology = event.object;
        return;
    }
  }

  snapshot(): ClusterSnapshot {
    this.cached ??= {
      nodes: new Map(this.nodes),
      pods: new Map(this.pods),
      namespaces: new Map(this.namespaces),
      services: new Map(this.services),
      policies: new Map(this.policies),
      ...(this.topology ? { topology: this.topology } : {}),
    };
    return this.cached;
  }
}

/** Fan-out of events to subscribers; a throwing listener does not stop the others. */
export class Listeners {
  private readonly set = new Set<(event: ClusterEvent) => void>();

  add(listener: (event: ClusterEvent) => void): Unsubscribe {
    this.set.add(listener);
    return () => this.set.delete(listener);
  }

  emit(event: ClusterEvent): void {
    for (const l of [...this.set]) {
      try {
        l(event);
      } catch (err) {
        process.emitWarning(`cluster event listener failed: ${(err as Error).message}`);
      }
    }
  }
}

/**
 * A cluster held in memory and changed by calls: the source the tests drive. Every change is
 * emitted as an event, synchronously, after the snapshot reflects it.
 */
export class MemoryClusterSource implements ClusterSource {
  private readonly state = new ClusterState();
  private readonly listeners = new Listeners();

  async start(): Promise<void> {}
  async stop(): Promise<void> {}

  snapshot(): ClusterSnapshot {
    return this.state.snapshot();
  }

  subscribe(listener: (event: ClusterEvent) => void): Unsubscribe {
    return this.listeners.add(listener);
  }

  /** Apply and emit one event. */
  emit(event: ClusterEvent): void {
    this.state.apply(event);
    this.listeners.emit(event);
  }

  upsertNode(node: ClusterNode): void {
    this.emit({ kind: "node", type: "upsert", object: node });
  }
  deleteNode(name: string): void {
    const node = this.state.nodes.get(name);
    if (node) this.emit({ kind: "node", type: "delete", object: node });
  }
  upsertPod(pod: ClusterPod): void {
    this.emit({ kind: "pod", type: "upsert", object: pod });
  }
  deletePod(uid: string): void {
    const pod = this.state.pods.get(uid);
    if (pod) this.emit({ kind: "pod", type: "delete", object: pod });
  }
  upsertNamespace(ns: ClusterNamespace): void {
    this.emit({ kind: "namespace", type: "upsert", object: ns });
  }
  deleteNamespace(name: string): void {
    const ns = this.state.namespaces.get(name);
    if (ns) this.emit({ kind: "namespace", type: "delete", object: ns });
  }
  upsertService(svc: ClusterService): void {
    this.emit({ kind: "service", type: "upsert", object: svc });
  }
  deleteService(namespace: string, name: string): void {
    const svc = this.state.services.get(serviceKey({ namespace, name }));
    if (svc) this.emit({ kind: "service", type: "delete", object: svc });
  }
  upsertPolicy(policy: ClusterPolicy): void {
    this.emit({ kind: "policy", type: "upsert", object: policy });
  }
  deletePolicy(namespace: string, name: string): void {
    const policy = this.state.policies.get(serviceKey({ namespace, name }));
    if (policy) this.emit({ kind: "policy", type: "delete", object: policy });
  }
  setTopology(topology: ClusterTopology): void {
    this.emit({ kind: "topology", type: "upsert", object: topology });
  }
}
