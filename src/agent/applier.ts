import type { Change } from "../netapply/types.js";
import { compareIps } from "../netplan/members.js";
import type { NodePlan, Route } from "../netplan/types.js";

/** What one apply did to the kernel. */
export interface ApplyReport {
  readonly changes: readonly Change[];
  readonly writes: number;
  readonly durationMs: number;
}

/** Where the ztunnel pod's own state is applied: its network namespace, when the agent knows it. */
export interface ZtunnelPodTarget {
  /** Path of the pod's network namespace, e.g. /var/run/netns/cni-…, as the CNI ADD gave it. */
  readonly netns: string;
}

/**
 * Converges a node's kernel to a plan. Implemented by the reconciler (src/netapply); the agent
 * only decides what to apply and when.
 */
export interface Applier {
  /** Read the kernel, diff, write what differs. A failure leaves the kernel as it was before the failing step. */
  apply(plan: NodePlan, pod?: ZtunnelPodTarget): Promise<ApplyReport>;
  /** Fast path for a pod added or removed: only ipset members and per-pod routes, without reading the kernel. */
  applyMembers(previous: NodePlan, next: NodePlan): Promise<ApplyReport>;
  /** Remove every trace of offmesh from the node. */
  cleanup(): Promise<ApplyReport>;
}

/** True when two plans differ at most in ipset members and per-pod routes of table 100. */
export function onlyMembershipDiffers(a: NodePlan, b: NodePlan): boolean {
  const strip = (p: NodePlan): unknown => {
    const pods = podRouteSet(p);
    return {
      ...p,
      notes: [],
      host: {
        ...p.host,
        ipsets: p.host.ipsets.map((s) => ({ ...s, members: [] })),
        routes: p.host.routes.filter((r) => !pods.has(r)),
      },
    };
  };
  return JSON.stringify(strip(a)) === JSON.stringify(strip(b));
}

/** The table-100 routes to captured pods (not the ztunnel's own route), as a set of the plan's objects. */
export function podRouteSet(plan: NodePlan): ReadonlySet<Route> {
  const members = new Set(plan.host.ipsets.flatMap((s) => s.members.map((m) => m.ip)));
  return new Set(
    plan.host.routes.filter((r) => r.table === 100 && r.dst !== "default" && members.has(r.dst)),
  );
}

/**
 * `base` with the captured pods of `extra` added: their ipset members and table-100 routes. Used
 * to capture one new pod without replanning every pod of the node; the next full plan yields the
 * same state. Linear in the node's pods, with no per-pod serialisation: it runs inside a pod's ADD.
 */
export function withMembersOf(base: NodePlan, extra: NodePlan): NodePlan {
  const ipsets = base.host.ipsets.map((set) => {
    const add = extra.host.ipsets.find((s) => s.name === set.name)?.members ?? [];
    const have = new Set(set.members.map((m) => m.ip));
    const members = [...set.members];
    for (const m of add) if (!have.has(m.ip)) members.splice(insertionIndex(members, m.ip), 0, m);
    return members.length === set.members.length ? set : { ...set, members };
  });
  const routed = new Set(base.host.routes.filter((r) => r.table === 100).map((r) => r.dst));
  const routes = [...base.host.routes, ...[...podRouteSet(extra)].filter((r) => !routed.has(r.dst))];
  return { ...base, host: { ...base.host, ipsets, routes } };
}

/** Where `ip` goes in members sorted by address (binary search). */
function insertionIndex(members: readonly { ip: string }[], ip: string): number {
  let lo = 0;
  let hi = members.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compareIps(members[mid]?.ip ?? "", ip) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
