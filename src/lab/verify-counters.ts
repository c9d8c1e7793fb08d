import { execFile } from "node:child_process";
import { promisify } from "node:util";

// Packet counters of the rules that carry a path (`iptables-save -c` in a node's or the ztunnel
// pod's namespace): read before and after a check, their difference shows which rules the
// check's packets went through.

const run = promisify(execFile);

/** A rule a check watches, found by its table, chain and pieces of its text. */
export interface WatchedRule {
  /** Short name for reports: `0x100`, `tproxy:15001`. */
  readonly label: string;
  readonly table: "mangle" | "nat" | "filter" | "raw";
  readonly chain: string;
  /** Every piece must occur in the rule's text (as `iptables-save` prints it). */
  readonly includes: readonly string[];
}

export interface RuleCounter {
  readonly table: string;
  readonly rule: string;
  readonly packets: number;
  readonly bytes: number;
}

/** Rules with counters from `iptables-save -c` output, in order. */
export function parseSaveCounters(text: string): RuleCounter[] {
  const out: RuleCounter[] = [];
  let table = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("*")) table = line.slice(1);
    const m = /^\[(\d+):(\d+)\] (-A .*)$/.exec(line);
    if (m?.[1] && m[2] && m[3]) out.push({ table, rule: m[3], packets: Number(m[1]), bytes: Number(m[2]) });
  }
  return out;
}

/** The counter of the first rule matching `w`, or undefined when no rule does. */
export function findRule(counters: readonly RuleCounter[], w: WatchedRule): RuleCounter | undefined {
  return counters.find(
    (c) =>
      c.table === w.table &&
      c.rule.startsWith(`-A ${w.chain} `) &&
      w.includes.every((p) => c.rule.includes(p)),
  );
}

export class CounterReadError extends Error {
  constructor(
    readonly netns: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`iptables counters in ${netns}: ${message}`, options);
    this.name = "CounterReadError";
  }
}

export async function readCounters(netns: string): Promise<RuleCounter[]> {
  try {
    const { stdout } = await run("ip", ["netns", "exec", netns, "iptables-save", "-c"], {
      maxBuffer: 64 * 1024 * 1024,
    });
    return parseSaveCounters(stdout);
  } catch (err) {
    throw new CounterReadError(netns, (err as Error).message, { cause: err });
  }
}

/** A rule to watch in one namespace; `where` names the namespace in reports (`master`, `master-dpu/ztunnel`). */
export interface CounterWatch {
  readonly where: string;
  readonly netns: string;
  readonly rule: WatchedRule;
}

export interface CounterDelta {
  readonly watch: CounterWatch;
  /** undefined: the rule was not there (before or after). */
  readonly packets?: number;
}

/** Counters of `watches` now; `delta()` later gives how many packets each rule matched meanwhile. */
export async function snapshotCounters(
  watches: readonly CounterWatch[],
): Promise<{ delta(): Promise<CounterDelta[]> }> {
  const namespaces = [...new Set(watches.map((w) => w.netns))];
  const readAll = async (): Promise<Map<string, RuleCounter[]>> =>
    new Map(await Promise.all(namespaces.map(async (ns) => [ns, await readCounters(ns)] as const)));
  const before = await readAll();
  return {
    delta: async () => {
      const after = await readAll();
      return watches.map((watch) => {
        const b = findRule(before.get(watch.netns) ?? [], watch.rule);
        const a = findRule(after.get(watch.netns) ?? [], watch.rule);
        return a && b ? { watch, packets: a.packets - b.packets } : { watch };
      });
    },
  };
}

export const formatDelta = (d: CounterDelta): string =>
  `${d.watch.where} ${d.watch.rule.label} ${d.packets === undefined ? "(rule missing)" : `+${d.packets}`}`;
