import { join } from "node:path";
import type { Applier, ApplyReport, ZtunnelPodTarget } from "../agent/applier.js";
import { podRouteSet } from "../agent/applier.js";
import type { NetState, NodePlan } from "../netplan/types.js";
import { Runner } from "./exec.js";
import { IpRouteBackend } from "./iproute.js";
import { detectIptablesMode, IptablesBackend } from "./iptables.js";
import type { IptablesMode } from "./iptables.js";
import { IpsetBackend } from "./ipset.js";
import { SysctlBackend } from "./sysctl.js";
import { combine } from "./types.js";
import type { BackendResult } from "./types.js";

export interface ReconcilerOptions {
  /** Commands in the node's network namespace. */
  readonly runner: Runner;
  /** Where originals of changed sysctls are recorded, so cleanup can put them back. */
  readonly stateDir: string;
  /** Overrides detection of the iptables backend. */
  readonly iptablesMode?: IptablesMode;
}

/**
 * Converges a network namespace to a NetState, backend by backend, in an order that never leaves
 * a rule pointing at something missing: the ipset before the iptables rules that match it, links
 * before the routes through them, routes before the rules that select their tables.
 *
 * Every step is first run dry — reading the kernel, diffing and validating — so a plan that cannot
 * be applied (a missing device, a rule the kernel refuses to parse is caught by the atomic restore)
 * is reported before anything is written.
 */
export class Reconciler implements Applier {
  private mode: IptablesMode | undefined;

  constructor(private readonly opts: ReconcilerOptions) {
    this.mode = opts.iptablesMode;
  }

  async apply(plan: NodePlan, pod?: ZtunnelPodTarget): Promise<ApplyReport> {
    const started = performance.now();
    const results = [await this.converge(this.opts.runner, plan.host, "host", pod?.netns)];
    if (pod && plan.ztunnelPod) {
      results.push(await this.converge(new Runner(pod.netns), plan.ztunnelPod, "ztunnel-pod", undefined));
    }
    return report(results, started);
  }

  async applyMembers(previous: NodePlan, next: NodePlan): Promise<ApplyReport> {
    const started = performance.now();
    const results: BackendResult[] = [];
    const ipset = new IpsetBackend(this.opts.runner);
    const added = new Set<string>();
    const removed = new Set<string>();
    for (const set of next.host.ipsets) {
      const before = previous.host.ipsets.find((s) => s.name === set.name)?.members ?? [];
      const was = new Map(before.map((m) => [m.ip, m.comment]));
      const now = new Set(set.members.map((m) => m.ip));
      const add = set.members.filter((m) => was.get(m.ip) !== m.comment);
      const del = before.filter((m) => !now.has(m.ip)).map((m) => m.ip);
      for (const m of add) if (!was.has(m.ip)) added.add(m.ip);
      for (const ip of del) removed.add(ip);
      if (add.length + del.length > 0) results.push(await ipset.applyMembers(set.name, add, del));
    }
    // Only membership changed (the caller checked), so the per-pod routes that change are exactly
    // those of the pods that came and went.
    const addRoutes = [...podRouteSet(next)].filter((r) => added.has(r.dst));
    const delRoutes = [...podRouteSet(previous)].filter((r) => removed.has(r.dst));
    if (addRoutes.length + delRoutes.length > 0) {
      results.push(await new IpRouteBackend(this.opts.runner).applyRouteDelta(addRoutes, delRoutes));
    }
    return report(results, started);
  }

  async cleanup(): Promise<ApplyReport> {
    const started = performance.now();
    const runner = this.opts.runner;
    const mode = await this.iptablesMode(runner);
    // iptables first: an ipset referenced by a rule cannot be destroyed.
    const results = [
      await new IptablesBackend(runner, mode).cleanup(),
      await new IpsetBackend(runner).cleanup(),
      await new IpRouteBackend(runner).cleanup(),
      await new SysctlBackend(runner, this.sysctlState("host")).cleanup(),
    ];
    return report(results, started);
  }

  private async converge(
    runner: Runner,
    state: NetState,
    scope: string,
    podNetns: string | undefined,
  ): Promise<BackendResult> {
    const mode = await this.iptablesMode(runner);
    const ipset = new IpsetBackend(runner);
    const ip = new IpRouteBackend(runner, podNetns ? { podNetns } : {});
    const iptables = new IptablesBackend(runner, mode);
    const sysctl = new SysctlBackend(runner, this.sysctlState(scope));
    const ipState = {
      rules: state.rules,
      localRulePriority: state.localRulePriority,
      routes: state.routes,
      links: state.links,
      linkSettings: state.linkSettings,
    };
    // Dry run: reads and validates every step; throws before any write when one cannot be applied.
    await ipset.reconcile(state.ipsets, { dryRun: true });
    await ip.reconcile(ipState, { dryRun: true });
    await iptables.reconcile(state.firewalls, { dryRun: true });
    return combine([
      await ipset.reconcile(state.ipsets),
      await ip.reconcile(ipState),
      await iptables.reconcile(state.firewalls),
      // After links and rules: per-link keys exist only once the links do, and the conntrack
      // keys once a conntrack rule has loaded the module.
      await sysctl.reconcile(state.sysctls),
    ]);
  }

  private async iptablesMode(runner: Runner): Promise<IptablesMode> {
    this.mode ??= await detectIptablesMode(runner);
    return this.mode;
  }

  private sysctlState(scope: string): string {
    return join(this.opts.stateDir, `sysctl-${scope}.json`);
  }
}

function report(results: readonly BackendResult[], started: number): ApplyReport {
  const all = combine(results);
  return { changes: all.changes, writes: all.writes, durationMs: performance.now() - started };
}
