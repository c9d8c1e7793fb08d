import type { Workload } from "../../xds/types.js";
import { WorkloadStatus } from "../../xds/types.js";

// The endpoints of every service, kept incrementally as workloads come and go: a workload is an
// endpoint of service key K on service port P when its `services[K]` lists P. Picking one is O(1)
// whatever the service's size; adding or removing a workload costs its own service ports.

/** A workload serving one service port, and the port it serves it on. */
export interface EndpointSlot {
  readonly workload: Workload;
  /** The PortList target port; 0 or absent there means the service port itself. */
  readonly targetPort: number;
}

/** An unordered set with O(1) add, delete by id and access by position (swap-remove). */
class SlotSet {
  private readonly slots: EndpointSlot[] = [];
  private readonly position = new Map<string, number>();

  get size(): number {
    return this.slots.length;
  }

  at(i: number): EndpointSlot | undefined {
    return this.slots[i];
  }

  add(slot: EndpointSlot): void {
    const uid = slot.workload.uid;
    const at = this.position.get(uid);
    if (at !== undefined) {
      this.slots[at] = slot;
      return;
    }
    this.position.set(uid, this.slots.length);
    this.slots.push(slot);
  }

  delete(uid: string): void {
    const at = this.position.get(uid);
    if (at === undefined) return;
    this.position.delete(uid);
    const last = this.slots.pop() as EndpointSlot;
    if (at < this.slots.length) {
      this.slots[at] = last;
      this.position.set(last.workload.uid, at);
    }
  }
}

/** The endpoints of one service port, healthy and unhealthy apart, with a round-robin cursor. */
export class PortEndpoints {
  private readonly healthy = new SlotSet();
  private readonly unhealthy = new SlotSet();
  private cursor = 0;

  get healthyCount(): number {
    return this.healthy.size;
  }

  get unhealthyCount(): number {
    return this.unhealthy.size;
  }

  get empty(): boolean {
    return this.healthy.size === 0 && this.unhealthy.size === 0;
  }

  add(slot: EndpointSlot, healthy: boolean): void {
    (healthy ? this.healthy : this.unhealthy).add(slot);
  }

  delete(uid: string): void {
    this.healthy.delete(uid);
    this.unhealthy.delete(uid);
  }

  /**
   * The next endpoint in rotation: healthy ones, or unhealthy ones when there is no healthy one
   * and `allowUnhealthy`. Removals reorder the set (swap-remove), so across changes the rotation
   * is even only approximately; between changes it visits every endpoint once per round.
   */
  pick(allowUnhealthy: boolean): EndpointSlot | undefined {
    const set = this.healthy.size > 0 ? this.healthy : allowUnhealthy ? this.unhealthy : undefined;
    if (set === undefined || set.size === 0) return undefined;
    const i = this.cursor % set.size;
    this.cursor = i + 1;
    return set.at(i);
  }
}

export class EndpointIndex {
  /** Service key → the workloads naming it, whatever their ports (config dump, counts). */
  private readonly members = new Map<string, Map<string, Workload>>();
  /** Service key → service port → its endpoints. */
  private readonly ports = new Map<string, Map<number, PortEndpoints>>();

  /** Index `workload` (after `remove` of its previous version, if any). */
  add(workload: Workload): void {
    const services = workload.services;
    if (services === undefined) return;
    const healthy = (workload.status ?? WorkloadStatus.HEALTHY) === WorkloadStatus.HEALTHY;
    // A workload without an address cannot be dialled; it is listed, not picked.
    const dialable = workload.addresses.length > 0;
    for (const key of Object.keys(services)) {
      let members = this.members.get(key);
      if (members === undefined) this.members.set(key, (members = new Map()));
      members.set(workload.uid, workload);
      if (!dialable) continue;
      let byPort = this.ports.get(key);
      if (byPort === undefined) this.ports.set(key, (byPort = new Map()));
      const seen = new Set<number>();
      for (const port of services[key]?.ports ?? []) {
        // The first entry of a port wins; a repeated port is the control plane's mistake.
        if (seen.has(port.servicePort)) continue;
        seen.add(port.servicePort);
        let endpoints = byPort.get(port.servicePort);
        if (endpoints === undefined) byPort.set(port.servicePort, (endpoints = new PortEndpoints()));
        const slot: EndpointSlot = { workload, targetPort: port.targetPort || port.servicePort };
        endpoints.add(slot, healthy);
      }
    }
  }

  /** Forget `workload` (the version that was added). */
  remove(workload: Workload): void {
    const services = workload.services;
    if (services === undefined) return;
    const uid = workload.uid;
    for (const key of Object.keys(services)) {
      const members = this.members.get(key);
      members?.delete(uid);
      if (members?.size === 0) this.members.delete(key);
      const byPort = this.ports.get(key);
      if (byPort === undefined) continue;
      for (const port of services[key]?.ports ?? []) {
        const endpoints = byPort.get(port.servicePort);
        if (endpoints === undefined) continue;
        endpoints.delete(uid);
        if (endpoints.empty) byPort.delete(port.servicePort);
      }
      if (byPort.size === 0) this.ports.delete(key);
    }
  }

  endpoints(serviceKey: string, servicePort: number): PortEndpoints | undefined {
    return this.ports.get(serviceKey)?.get(servicePort);
  }

  membersOf(serviceKey: string): ReadonlyMap<string, Workload> | undefined {
    return this.members.get(serviceKey);
  }
}
