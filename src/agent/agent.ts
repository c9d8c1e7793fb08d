import type { Logger } from "pino";
import type { ClusterEvent, ClusterPod, ClusterSource } from "../cluster/types.js";
import type { AgentRequest, AgentResponse } from "../cni/protocol.js";
import { formatIssue } from "../configfile/issues.js";
import type { Runner } from "../netapply/exec.js";
import type { ConflistOptions } from "../netplan/conflist.js";
import { planNode } from "../netplan/plan.js";
import type { CniConflist, NodePlan, TunnelKind } from "../netplan/types.js";
import { parseTopology } from "../topology/parse.js";
import type { Topology, TopologyNode } from "../topology/types.js";
import { onlyMembershipDiffers, withMembersOf } from "./applier.js";
import type { Applier, ApplyReport } from "./applier.js";
import { detectTunnel, findNic, hostVethOf } from "./discover.js";
import { buildFacts, ztunnelPodOn } from "./facts.js";
import type { KernelFacts } from "./facts.js";
import { isZtunnel, meshDecision } from "../cluster/membership.js";
import type { AgentMetrics } from "./metrics.js";

export interface AgentOptions {
  readonly nodeName: string;
  readonly source: ClusterSource;
  /** Commands in the node's network namespace. */
  readonly runner: Runner;
  readonly applier: Applier;
  readonly metrics: AgentMetrics;
  readonly log: Logger;
  /** Installs the CNI conflist; undefined: the agent does not manage the node's CNI config. */
  readonly installConflist?: (conflist: CniConflist) => Promise<boolean>;
  readonly conflistOptions?: ConflistOptions;
  readonly clusterPodCIDRs?: readonly string[];
  /** Overrides tunnel detection. */
  readonly tunnel?: TunnelKind;
  /** Full resync period (drift repair). */
  readonly resyncMs?: number;
  /** How long an ADD waits for the cluster source to show its pod. */
  readonly podWaitMs?: number;
}

export interface AgentStatus {
  readonly node: string;
  readonly role: string;
  readonly pair?: string;
  readonly topology: { readonly source?: string; readonly error?: string };
  readonly ready: boolean;
  readonly notReadyReason?: string;
  readonly tunnel?: TunnelKind;
  readonly ztunnel?: { readonly ip: string; readonly hostVeth?: string };
  readonly lastApply?: {
    readonly at: string;
    readonly kind: string;
    readonly durationMs: number;
    readonly writes: number;
    readonly changes: number;
    readonly error?: string;
  };
  readonly applies: number;
  readonly failures: number;
  readonly driftRepairs: number;
  readonly members: readonly { readonly ip: string; readonly uid: string }[];
  readonly notes: readonly string[];
}

type SyncKind = "full" | "members" | "auto";

/**
 * The node agent: keeps this node's kernel in the planned state as the cluster changes. Inputs
 * are the cluster source's events, the CNI plugin's requests and a periodic resync; every path
 * ends in the same plan-and-apply step, run one at a time.
 */
export class NodeAgent {
  private topology: Topology | undefined;
  private topologyError: string | undefined;
  private self: TopologyNode | undefined;
  private kernel: KernelFacts | undefined;
  private notReadyReason: string | undefined = "starting";
  private lastPlan: NodePlan | undefined;
  /** The last plan applied in full or as a delta; a full apply of the same plan that writes is drift. */
  private lastAppliedPlan: string | undefined;
  private lastApply: AgentStatus["lastApply"];
  private counts = { applies: 0, failures: 0, driftRepairs: 0 };
  private readonly cniAddresses = new Map<string, readonly string[]>();
  private ztunnelNetns: string | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private pending: SyncKind | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly opts: AgentOptions) {}

  async start(): Promise<void> {
    await this.opts.source.start();
    this.unsubscribe = this.opts.source.subscribe((e) => this.onEvent(e));
    const topo = this.opts.source.snapshot().topology;
    if (topo) this.adoptTopology(topo.text, topo.source, true);
    else this.topologyError = "the cluster source has no cluster-conf.yaml yet";
    await this.sync("full");
    const resync = this.opts.resyncMs ?? 30_000;
    this.timer = setInterval(() => void this.sync("full").catch(() => undefined), resync);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
    await this.queue.catch(() => undefined);
  }

  /** Remove everything offmesh put on this node (the agent's uninstall). */
  async cleanup(): Promise<ApplyReport> {
    return this.serialize(() => this.opts.applier.cleanup());
  }

  /** Run a full reconcile now and wait for it (also what `status --resync` asks for). */
  async resync(): Promise<void> {
    await this.sync("full");
  }

  status(): AgentStatus {
    const members =
      this.lastPlan?.host.ipsets.flatMap((s) => s.members.map((m) => ({ ip: m.ip, uid: m.comment }))) ?? [];
    const z = this.lastPlan ? this.kernelZtunnel() : undefined;
    return {
      node: this.opts.nodeName,
      role: this.self?.role ?? "unknown",
      ...(this.self?.partner ? { pair: this.self.partner.name } : {}),
      topology: {
        ...(this.topology ? { source: this.topology.file } : {}),
        ...(this.topologyError ? { error: this.topologyError } : {}),
      },
      ready: this.notReadyReason === undefined,
      ...(this.notReadyReason ? { notReadyReason: this.notReadyReason } : {}),
      ...(this.kernel && this.self?.role !== "cpu" ? { tunnel: this.kernel.tunnel } : {}),
      ...(z ? { ztunnel: z } : {}),
      ...(this.lastApply ? { lastApply: this.lastApply } : {}),
      ...this.counts,
      members,
      notes: this.lastPlan?.notes ?? [],
    };
  }

  /** The handler of the CNI plugin's requests (served on the agent's unix socket). */
  async handle(req: AgentRequest): Promise<AgentResponse> {
    try {
      const res = await this.handleRequest(req);
      this.opts.metrics.cniRequests.inc({ op: req.op, result: res.ok ? "ok" : "error" });
      return res;
    } catch (err) {
      this.opts.metrics.cniRequests.inc({ op: req.op, result: "error" });
      return { ok: false, error: (err as Error).message };
    }
  }

  private async handleRequest(req: AgentRequest): Promise<AgentResponse> {
    if (req.op === "status") return { ok: true, status: this.status() };
    if (req.op === "resync") {
      await this.resync();
      return { ok: true, status: this.status() };
    }
    if (req.op === "del") {
      this.markTornDown(req.pod);
      if (this.ztunnelNetns === req.pod.netns) this.ztunnelNetns = undefined;
      await this.sync("auto");
      return { ok: true };
    }
    const pod = await this.waitForPod(req.pod.namespace, req.pod.name, req.pod.uid);
    if (!pod) {
      return {
        ok: false,
        error: `pod ${req.pod.namespace}/${req.pod.name} is not known to the offmesh agent on ${this.opts.nodeName} yet; retry`,
      };
    }
    if (isZtunnel(pod) && pod.nodeName === this.opts.nodeName && req.op === "add") {
      // The ztunnel pod's own rules and tunnel ends go into this namespace.
      this.ztunnelNetns = req.pod.netns;
    }
    const decision = meshDecision(pod, this.opts.source.snapshot().namespaces.get(pod.namespace));
    if (!decision.meshed) {
      if (isZtunnel(pod)) await this.sync("full");
      return { ok: true, captured: false, reason: decision.reason };
    }
    if (req.op === "add") {
      this.cniAddresses.set(pod.uid, req.ips);
      // Capture this one pod first, then let a full plan confirm it in the background: the pod's
      // ADD waits only for its own ipset entry and route, not for a replan of every pod here.
      if (!(await this.captureOne(pod))) await this.sync("auto");
      // After the answer is written: the replan of every pod would otherwise delay it.
      else setImmediate(() => void this.sync("auto").catch(() => undefined));
    }
    if (!this.self)
      return {
        ok: false,
        error: `node ${this.opts.nodeName} is not in the topology: ${this.topologyError ?? "unknown node"}`,
      };
    const members = new Set(this.lastPlan?.host.ipsets.flatMap((s) => s.members.map((m) => m.ip)) ?? []);
    const ips = req.ips.length > 0 ? req.ips : pod.ips;
    const missing = ips.filter((ip) => !members.has(ip.split("/")[0] ?? ip));
    if (missing.length === 0 && ips.length > 0) return { ok: true, captured: true };
    const why = this.lastPlan?.notes.find((n) => n.includes(`${pod.namespace}/${pod.name}`));
    return {
      ok: false,
      error: `pod ${pod.namespace}/${pod.name} should be captured but ${missing.join(", ") || "it has no address"} is not${why ? `: ${why}` : ""}${this.lastApply?.error ? ` (last apply failed: ${this.lastApply.error})` : ""}`,
    };
  }

  /** Add one pod to the applied state without replanning the others; false when it cannot. */
  private captureOne(pod: ClusterPod): Promise<boolean> {
    return this.serialize(async () => {
      const { topology, self, kernel, lastPlan } = this;
      if (!topology || !self || !kernel || !lastPlan) return false;
      const facts = buildFacts({
        topology,
        self,
        snapshot: this.opts.source.snapshot(),
        kernel,
        cniAddresses: this.cniAddresses,
        onlyPods: [pod],
        ...(this.opts.clusterPodCIDRs ? { clusterPodCIDRs: this.opts.clusterPodCIDRs } : {}),
      });
      const outcome = planNode(topology, self.name, facts, this.opts.conflistOptions);
      if (!outcome.planned) return false;
      const next = withMembersOf(lastPlan, outcome.plan);
      const started = performance.now();
      try {
        const report = await this.opts.applier.applyMembers(lastPlan, next);
        this.lastPlan = next;
        // Not a plan the planner produced for all pods: the next full apply is not judged against it.
        this.lastAppliedPlan = undefined;
        this.record("members", started, report.writes, report.changes.length);
        return true;
      } catch (err) {
        this.counts.failures++;
        this.record("members", started, 0, 0, (err as Error).message);
        return false;
      }
    });
  }

  private onEvent(event: ClusterEvent): void {
    if (event.kind === "topology") {
      this.adoptTopology(event.object.text, event.object.source, false);
      void this.sync("full").catch(() => undefined);
      return;
    }
    if (event.kind === "pod" && event.type === "delete") this.cniAddresses.delete(event.object.uid);
    if (event.kind === "service" || event.kind === "policy") return; // not the node's business
    void this.sync("auto").catch(() => undefined);
  }

  /** A topology is validated before anything is applied; an invalid one leaves the old in force. */
  private adoptTopology(text: string, source: string, first: boolean): void {
    const parsed = parseTopology(text, source);
    if (!parsed.ok) {
      this.topologyError = `${source} rejected, ${this.topology ? "keeping the previous topology" : "no topology in force"}: ${parsed.issues.map(formatIssue).join("; ")}`;
      this.opts.metrics.topologyRejections.inc();
      this.opts.log.error({ issues: parsed.issues }, this.topologyError);
      return;
    }
    this.topology = parsed.value;
    this.topologyError = undefined;
    const found = parsed.value.byName.get(this.opts.nodeName);
    this.self = found;
    if (!first) this.opts.log.info({ source, role: found?.role ?? "unknown" }, "topology changed");
  }

  /**
   * Queue a plan-and-apply. Requests arriving while one runs collapse into one follow-up run,
   * and a caller's promise resolves only after a run that started after its request.
   */
  private sync(kind: SyncKind): Promise<void> {
    const merged: SyncKind = this.pending === "full" || kind === "full" ? "full" : kind;
    if (this.pending !== undefined) {
      this.pending = merged;
      return this.queue.then(() => undefined);
    }
    this.pending = merged;
    const run = this.queue.then(async () => {
      const k = this.pending ?? kind;
      this.pending = undefined;
      if (!this.stopped) await this.planAndApply(k);
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async planAndApply(kind: SyncKind): Promise<void> {
    const started = performance.now();
    const topology = this.topology;
    const self = this.self;
    if (!topology || !self) {
      this.notReadyReason = topology
        ? `node ${this.opts.nodeName} is not declared in ${topology.file}; nothing is planned for it`
        : (this.topologyError ?? "no topology");
      return;
    }
    try {
      this.kernel = await this.discover(self, kind === "full" || this.kernel === undefined);
    } catch (err) {
      this.notReadyReason = (err as Error).message;
      this.opts.log.warn({ err: this.notReadyReason }, "node not ready");
      return;
    }
    const facts = buildFacts({
      topology,
      self,
      snapshot: this.opts.source.snapshot(),
      kernel: this.kernel,
      cniAddresses: this.cniAddresses,
      ...(this.opts.clusterPodCIDRs ? { clusterPodCIDRs: this.opts.clusterPodCIDRs } : {}),
    });
    const outcome = planNode(topology, self.name, facts, this.opts.conflistOptions);
    if (!outcome.planned) {
      this.notReadyReason = outcome.reason;
      return;
    }
    const plan = outcome.plan;
    const previous = this.lastPlan;
    const fast = kind !== "full" && previous !== undefined && onlyMembershipDiffers(previous, plan);
    const applyKind = fast ? "members" : "full";
    try {
      if (this.opts.installConflist && !fast) await this.opts.installConflist(plan.conflist);
      const podTarget = this.ztunnelNetns && plan.ztunnelPod ? { netns: this.ztunnelNetns } : undefined;
      const report =
        fast && previous
          ? await this.opts.applier.applyMembers(previous, plan)
          : await this.opts.applier.apply(plan, podTarget);
      const planText = JSON.stringify(plan);
      if (applyKind === "full" && this.lastAppliedPlan === planText && report.writes > 0) {
        this.counts.driftRepairs++;
        this.opts.metrics.driftRepairs.inc();
        this.opts.log.warn({ changes: report.changes }, "drift repaired");
      }
      this.lastAppliedPlan = planText;
      this.lastPlan = plan;
      this.notReadyReason = undefined;
      this.record(applyKind, started, report.writes, report.changes.length);
      if (report.writes > 0)
        this.opts.log.info(
          { kind: applyKind, changes: report.changes.length, writes: report.writes },
          "applied",
        );
    } catch (err) {
      const message = (err as Error).message;
      this.counts.failures++;
      this.record(applyKind, started, 0, 0, message);
      this.opts.log.error({ err: message }, "apply failed; the previous state is kept");
      throw err;
    }
  }

  private record(kind: string, started: number, writes: number, changes: number, error?: string): void {
    const durationMs = performance.now() - started;
    this.counts.applies++;
    this.opts.metrics.applies.inc({ kind, result: error ? "error" : "ok" });
    this.opts.metrics.applyDuration.observe({ kind }, durationMs / 1000);
    this.opts.metrics.writes.inc(writes);
    this.opts.metrics.members.set(this.lastPlan?.host.ipsets.reduce((n, s) => n + s.members.length, 0) ?? 0);
    this.lastApply = {
      at: new Date().toISOString(),
      kind,
      durationMs: Math.round(durationMs * 100) / 100,
      writes,
      changes,
      ...(error ? { error } : {}),
    };
  }

  /** Kernel facts; the NIC and tunnel kind are looked up again on full syncs only. */
  private async discover(self: TopologyNode, full: boolean): Promise<KernelFacts> {
    const runner: Runner = this.opts.runner;
    let nic = this.kernel?.nic;
    let tunnel = this.kernel?.tunnel;
    if (full || !nic || nic.ip !== self.ip) {
      const found = await findNic(runner, self.ip);
      if (!found) throw new Error(`no link on ${self.name} holds its address ${self.ip} (from the topology)`);
      nic = { ...found, ip: self.ip };
    }
    if (tunnel === undefined)
      tunnel = this.opts.tunnel ?? (self.role === "cpu" ? "veth" : await detectTunnel(runner));
    let ztunnelVeth: string | undefined;
    if (self.role !== "cpu") {
      const z = ztunnelPodOn(this.opts.source.snapshot(), self.name);
      const ip = z?.ips[0];
      // A veth tunnel moves its peer into the ztunnel pod: without the pod's namespace there is
      // nothing to connect, and the plan falls back to holding meshed traffic (fail closed).
      if (ip && (tunnel !== "veth" || this.ztunnelNetns)) ztunnelVeth = await hostVethOf(runner, ip);
    }
    return { nic, tunnel, ...(ztunnelVeth ? { ztunnelVeth } : {}) };
  }

  private kernelZtunnel(): { ip: string; hostVeth?: string } | undefined {
    const owner = this.self?.role === "cpu" ? this.self.partner?.name : this.self?.name;
    const pod = owner ? ztunnelPodOn(this.opts.source.snapshot(), owner) : undefined;
    const ip = pod?.ips[0];
    if (!ip) return undefined;
    return { ip, ...(this.kernel?.ztunnelVeth ? { hostVeth: this.kernel.ztunnelVeth } : {}) };
  }

  private async waitForPod(
    namespace: string,
    name: string,
    uid: string | undefined,
  ): Promise<ClusterPod | undefined> {
    const find = (): ClusterPod | undefined =>
      [...this.opts.source.snapshot().pods.values()].find(
        (p) => (uid ? p.uid === uid : true) && p.namespace === namespace && p.name === name,
      );
    const deadline = Date.now() + (this.opts.podWaitMs ?? 2000);
    let pod = find();
    while (!pod && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      pod = find();
    }
    return pod;
  }

  /** After a DEL the pod has no network here, whatever the API still shows. */
  private markTornDown(ref: { namespace: string; name: string; uid?: string }): void {
    for (const pod of this.opts.source.snapshot().pods.values()) {
      if (
        (ref.uid ? pod.uid === ref.uid : true) &&
        pod.namespace === ref.namespace &&
        pod.name === ref.name
      ) {
        this.cniAddresses.set(pod.uid, []);
      }
    }
  }
}
