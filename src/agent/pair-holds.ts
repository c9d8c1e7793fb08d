import type { ClusterPod } from "../cluster/types.js";
import { canonicalIp } from "../configfile/net.js";
import type { PairPod } from "./pair.js";

// The DPU's record of pods its CPU told it about before the API showed them. A held pod is
// captured at once; the API stays the source of truth: when it shows the pod with the held
// addresses the hold has done its job and the pod is an ordinary member (or not, if the API says
// it is not meshed); when it contradicts the hold, or does not confirm it within the grace period,
// the hold is dropped and the pod stops being captured on the next sync.

export interface HeldPod extends PairPod {
  /** When the hold was taken or last renewed (ms, the bookkeeping clock). */
  readonly heldAt: number;
}

export type HoldVerdict =
  | { readonly state: "pending" }
  /** The API shows the pod with the held addresses: membership follows the API from now on. */
  | { readonly state: "confirmed" }
  /** The API says something else about the pod: deleted, elsewhere, other addresses. */
  | { readonly state: "contradicted"; readonly reason: string }
  | { readonly state: "expired"; readonly reason: string };

/**
 * What the API's view means for one hold. `apiPod` is the pod of the same uid as this node's
 * view has it; `deleted` says the view saw it deleted after the hold was taken.
 */
export function judgeHold(
  hold: HeldPod,
  apiPod: ClusterPod | undefined,
  deleted: boolean,
  now: number,
  graceMs: number,
): HoldVerdict {
  if (deleted) return { state: "contradicted", reason: "the API deleted the pod" };
  if (apiPod) {
    if (apiPod.nodeName !== undefined && apiPod.nodeName !== hold.node)
      return { state: "contradicted", reason: `the API places the pod on ${apiPod.nodeName}` };
    if (apiPod.ips.length > 0) {
      const api = new Set(apiPod.ips.map((a) => canonicalIp(a)?.ip ?? a));
      if (hold.ips.every((ip) => api.has(ip))) return { state: "confirmed" };
      return {
        state: "contradicted",
        reason: `the API gives the pod ${[...api].join(", ")}, not ${hold.ips.join(", ")}`,
      };
    }
  }
  const age = now - hold.heldAt;
  if (age >= graceMs)
    return {
      state: "expired",
      reason: `the API did not confirm the pod within ${Math.round(graceMs / 1000)} s of its hold`,
    };
  return { state: "pending" };
}

export interface HoldRemoval {
  readonly hold: HeldPod;
  readonly verdict: Exclude<HoldVerdict, { state: "pending" }>;
}

/** The holds of one DPU, keyed by pod uid. The clock is injected (tests move it). */
export class PairHolds {
  private readonly holds = new Map<string, HeldPod>();
  private readonly deleted = new Set<string>();

  constructor(
    readonly graceMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Take or renew a hold (a retried ADD renews it with the addresses it gives now). */
  hold(pod: PairPod): HeldPod {
    const held: HeldPod = { ...pod, ips: [...pod.ips], heldAt: this.now() };
    this.holds.set(pod.uid, held);
    this.deleted.delete(pod.uid);
    return held;
  }

  release(uid: string): HeldPod | undefined {
    const held = this.holds.get(uid);
    this.holds.delete(uid);
    this.deleted.delete(uid);
    return held;
  }

  /** The API deleted the pod; judged on the next review. Only held pods are remembered. */
  markDeleted(uid: string): void {
    if (this.holds.has(uid)) this.deleted.add(uid);
  }

  get(uid: string): HeldPod | undefined {
    return this.holds.get(uid);
  }

  list(): readonly HeldPod[] {
    return [...this.holds.values()];
  }

  get size(): number {
    return this.holds.size;
  }

  /** Judge every hold against the API's view; drop and return those that are no longer pending. */
  review(apiPod: (uid: string) => ClusterPod | undefined): HoldRemoval[] {
    const now = this.now();
    const removed: HoldRemoval[] = [];
    for (const hold of this.holds.values()) {
      const verdict = judgeHold(hold, apiPod(hold.uid), this.deleted.has(hold.uid), now, this.graceMs);
      if (verdict.state === "pending") continue;
      this.holds.delete(hold.uid);
      this.deleted.delete(hold.uid);
      removed.push({ hold, verdict });
    }
    return removed;
  }
}
