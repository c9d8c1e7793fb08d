import type { IpFamily } from "../configfile/net.js";
import type { NetState, Route } from "../netplan/types.js";
import { Runner } from "./exec.js";
import type { KernelLink, LinkStep } from "./iplinks.js";
import { parseLinks, planLinkCleanup, planLinks } from "./iplinks.js";
import type { KernelRoute, RouteStep } from "./iproutes.js";
import { isAbsentRouteError, parseRoutes, planRouteCleanup, planRouteDelta, planRoutes } from "./iproutes.js";
import type { KernelRule, RuleStep } from "./iprules.js";
import { checkPlannedRules, parseRules, planRuleCleanup, planRules } from "./iprules.js";
import type { BackendResult, Change } from "./types.js";
import { ApplyError, combine, NO_CHANGE } from "./types.js";

// The `ip` backend: links, link settings, addresses, routes and policy rules of one network
// namespace, read with `ip -json` and written with `ip -batch -`. The decisions live in the pure
// modules iplinks.ts, iproutes.ts and iprules.ts; this class only reads, sequences and writes.

export type IpState = Pick<NetState, "rules" | "localRulePriority" | "routes" | "links" | "linkSettings">;

export interface IpRouteBackendOptions {
  /**
   * The ztunnel pod's network namespace, where the peers of veth tunnels go: a name under
   * /var/run/netns or a path (/proc/PID/ns/net). Required only by plans with veth links.
   */
  readonly podNetns?: string;
}

const FAMILIES: readonly IpFamily[] = [4, 6];

/** A failed line of an `ip -batch` run: its number (from 1) and what ip said about it. */
export interface BatchFailure {
  readonly line: number;
  readonly message: string;
}

/**
 * `ip -batch` reports each failed line as its error message(s) followed by `Command failed -:N`.
 * Text not followed by such a marker (ip could not start, bad option) becomes a failure at line 0.
 */
export function parseBatchFailures(stderr: string): BatchFailure[] {
  const out: BatchFailure[] = [];
  let pending: string[] = [];
  for (const raw of stderr.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    const m = /^Command failed (?:-|\S+):(\d+)$/.exec(line);
    if (m) {
      out.push({ line: Number(m[1]), message: pending.join(" ") || "failed" });
      pending = [];
    } else {
      pending.push(line);
    }
  }
  if (pending.length > 0) out.push({ line: 0, message: pending.join(" ") });
  return out;
}

/** `ip -batch` with its failures explained by the lines that caused them. */
async function runBatch(
  runner: Runner,
  backend: string,
  options: readonly string[],
  lines: readonly string[],
  force = false,
): Promise<BatchFailure[]> {
  const args = [...options, ...(force ? ["-force"] : []), "-batch", "-"];
  const result = await runner.run("ip", args, { input: lines.join("\n") + "\n", allowFail: true });
  if (result.code === 0) return [];
  const failures = parseBatchFailures(result.stderr);
  if (failures.length === 0) failures.push({ line: 0, message: `exited ${result.code}` });
  if (force) return failures;
  const where = runner.netns ? ` in netns ${runner.netns}` : "";
  const explained = failures.map((f) =>
    f.line > 0
      ? `"${lines[f.line - 1] ?? "?"}" failed: ${f.message} (lines before it were applied, lines after it were not)`
      : f.message,
  );
  throw new ApplyError(backend, `ip ${args.join(" ")}${where}: ${explained.join("; ")}`);
}

async function ipJson(runner: Runner, backend: string, args: readonly string[]): Promise<string | undefined> {
  const result = await runner.run("ip", args, { allowFail: true });
  if (result.code === 0) return result.stdout;
  // A kernel without IPv6 has nothing to converge for that family.
  if (args.includes("-6") && /not supported/i.test(result.stderr)) return undefined;
  const where = runner.netns ? ` in netns ${runner.netns}` : "";
  throw new ApplyError(
    backend,
    `ip ${args.join(" ")}${where} exited ${result.code}: ${result.stderr.trim()}`,
  );
}

function runnerFor(netns: string): Runner {
  return netns.includes("/") ? new Runner(netns) : Runner.forNamedNetns(netns);
}

/** What one `ip -4|-6 -batch` converges. */
type FamilyStep = RouteStep | (RuleStep & { readonly family: IpFamily });

function stepResult(steps: readonly { changes: readonly Change[] }[], writes: number): BackendResult {
  return { changes: steps.flatMap((s) => s.changes), writes };
}

export class IpRouteBackend {
  private readonly pod: Runner | undefined;

  constructor(
    private readonly runner: Runner,
    private readonly options: IpRouteBackendOptions = {},
  ) {
    this.pod = options.podNetns !== undefined ? runnerFor(options.podNetns) : undefined;
  }

  /**
   * Converge links → link settings → addresses → routes → rules to `state`. Everything is read and
   * every plan checked before the first write, so a plan that cannot apply (a route on a missing
   * device, a missing link to set, a conflicting foreign route) changes nothing. Routes are read
   * again after links changed, because the kernel drops the routes of links it deletes or downs.
   */
  async reconcile(state: IpState, opts: { readonly dryRun?: boolean } = {}): Promise<BackendResult> {
    checkPlannedRules(state.rules, state.localRulePriority);
    const needsPod = state.links.some((l) => l.kind === "veth");
    const [current, podLinks] = await Promise.all([
      this.readLinks(this.runner),
      needsPod && this.pod ? this.readLinks(this.pod) : Promise.resolve(undefined),
    ]);
    const linkStep = planLinks({
      links: state.links,
      settings: state.linkSettings,
      current,
      ...(podLinks && this.options.podNetns !== undefined
        ? { pod: { netns: this.options.podNetns, links: podLinks } }
        : {}),
    });
    const [routesBefore, rulesBefore] = await Promise.all([this.readRoutes(), this.readRules()]);
    let routeSteps = this.planAllRoutes(state.routes, routesBefore, linkStep);
    const ruleSteps = this.planAllRules(state, rulesBefore);
    if (opts.dryRun) return stepResult([linkStep, ...routeSteps, ...ruleSteps], 0);

    let writes = 0;
    if (linkStep.podLines.length > 0 && this.pod) {
      await runBatch(this.pod, "link", [], linkStep.podLines);
      writes++;
    }
    if (linkStep.lines.length > 0) {
      await runBatch(this.runner, "link", [], linkStep.lines);
      writes++;
      routeSteps = this.planAllRoutes(state.routes, await this.readRoutes(), linkStep);
    }
    writes += await this.writeSteps("route", routeSteps);
    writes += await this.writeSteps("rule", ruleSteps);
    return stepResult([linkStep, ...routeSteps, ...ruleSteps], writes);
  }

  /**
   * Remove everything offmesh put here: rules at owned priorities (after putting `lookup local`
   * back at 0), every route with offmesh's protocol in every table of both families, owned links.
   * Link settings on others' links and foreign rules and routes stay as they are.
   */
  async cleanup(opts: { readonly dryRun?: boolean } = {}): Promise<BackendResult> {
    const [rules, routes, links] = await Promise.all([
      this.readRules(),
      this.readRoutes(),
      this.readLinks(this.runner),
    ]);
    const ruleSteps = FAMILIES.flatMap((f) => {
      const current = rules.get(f);
      return current ? [{ family: f, ...planRuleCleanup(f, current) }] : [];
    });
    const routeSteps = FAMILIES.flatMap((f) => {
      const current = routes.get(f);
      return current ? [planRouteCleanup(f, current)] : [];
    });
    const linkStep = planLinkCleanup(links);
    if (opts.dryRun) return stepResult([...ruleSteps, ...routeSteps, linkStep], 0);
    let writes = await this.writeSteps("rule", ruleSteps);
    writes += await this.writeSteps("route", routeSteps);
    if (linkStep.lines.length > 0) {
      await runBatch(this.runner, "link", [], linkStep.lines);
      writes++;
    }
    return stepResult([...ruleSteps, ...routeSteps, linkStep], writes);
  }

  /**
   * The fast path for a pod added or removed: routes written in one batch per family without
   * reading anything first. Adds replace whatever holds their destination; deleting a route that is
   * already gone is not an error (and is not reported as a change).
   */
  async applyRouteDelta(
    add: readonly Route[],
    del: readonly Route[],
    opts: { readonly dryRun?: boolean } = {},
  ): Promise<BackendResult> {
    const perFamily = planRouteDelta(add, del);
    if (opts.dryRun) return { changes: [...perFamily.values()].flat().map((l) => l.change), writes: 0 };
    const results: BackendResult[] = [];
    for (const [family, lines] of perFamily) {
      if (lines.length === 0) continue;
      const failures = await runBatch(
        this.runner,
        "route",
        [`-${family}`],
        lines.map((l) => l.line),
        true,
      );
      const failed = new Set<number>();
      const fatal: string[] = [];
      for (const f of failures) {
        const line = lines[f.line - 1];
        if (line?.kind === "delete" && isAbsentRouteError(f.message)) failed.add(f.line - 1);
        else fatal.push(line ? `"${line.line}" failed: ${f.message}` : f.message);
      }
      if (fatal.length > 0) {
        throw new ApplyError(
          "route",
          `ip -${family} -force -batch -: ${fatal.join("; ")} (the other lines were applied)`,
        );
      }
      results.push({ changes: lines.filter((_, i) => !failed.has(i)).map((l) => l.change), writes: 1 });
    }
    return results.length > 0 ? combine(results) : NO_CHANGE;
  }

  private planAllRoutes(
    desired: readonly Route[],
    current: ReadonlyMap<IpFamily, readonly KernelRoute[]>,
    links: LinkStep,
  ): RouteStep[] {
    return FAMILIES.flatMap((f) => {
      const have = current.get(f);
      if (have) return [planRoutes(f, desired, have, links)];
      if (desired.some((r) => r.family === f)) {
        throw new ApplyError("route", `the plan has IPv${f} routes but this kernel has no IPv${f}`);
      }
      return [];
    });
  }

  private planAllRules(state: IpState, current: ReadonlyMap<IpFamily, readonly KernelRule[]>): FamilyStep[] {
    return FAMILIES.flatMap((f): FamilyStep[] => {
      const have = current.get(f);
      if (have) return [{ family: f, ...planRules(f, state.rules, state.localRulePriority, have) }];
      if (state.rules.some((r) => r.family === f)) {
        throw new ApplyError("rule", `the plan has IPv${f} rules but this kernel has no IPv${f}`);
      }
      return [];
    });
  }

  /** One `ip -4|-6 -batch` per family with something to do. */
  private async writeSteps(backend: string, steps: readonly FamilyStep[]): Promise<number> {
    let writes = 0;
    for (const s of steps) {
      if (s.lines.length === 0) continue;
      await runBatch(this.runner, backend, [`-${s.family}`], s.lines);
      writes++;
    }
    return writes;
  }

  private async readLinks(runner: Runner): Promise<KernelLink[]> {
    return parseLinks((await ipJson(runner, "link", ["-json", "-d", "addr", "show"])) ?? "[]");
  }

  /** `-N` prints tables, types, scopes and protocols as numbers, whatever /etc/iproute2 names them. */
  private async readRoutes(): Promise<Map<IpFamily, KernelRoute[]>> {
    const out = new Map<IpFamily, KernelRoute[]>();
    await Promise.all(
      FAMILIES.map(async (f) => {
        const json = await ipJson(this.runner, "route", [
          `-${f}`,
          "-N",
          "-json",
          "route",
          "show",
          "table",
          "all",
        ]);
        if (json !== undefined) out.set(f, parseRoutes(json, f));
      }),
    );
    return out;
  }

  private async readRules(): Promise<Map<IpFamily, KernelRule[]>> {
    const out = new Map<IpFamily, KernelRule[]>();
    await Promise.all(
      FAMILIES.map(async (f) => {
        const json = await ipJson(this.runner, "rule", [`-${f}`, "-N", "-json", "rule", "show"]);
        if (json !== undefined) out.set(f, parseRules(json, f));
      }),
    );
    return out;
  }
}
