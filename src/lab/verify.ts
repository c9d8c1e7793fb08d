import { randomBytes } from "node:crypto";
import { AccessLogReader } from "./verify-access.js";
import { castOf, loadLabView } from "./verify-cast.js";
import { snapshotCounters } from "./verify-counters.js";
import { PATH_CHECKS } from "./verify-paths.js";
import type { CheckContext, PathCheck, PlannedCheck } from "./verify-paths.js";
import { counterStep, Evidence, wireStep } from "./verify-steps.js";
import type { WireRule } from "./verify-steps.js";
import { framesDuring, readWireMap, WireCapture } from "./verify-wire.js";
import { ztunnelComponent } from "./names.js";

// `offmesh lab verify`: the design's packet walks as live checks on a running lab, one row per
// path — what should happen, what was observed, PASS or FAIL. One capture on the wire runs across
// all checks (each check's marker and addresses tell its frames apart); every helper a check
// starts (servers in pods and in the internet namespace, tcpdump) is gone when verify returns.

export type VerifyResult = "PASS" | "FAIL" | "SKIP";

export interface VerifyRow {
  readonly id: string;
  readonly title: string;
  readonly path: string;
  readonly expected: string;
  readonly observed: readonly string[];
  readonly problems: readonly string[];
  readonly result: VerifyResult;
}

export interface VerifyReport {
  readonly lab: string;
  readonly ok: boolean;
  readonly durationMs: number;
  readonly rows: readonly VerifyRow[];
}

export interface VerifyOptions {
  /** Only these checks (by id: a, b, c1 …); default all. */
  readonly only?: readonly string[];
  readonly progress?: (line: string) => void;
}

/** `--only` named a path that does not exist. */
export class VerifyOptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VerifyOptionError";
  }
}

interface Pending {
  readonly check: PathCheck;
  readonly planned: PlannedCheck;
  readonly ev: Evidence;
  readonly wire: WireRule | undefined;
  /** When the check's traffic ran (ms since the epoch): its frames are those of this window. */
  readonly window: readonly [number, number];
}

export async function labVerify(lab: string, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const started = Date.now();
  const unknown = (opts.only ?? []).filter((id) => !PATH_CHECKS.some((c) => c.id === id));
  if (unknown.length > 0)
    throw new VerifyOptionError(
      `no such path: ${unknown.join(", ")} (paths: ${PATH_CHECKS.map((c) => c.id).join(", ")})`,
    );
  const view = await loadLabView(lab);
  const runId = randomBytes(4).toString("hex");
  const logs = new AccessLogReader((c) => view.paths.logFile(c));
  const ztunnels = view.nodes.filter((n) => n.role !== "cpu").map((n) => ztunnelComponent(n.name));
  const ctx: CheckContext = {
    view,
    cast: castOf(view),
    logs,
    marker: (id) => `offmesh-verify-${runId}-${id}-plaintext`,
  };
  const checks = PATH_CHECKS.filter((c) => !opts.only || opts.only.includes(c.id));

  const wireMap = await readWireMap(view.spec);
  const capture = await WireCapture.start(lab, { stateDir: view.paths.dir });
  const rows = new Map<string, VerifyRow>();
  const pending: Pending[] = [];
  try {
    for (const check of checks) {
      const planned = check.plan(ctx);
      if ("skip" in planned) {
        rows.set(check.id, {
          id: check.id,
          title: check.title,
          path: "-",
          expected: "-",
          observed: [planned.skip],
          problems: [],
          result: "SKIP",
        });
        continue;
      }
      opts.progress?.(`${check.id}: ${check.title}`);
      const ev = new Evidence();
      logs.mark(ztunnels);
      const counters = await snapshotCounters(planned.watches);
      let wire: WireRule | undefined;
      const begin = Date.now();
      try {
        wire = await planned.run(ev);
      } catch (err) {
        ev.fail(`the check could not run: ${(err as Error).message}`);
      }
      const end = Date.now();
      const deltas = await counters.delta();
      counterStep(ev, deltas, new Set(planned.watches.flatMap((w, i) => (w.must ? [i] : []))));
      pending.push({ check, planned, ev, wire, window: [begin, end] });
    }
  } finally {
    const frames = await capture.stop().catch((err: unknown) => {
      for (const p of pending) if (p.wire) p.ev.fail(`the wire capture failed: ${(err as Error).message}`);
      return [];
    });
    for (const p of pending) {
      if (p.wire && frames.length > 0) wireStep(p.ev, wireMap, framesDuring(frames, ...p.window), p.wire);
      else if (p.wire) p.ev.fail("the wire capture recorded nothing");
      rows.set(p.check.id, {
        id: p.check.id,
        title: p.check.title,
        path: p.planned.path,
        expected: p.planned.expected,
        observed: p.ev.observed,
        problems: p.ev.problems,
        result: p.ev.problems.length === 0 ? "PASS" : "FAIL",
      });
    }
  }
  const ordered = checks.flatMap((c) => rows.get(c.id) ?? []);
  return {
    lab,
    ok: ordered.every((r) => r.result !== "FAIL"),
    durationMs: Date.now() - started,
    rows: ordered,
  };
}

/** The report as text: a header, then per path its result, path, expectation and evidence. */
export function formatVerifyReport(r: VerifyReport): string {
  const count = (x: VerifyResult): number => r.rows.filter((row) => row.result === x).length;
  const lines = [
    `lab ${r.lab}: verify — ${r.rows.length} paths: ${count("PASS")} passed, ${count("FAIL")} failed, ${count("SKIP")} skipped (${(r.durationMs / 1000).toFixed(1)} s)`,
  ];
  for (const row of r.rows) {
    lines.push("", `${row.result.padEnd(5)}${row.id.padEnd(4)}${row.title}`);
    if (row.result !== "SKIP") {
      lines.push(`         path      ${row.path}`, `         expected  ${row.expected}`);
    }
    row.observed.forEach((o, i) => lines.push(`         ${i === 0 ? "observed" : "        "}  ${o}`));
    for (const p of row.problems) lines.push(`         PROBLEM   ${p}`);
  }
  return lines.join("\n") + "\n";
}
