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
import { DEFAULT_PAIR_GRACE_MS } from "./pair.js";
import type { PairPod, PairReply } from "./pair.js";
import type { PairCaller } from "./pair-client.js";
import { PairHolds } from "./pair-holds.js";
import type { HeldPod } from "./pair-holds.js";
import type { PairEndpoint } from "./pair-server.js";
import { admitHold, pairedCpu } from "./pair-validate.js";
import type { PodFacts } from "../netplan/facts.js";

/** The pair channel as the agent uses it (see pair.ts); absent: the channel is off. */
export interface PairChannelOptions {
  /** Calls the paired DPU's agent (used while this node is a CPU). */
  readonly caller: PairCaller;
  /** How long a DPU captures a held pod the API has not confirmed; default 60 s. */
  readonly graceMs?: number;
  /** Told this node's topology entry on every sync: the DPU's listener follows it. */
  readonly onSelf?: (self: TopologyNode | undefined) => void;
  /** One line on the channel's state for status ("serving 192.168.50.131:15031"). */
  readonly describe?: (self: TopologyNode | undefined) => string;
}

export const PAIR_CHANNEL_OFF =
  "off: no pair key configured (--pair-key-file); a new meshed pod of a CPU may send its first connections in clear from its DPU until the DPU sees the pod's address in the API";

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
  readonly pair?: PairChannelOptions;
  /** Clock of the held pods' grace period (tests move it). */
  readonly now?: () => number;
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
  readonly pairChannel: {
    readonly enabled: boolean;
    readonly detail: string;
    /** On a DPU: pods held for the paired CPU that the API has not confirmed yet. */
    readonly held: readonly {
      readonly uid: string;
      readonly pod: string;
      readonly ips: readonly string[];
      readonly heldForMs: number;
    }[];
  };
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
  private readonly holds: PairHolds;

  constructor(private readonly opts: AgentOptions) {
    this.holds = new PairHolds(opts.pair?.graceMs ?? DEFAULT_PAIR_GRACE_MS, opts.now ?? Date.now);
  }

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
      pairChannel: this.pairStatus(),
      notes: this.lastPlan?.notes ?? [],
    };
  }

  private pairStatus(): AgentStatus["pairChannel"] {
    const now = (this.opts.now ?? Date.now)();
    const held = this.holds.list().map((h) => ({
      uid: h.uid,
      pod: `${h.namespace}/${h.name}`,
      ips: h.ips,
      heldForMs: now - h.heldAt,
    }));
    const pair = this.opts.pair;
    if (!pair) return { enabled: false, detail: PAIR_CHANNEL_OFF, held };
    return { enabled: true, detail: pair.describe?.(this.self) ?? "on", held };
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
      const torn = this.markTornDown(req.pod);
      if (this.ztunnelNetns === req.pod.netns) this.ztunnelNetns = undefined;
      await this.sync("auto");
      // Best effort and after the answer: a DPU that misses it drops the pod on its own resync. A
      // pod the API already forgot is released by the uid the runtime passed.
      const gone = torn.length === 0 && req.pod.uid ? [{ ...req.pod, uid: req.pod.uid }] : [];
      for (const pod of [...torn.filter((p) => this.isMeshed(p)), ...gone]) void this.releaseOnDpu(pod);
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
      if (!(await this.captureOnly([pod], []))) await this.sync("auto");
      // After the answer is written: the replan of every pod would otherwise delay it.
      else setImmediate(() => void this.sync("auto").catch(() => undefined));
    }
    if (!this.self)
      return {
        ok: false,
        error: `node ${this.opts.nodeName} is not in the topology: ${this.topologyError ?? "unknown node"}`,
      };
    const members = this.memberIps();
    const ips = req.ips.length > 0 ? req.ips : pod.ips;
    const missing = ips.filter((ip) => !members.has(ip.split("/")[0] ?? ip));
    if (missing.length === 0 && ips.length > 0) {
      if (req.op === "add" && this.self.role === "cpu" && this.opts.pair)
        return this.holdOnDpu(this.opts.pair.caller, this.self, pod, ips);
      return { ok: true, captured: true };
    }
    const why = this.lastPlan?.notes.find((n) => n.includes(`${pod.namespace}/${pod.name}`));
    return {
      ok: false,
      error: `pod ${pod.namespace}/${pod.name} should be captured but ${missing.join(", ") || "it has no address"} is not${why ? `: ${why}` : ""}${this.lastApply?.error ? ` (last apply failed: ${this.lastApply.error})` : ""}`,
    };
  }

  /**
   * The CPU half of "the pair agrees before a pod speaks": the pod is captured here; its ADD
   * succeeds only once the DPU holds it too, else it fails and the runtime retries the pod.
   */
  private async holdOnDpu(
    caller: PairCaller,
    self: TopologyNode,
    pod: ClusterPod,
    ips: readonly string[],
  ): Promise<AgentResponse> {
    const who = `pod ${pod.namespace}/${pod.name}`;
    const dpu = self.partner ? this.topology?.byName.get(self.partner.name) : undefined;
    if (!dpu) return { ok: false, error: `${who}: CPU node ${self.name} has no paired DPU to hold it` };
    const held: PairPod = {
      uid: pod.uid,
      name: pod.name,
      namespace: pod.namespace,
      node: self.name,
      ips: ips.map((ip) => ip.split("/")[0] ?? ip),
    };
    try {
      await caller.hold({ from: self.ip, to: dpu }, held);
      this.opts.metrics.pairCalls.inc({ op: "hold", result: "ok" });
      return { ok: true, captured: true };
    } catch (err) {
      this.opts.metrics.pairCalls.inc({ op: "hold", result: "error" });
      const error = `${who} is captured on ${self.name} but its DPU ${dpu.name} did not confirm holding it, so the pod must not start (fail closed; the runtime retries the pod): ${(err as Error).message}`;
      this.opts.log.warn({ pod: `${pod.namespace}/${pod.name}`, dpu: dpu.name }, error);
      return { ok: false, error };
    }
  }

  private async releaseOnDpu(pod: { uid: string; namespace: string; name: string }): Promise<void> {
    const self = this.self;
    const caller = this.opts.pair?.caller;
    const dpu = self?.partner ? this.topology?.byName.get(self.partner.name) : undefined;
    if (!caller || !self || self.role !== "cpu" || !dpu) return;
    try {
      await caller.release({ from: self.ip, to: dpu }, pod.uid);
      this.opts.metrics.pairCalls.inc({ op: "release", result: "ok" });
    } catch (err) {
      this.opts.metrics.pairCalls.inc({ op: "release", result: "error" });
      this.opts.log.warn(
        { pod: `${pod.namespace}/${pod.name}`, dpu: dpu.name, err: (err as Error).message },
        "release on the DPU failed; its resync drops the pod",
      );
    }
  }

  /** The DPU half of the pair channel, served by pair-server.ts once a request passed its checks. */
  pairEndpoint(): PairEndpoint {
    return {
      pairedCpu: () => pairedCpu(this.topology, this.opts.nodeName, this.topologyError),
      hold: (cpu, pod) => this.holdForCpu(cpu, pod),
      release: (cpu, uid) => this.releaseForCpu(cpu, uid),
    };
  }

  private async holdForCpu(cpu: TopologyNode, pod: PairPod): Promise<PairReply> {
    const cidrs = this.opts.source.snapshot().nodes.get(cpu.name)?.podCIDRs ?? [];
    const admitted = admitHold(cpu, cidrs, pod);
    if (!admitted.ok) return { ok: false, error: admitted.reason, retryable: admitted.retryable };
    const held = this.holds.hold(admitted.pod);
    this.opts.metrics.pairHeld.set(this.holds.size);
    if (!(await this.captureOnly([], [heldFacts(held)]))) await this.sync("auto").catch(() => undefined);
    else setImmediate(() => void this.sync("auto").catch(() => undefined));
    const who = `pod ${pod.namespace}/${pod.name}`;
    const members = this.memberIps();
    const missing = held.ips.filter((ip) => !members.has(ip));
    if (missing.length === 0)
      return { ok: true, detail: `${who} is captured on ${this.opts.nodeName}`, captured: held.ips };
    const why =
      this.notReadyReason ??
      this.lastApply?.error ??
      this.lastPlan?.notes.find((n) => n.includes(`${pod.namespace}/${pod.name}`)) ??
      "not in the plan";
    return {
      ok: false,
      error: `${who}: ${missing.join(", ")} is not captured on ${this.opts.nodeName} yet: ${why}`,
      retryable: true,
    };
  }

  private async releaseForCpu(cpu: TopologyNode, uid: string): Promise<PairReply> {
    const held = this.holds.release(uid);
    this.opts.metrics.pairHeld.set(this.holds.size);
    const api = this.opts.source.snapshot().pods.get(uid);
    // The sandbox is gone on the CPU, whatever the API still shows (as a CNI DEL on the CPU itself).
    const known = api !== undefined && api.nodeName === cpu.name;
    if (known) this.cniAddresses.set(uid, []);
    if (!held && !known) return { ok: true, detail: `pod uid ${uid} is not held on ${this.opts.nodeName}` };
    await this.sync("auto").catch(() => undefined);
    const name = held ? `${held.namespace}/${held.name}` : `${api?.namespace}/${api?.name}`;
    return { ok: true, detail: `pod ${name} released on ${this.opts.nodeName}` };
  }

  private memberIps(): Set<string> {
    return new Set(this.lastPlan?.host.ipsets.flatMap((s) => s.members.map((m) => m.ip)) ?? []);
  }

  private isMeshed(pod: ClusterPod): boolean {
    return meshDecision(pod, this.opts.source.snapshot().namespaces.get(pod.namespace)).meshed;
  }

  /** Drop holds the API confirmed, contradicted, or left unconfirmed past the grace period. */
  private reviewHolds(): void {
    if (this.holds.size === 0) return;
    const pods = this.opts.source.snapshot().pods;
    for (const { hold, verdict } of this.holds.review((uid) => pods.get(uid))) {
      const fields = { pod: `${hold.namespace}/${hold.name}`, uid: hold.uid, ips: hold.ips };
      if (verdict.state === "confirmed") this.opts.log.info(fields, "held pod confirmed by the API");
      else this.opts.log.warn({ ...fields, reason: verdict.reason }, "held pod dropped");
    }
    this.opts.metrics.pairHeld.set(this.holds.size);
  }

  /**
   * Add pods to the applied state without replanning the others: API pods (a CPU's own new pod)
   * or pods held for the paired CPU; false when it cannot.
   */
  private captureOnly(pods: readonly ClusterPod[], held: readonly PodFacts[]): Promise<boolean> {
    return this.serialize(async () => {
      const { topology, self, kernel, lastPlan } = this;
      if (!topology || !self || !kernel || !lastPlan) return false;
      const facts = buildFacts({
        topology,
        self,
        snapshot: this.opts.source.snapshot(),
        kernel,
        cniAddresses: this.cniAddresses,
        onlyPods: pods,
        heldPods: held,
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
    if (event.kind === "pod" && event.type === "delete") {
      this.cniAddresses.delete(event.object.uid);
      this.holds.markDeleted(event.object.uid);
    }
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
    this.opts.pair?.onSelf?.(self);
    this.reviewHolds();
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
      heldPods: this.holds.list().map(heldFacts),
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

  /** After a DEL the pod has no network here, whatever the API still shows. Returns the pods. */
  private markTornDown(ref: { namespace: string; name: string; uid?: string }): ClusterPod[] {
    const torn: ClusterPod[] = [];
    for (const pod of this.opts.source.snapshot().pods.values()) {
      if (
        (ref.uid ? pod.uid === ref.uid : true) &&
        pod.namespace === ref.namespace &&
        pod.name === ref.name
      ) {
        this.cniAddresses.set(pod.uid, []);
        torn.push(pod);
      }
    }
    return torn;
  }
}

/** A held pod as the planner sees it: a meshed pod of the paired CPU. */
function heldFacts(held: HeldPod): PodFacts {
  return {
    uid: held.uid,
    name: held.name,
    namespace: held.namespace,
    node: held.node,
    ips: [...held.ips],
    hostNetwork: false,
  };
}
