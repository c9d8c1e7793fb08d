import { canonicalIp } from "../configfile/net.js";
import { IPSET_NAME } from "../netplan/constants.js";
import type { IpSet, IpSetMember } from "../netplan/types.js";
import type { Runner } from "./exec.js";
import { splitWords } from "./iptables.js";
import { ApplyError, NO_CHANGE } from "./types.js";
import type { BackendResult, Change } from "./types.js";

// The ipset backend: keeps offmesh's sets (the pods a node captures) equal to the plan with one
// `ipset restore` script per reconcile, and applies single pod changes without reading.
// `ipset restore` is not transactional: it stops at the first failing line, and the lines before
// it stay applied; every script is written so that the next reconcile repairs a partial one.

/** The kernel's limit (IPSET_MAXNAMELEN 32, including the terminating NUL). */
export const IPSET_MAX_NAME = 31;
/** The kernel's limit on a comment extension (IPSET_MAX_COMMENT_SIZE). */
export const IPSET_MAX_COMMENT = 255;
const DEFAULT_MAXELEM = 65536;
const HASHSIZE = 1024;

/** The set a replacement is built in before it is swapped in under the real name. */
export const tempSetName = (name: string): string => `${name}-n`;

/** Sets offmesh owns whatever the plan says: removed by cleanup, and by reconcile when unplanned. */
export const OWNED_SETS: readonly string[] = [IPSET_NAME, tempSetName(IPSET_NAME)];

const familyName = (family: IpSet["family"]): string => (family === 4 ? "inet" : "inet6");

/** Keyword options of `create` that take no value. */
const CREATE_FLAGS = new Set(["comment", "counters", "skbinfo", "forceadd"]);

export interface SavedSet {
  readonly name: string;
  readonly type: string;
  /** Valued options of the `create` line (`family`, `maxelem`, `timeout` …). */
  readonly options: ReadonlyMap<string, string>;
  /** Keyword options of the `create` line (`comment`, `counters` …). */
  readonly flags: ReadonlySet<string>;
  /** Members by canonical address, with their comment (pod UID) when they have one. */
  readonly members: ReadonlyMap<string, string | undefined>;
}

const unquote = (w: string): string =>
  w.length >= 2 && w.startsWith('"') && w.endsWith('"') ? w.slice(1, -1) : w;

const canonical = (ip: string): string => canonicalIp(ip)?.ip ?? ip;

/** An `ipset save` document (one or more sets). */
export function parseIpsetSave(text: string): SavedSet[] {
  const sets = new Map<
    string,
    {
      name: string;
      type: string;
      options: Map<string, string>;
      flags: Set<string>;
      members: Map<string, string | undefined>;
    }
  >();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? "").trim();
    if (line === "" || line.startsWith("#")) continue;
    const words = splitWords(line);
    const [verb, name, arg] = words;
    const fail = (why: string): ApplyError =>
      new ApplyError("ipset", `cannot read ipset save output, line ${i + 1} ("${line}"): ${why}`);
    if (!name || !arg) throw fail("too short");
    if (verb === "create") {
      const options = new Map<string, string>();
      const flags = new Set<string>();
      for (let k = 3; k < words.length; k++) {
        const w = words[k] ?? "";
        if (CREATE_FLAGS.has(w)) flags.add(w);
        else options.set(w, words[++k] ?? "");
      }
      sets.set(name, { name, type: arg, options, flags, members: new Map() });
    } else if (verb === "add") {
      const set = sets.get(name);
      if (!set) throw fail(`set ${name} is not created above`);
      const at = words.indexOf("comment", 3);
      set.members.set(canonical(arg), at > 0 ? unquote(words[at + 1] ?? "") : undefined);
    } else {
      throw fail(`unknown command ${verb ?? ""}`);
    }
  }
  return [...sets.values()];
}

export function createLine(set: IpSet, name = set.name): string {
  const maxelem = Math.max(DEFAULT_MAXELEM, set.members.length);
  return `create ${name} ${set.type} family ${familyName(set.family)} hashsize ${HASHSIZE} maxelem ${maxelem} comment`;
}

const addLine = (name: string, m: IpSetMember): string => `add ${name} ${m.ip} comment "${m.comment}"`;

/**
 * How an existing set differs from the plan in ways member changes cannot fix. The kernel swaps
 * only sets of the same type and family, so those need the set destroyed and created again; any
 * other difference (no comment extension, too small, entries that expire) is fixed by a swap.
 */
export function setMismatch(
  desired: IpSet,
  actual: SavedSet,
): { readonly repair: "swap" | "recreate"; readonly reason: string } | undefined {
  const family = actual.options.get("family") ?? "";
  if (actual.type !== desired.type || family !== familyName(desired.family))
    return {
      repair: "recreate",
      reason: `is ${actual.type} family ${family}, the plan wants ${desired.type} family ${familyName(desired.family)}`,
    };
  if (!actual.flags.has("comment")) return { repair: "swap", reason: "has no comment extension" };
  if (actual.options.has("timeout")) return { repair: "swap", reason: "has entries that time out" };
  const maxelem = Number(actual.options.get("maxelem") ?? DEFAULT_MAXELEM);
  if (maxelem < desired.members.length)
    return {
      repair: "swap",
      reason: `holds at most ${maxelem} entries, the plan has ${desired.members.length}`,
    };
  return undefined;
}

export interface MemberDiff {
  readonly add: readonly IpSetMember[];
  /** Present with another comment (pod UID): added again, which replaces the comment in place. */
  readonly update: readonly IpSetMember[];
  readonly del: readonly string[];
}

export function diffMembers(
  desired: readonly IpSetMember[],
  actual: ReadonlyMap<string, string | undefined>,
): MemberDiff {
  const wanted = new Set<string>();
  const add: IpSetMember[] = [];
  const update: IpSetMember[] = [];
  for (const m of desired) {
    const ip = canonical(m.ip);
    wanted.add(ip);
    if (!actual.has(ip)) add.push(m);
    else if (actual.get(ip) !== m.comment) update.push(m);
  }
  const del = [...actual.keys()].filter((ip) => !wanted.has(ip));
  return { add, update, del };
}

/** What in the desired sets or members would break a restore script or exceed a kernel limit. */
export function ipsetProblems(sets: readonly IpSet[]): string[] {
  const problems: string[] = [];
  const names = new Set<string>();
  for (const set of sets) {
    if (!/^[A-Za-z0-9_.:-]+$/.test(set.name) || tempSetName(set.name).length > IPSET_MAX_NAME)
      problems.push(`set name "${set.name}" must be a word of at most ${IPSET_MAX_NAME - 2} characters`);
    if (names.has(set.name)) problems.push(`set ${set.name} planned twice`);
    names.add(set.name);
    problems.push(...memberProblems(set.name, set.members));
    const ips = new Set<string>();
    for (const m of set.members) {
      const ip = canonical(m.ip);
      if (ips.has(ip)) problems.push(`${set.name}: member ${m.ip} listed twice`);
      ips.add(ip);
    }
  }
  return problems;
}

function memberProblems(name: string, members: readonly IpSetMember[]): string[] {
  const problems: string[] = [];
  for (const m of members) {
    if (!/^\S+$/.test(m.ip)) problems.push(`${name}: member "${m.ip}" is not an address`);
    if (/["\r\n]/.test(m.comment) || m.comment.length > IPSET_MAX_COMMENT)
      problems.push(
        `${name}: comment of ${m.ip} must be one line without quotes, ≤ ${IPSET_MAX_COMMENT} characters`,
      );
  }
  return problems;
}

export interface SetPlan {
  /** Lines for `ipset restore -exist`; empty when the set already matches. */
  readonly lines: readonly string[];
  readonly changes: readonly Change[];
}

/** The script lines that bring one set to the plan. */
export function planSet(desired: IpSet, actual: SavedSet | undefined, tempExists: boolean): SetPlan {
  const name = desired.name;
  const temp = tempSetName(name);
  const change = (action: string, detail: string): Change => ({ backend: "ipset", action, detail });
  // A temp left by an interrupted script would be reused with stale members by `create -exist`.
  const clearTemp = tempExists ? [`destroy ${temp}`] : [];
  const clearTempChange = tempExists ? [change("destroy", temp)] : [];
  if (!actual) {
    return {
      lines: [...clearTemp, createLine(desired), ...desired.members.map((m) => addLine(name, m))],
      changes: [
        ...clearTempChange,
        change("create", `${name} ${desired.type} family ${familyName(desired.family)}`),
        ...desired.members.map((m) => change("add", `${name} ${m.ip} comment "${m.comment}"`)),
      ],
    };
  }
  const mismatch = setMismatch(desired, actual);
  if (mismatch?.repair === "swap") {
    // Built aside and swapped in, so the set is never missing or partly filled.
    return {
      lines: [
        ...clearTemp,
        createLine(desired, temp),
        ...desired.members.map((m) => addLine(temp, m)),
        `swap ${temp} ${name}`,
        `destroy ${temp}`,
      ],
      changes: [
        ...clearTempChange,
        change("swap", `${name} ${mismatch.reason}: rebuilt with ${desired.members.length} members`),
      ],
    };
  }
  if (mismatch?.repair === "recreate") {
    return {
      lines: [
        ...clearTemp,
        `destroy ${name}`,
        createLine(desired),
        ...desired.members.map((m) => addLine(name, m)),
      ],
      changes: [
        ...clearTempChange,
        change("recreate", `${name} ${mismatch.reason}: recreated with ${desired.members.length} members`),
      ],
    };
  }
  const d = diffMembers(desired.members, actual.members);
  return {
    lines: [
      ...clearTemp,
      ...d.del.map((ip) => `del ${name} ${ip}`),
      ...[...d.add, ...d.update].map((m) => addLine(name, m)),
    ],
    changes: [
      ...clearTempChange,
      ...d.del.map((ip) => change("delete", `${name} ${ip}`)),
      ...d.add.map((m) => change("add", `${name} ${m.ip} comment "${m.comment}"`)),
      ...d.update.map((m) => change("replace", `${name} ${m.ip} comment "${m.comment}"`)),
    ],
  };
}

const IN_USE_HINT =
  "a set referenced by an iptables rule cannot be destroyed (nor swapped for one of another type or family): " +
  "remove the rules that use it first (IptablesBackend.cleanup, or an iptables plan without them), then retry";

export class IpsetBackend {
  constructor(private readonly runner: Runner) {}

  /**
   * Converge the desired sets, and destroy owned sets the plan leaves out (and leftover temps).
   * One `ipset restore` for everything, none when all matches.
   */
  async reconcile(
    desired: readonly IpSet[],
    opts: { readonly dryRun?: boolean } = {},
  ): Promise<BackendResult> {
    const problems = ipsetProblems(desired);
    if (problems.length > 0)
      throw new ApplyError("ipset", `the plan cannot be applied: ${problems.join("; ")}`);
    const present = await this.listNames();
    const lines: string[] = [];
    const changes: Change[] = [];
    for (const set of desired) {
      const actual = present.has(set.name) ? await this.save(set.name) : undefined;
      const p = planSet(set, actual, present.has(tempSetName(set.name)));
      lines.push(...p.lines);
      changes.push(...p.changes);
    }
    // Last, so that a stale set still in use cannot hold back the desired sets' updates.
    const keep = new Set(desired.flatMap((s) => [s.name, tempSetName(s.name)]));
    for (const name of OWNED_SETS) {
      if (keep.has(name) || !present.has(name)) continue;
      lines.push(`destroy ${name}`);
      changes.push({ backend: "ipset", action: "destroy", detail: name });
    }
    if (lines.length === 0) return NO_CHANGE;
    if (opts.dryRun) return { changes, writes: 0 };
    await this.restore(lines, "reconcile");
    return { changes, writes: 1 };
  }

  /**
   * The fast path for one pod event: no read, one `ipset restore -exist`. Deletions run first, so
   * an address both deleted and added ends up present with the new comment.
   */
  async applyMembers(
    name: string,
    add: readonly IpSetMember[],
    del: readonly string[],
  ): Promise<BackendResult> {
    const problems = [
      ...memberProblems(name, add),
      ...del.filter((ip) => !/^\S+$/.test(ip)).map((ip) => `"${ip}" is not an address`),
    ];
    if (problems.length > 0)
      throw new ApplyError("ipset", `cannot apply members to ${name}: ${problems.join("; ")}`);
    if (add.length + del.length === 0) return NO_CHANGE;
    await this.restore(
      [...del.map((ip) => `del ${name} ${ip}`), ...add.map((m) => addLine(name, m))],
      `members of ${name}`,
    );
    return {
      changes: [
        ...del.map((ip) => ({ backend: "ipset", action: "delete", detail: `${name} ${ip}` })),
        ...add.map((m) => ({
          backend: "ipset",
          action: "add",
          detail: `${name} ${m.ip} comment "${m.comment}"`,
        })),
      ],
      writes: 1,
    };
  }

  /**
   * Destroy the owned sets. Run IptablesBackend.cleanup first: the kernel refuses to destroy a
   * set that an iptables rule still references.
   */
  async cleanup(): Promise<BackendResult> {
    const present = await this.listNames();
    const doomed = OWNED_SETS.filter((n) => present.has(n));
    if (doomed.length === 0) return NO_CHANGE;
    await this.restore(
      doomed.map((n) => `destroy ${n}`),
      "cleanup",
    );
    return { changes: doomed.map((n) => ({ backend: "ipset", action: "destroy", detail: n })), writes: 1 };
  }

  private async listNames(): Promise<Set<string>> {
    const r = await this.runner.run("ipset", ["list", "-n"], { allowFail: true });
    if (r.code !== 0) throw new ApplyError("ipset", `ipset list -n exited ${r.code}: ${r.stderr.trim()}`);
    return new Set(
      r.stdout
        .split("\n")
        .map((l) => l.trim())
        .filter((l) => l !== ""),
    );
  }

  private async save(name: string): Promise<SavedSet | undefined> {
    const r = await this.runner.run("ipset", ["save", name], { allowFail: true });
    // Destroyed between the listing and now: treated as missing.
    if (r.code !== 0 && /does not exist/.test(r.stderr)) return undefined;
    if (r.code !== 0)
      throw new ApplyError("ipset", `ipset save ${name} exited ${r.code}: ${r.stderr.trim()}`);
    return parseIpsetSave(r.stdout).find((s) => s.name === name);
  }

  private async restore(lines: readonly string[], what: string): Promise<void> {
    const script = lines.join("\n") + "\n";
    const r = await this.runner.run("ipset", ["restore", "-exist"], { input: script, allowFail: true });
    if (r.code === 0) return;
    const stderr = r.stderr.trim() || `exit ${r.code}`;
    const hint = /in use by a kernel component/.test(stderr) ? `; ${IN_USE_HINT}` : "";
    throw new ApplyError(
      "ipset",
      `ipset restore (${what}) failed; the lines before the failing one were applied and the next reconcile repairs them: ${stderr}${hint}`,
    );
  }
}
