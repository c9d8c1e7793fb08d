import type { IpFamily } from "../configfile/net.js";
import { hex, POD_RULE_PRIORITY, RULE_PRIORITY } from "../netplan/constants.js";
import type { IpRule, RouteTableId } from "../netplan/types.js";
import type { Change } from "./types.js";
import { ApplyError } from "./types.js";

// Policy routing rules: parse `ip -N -json rule show`, compare with the plan, and produce the
// `ip -batch` lines that converge one family. Pure: no I/O.

/** Priorities offmesh owns: every rule at one of these is offmesh's to add, fix or delete. */
export const OWNED_RULE_PRIORITIES: ReadonlySet<number> = new Set<number>([
  ...Object.values(RULE_PRIORITY),
  ...Object.values(POD_RULE_PRIORITY),
]);

const TABLE_NAMES: ReadonlyMap<number, string> = new Map([
  [253, "default"],
  [254, "main"],
  [255, "local"],
]);

export const LOCAL_TABLE = 255;

export function tableNumber(id: RouteTableId | "local" | "default"): number {
  if (typeof id === "number") return id;
  return id === "main" ? 254 : id === "local" ? 255 : 253;
}

/** A table as printed by ip (a number with -N, else maybe a name) in the numeric form rules compare by. */
export function tableArg(printed: string): string {
  if (/^\d+$/.test(printed)) return printed;
  for (const [n, name] of TABLE_NAMES) if (name === printed) return String(n);
  return printed;
}

export function tableName(n: number): string {
  return TABLE_NAMES.get(n) ?? String(n);
}

/**
 * A rule as the kernel holds it. `attrs` are the selectors and the action as `ip rule add|del`
 * takes them, in the order `ip rule` prints them; `opaque` names what was printed that offmesh
 * does not express (uidrange, ipproto …): such a rule never equals a planned one, and a delete
 * command built from `attrs` alone may match more rules than it, which `planPriority` accounts for.
 */
export interface KernelRule {
  readonly family: IpFamily;
  readonly priority: number;
  readonly attrs: readonly (readonly [keyword: string, value: string])[];
  readonly opaque: readonly string[];
}

type Json = Record<string, unknown>;

const str = (v: unknown): string | undefined =>
  typeof v === "string" ? v : typeof v === "number" ? String(v) : undefined;

/** Accepts `0x80`, `80` (hex, as ip prints marks) or a number; returns the canonical `0x80`. */
function markHex(v: unknown): string | undefined {
  const s = str(v);
  if (s === undefined) return undefined;
  const n = typeof v === "number" ? v : Number.parseInt(s.replace(/^0x/i, ""), 16);
  return Number.isFinite(n) ? hex(n) : undefined;
}

const FULL_MASK = 0xffffffff;

function fwmarkArg(value: number, mask: number): string {
  // ip prints (and the kernel stores) a full mask implicitly; spell it the same way so texts compare.
  return mask === FULL_MASK ? hex(value) : `${hex(value)}/${hex(mask)}`;
}

function prefixArg(addr: string, len: unknown): string {
  return typeof len === "number" ? `${addr}/${len}` : addr;
}

const KNOWN_RULE_KEYS = new Set([
  "priority",
  "not",
  "src",
  "srclen",
  "dst",
  "dstlen",
  "tos",
  "dsfield",
  "fwmark",
  "fwmask",
  "iif",
  "iif_detached",
  "oif",
  "oif_detached",
  "table",
  "goto",
  "nop",
  "action",
  "suppress_prefixlen",
  "suppress_ifgroup",
  "flags",
]);

/** One entry of `ip -N -json rule show` (numeric tables). */
export function parseRule(raw: Json, family: IpFamily): KernelRule {
  const priority = typeof raw.priority === "number" ? raw.priority : 0;
  const attrs: [string, string][] = [];
  const opaque: string[] = [];
  if ("not" in raw) attrs.push(["not", ""]);
  const src = str(raw.src);
  if (src !== undefined && src !== "all") attrs.push(["from", prefixArg(src, raw.srclen)]);
  const dst = str(raw.dst);
  if (dst !== undefined && dst !== "all") attrs.push(["to", prefixArg(dst, raw.dstlen)]);
  const tos = str(raw.tos) ?? str(raw.dsfield);
  if (tos !== undefined) attrs.push(["tos", tos]);
  const mark = markHex(raw.fwmark);
  if (mark !== undefined) {
    const mask = markHex(raw.fwmask);
    const value = Number.parseInt(mark, 16);
    attrs.push(["fwmark", fwmarkArg(value, mask === undefined ? FULL_MASK : Number.parseInt(mask, 16))]);
  }
  const iif = str(raw.iif);
  if (iif !== undefined) attrs.push(["iif", iif]);
  const oif = str(raw.oif);
  if (oif !== undefined) attrs.push(["oif", oif]);
  const table = str(raw.table);
  if (table !== undefined) {
    attrs.push(["lookup", tableArg(table)]);
  }
  const gotoTarget = str(raw.goto);
  if (gotoTarget !== undefined) attrs.push(["goto", gotoTarget]);
  if ("nop" in raw) attrs.push(["nop", ""]);
  const action = str(raw.action);
  if (action !== undefined) attrs.push([action, ""]);
  const suppressLen = str(raw.suppress_prefixlen);
  if (suppressLen !== undefined) attrs.push(["suppress_prefixlength", suppressLen]);
  const suppressGroup = str(raw.suppress_ifgroup);
  if (suppressGroup !== undefined) attrs.push(["suppress_ifgroup", suppressGroup]);
  for (const [k, v] of Object.entries(raw)) {
    if (!KNOWN_RULE_KEYS.has(k)) opaque.push(`${k} ${JSON.stringify(v)}`);
  }
  if (raw.flags !== undefined && !(Array.isArray(raw.flags) && raw.flags.length === 0)) {
    opaque.push(`flags ${JSON.stringify(raw.flags)}`);
  }
  return { family, priority, attrs, opaque };
}

export function parseRules(json: string, family: IpFamily): KernelRule[] {
  const parsed: unknown = json.trim() === "" ? [] : JSON.parse(json);
  if (!Array.isArray(parsed)) throw new ApplyError("rule", `ip -json rule show printed ${json.slice(0, 80)}`);
  return parsed
    .filter((r): r is Json => typeof r === "object" && r !== null)
    .map((r) => parseRule(r, family));
}

export function ruleFromPlan(r: IpRule): KernelRule {
  const attrs: [string, string][] = [];
  if (r.fwmark) attrs.push(["fwmark", fwmarkArg(r.fwmark.value, r.fwmark.mask)]);
  if ("goto" in r.action) attrs.push(["goto", String(r.action.goto)]);
  else attrs.push(["lookup", String(tableNumber(r.action.lookup))]);
  return { family: r.family, priority: r.priority, attrs, opaque: [] };
}

export function localRule(family: IpFamily, priority: number): KernelRule {
  return { family, priority, attrs: [["lookup", String(LOCAL_TABLE)]], opaque: [] };
}

const attrText = ([k, v]: readonly [string, string]): string => (v === "" ? k : `${k} ${v}`);

/** The rule as `ip rule` prints it, priority first (`90: from all fwmark 0x80/0x80 lookup 101`). */
export function ruleText(r: KernelRule): string {
  const parts: string[] = [];
  const not = r.attrs.some(([k]) => k === "not");
  if (not) parts.push("not");
  if (!r.attrs.some(([k]) => k === "from")) parts.push("from all");
  for (const [k, v] of r.attrs) {
    if (k === "not") continue;
    parts.push(k === "lookup" && /^\d+$/.test(v) ? `lookup ${tableName(Number(v))}` : attrText([k, v]));
  }
  parts.push(...r.opaque.map((o) => `[${o}]`));
  return `${r.priority}: ${parts.join(" ")}`;
}

/** `ip rule add|del` arguments naming this rule as precisely as ip can. */
function ruleArgs(r: KernelRule): string {
  return [`priority ${r.priority}`, ...r.attrs.map(attrText)].join(" ");
}

export function sameRule(a: KernelRule, b: KernelRule): boolean {
  return (
    a.priority === b.priority &&
    a.opaque.length === 0 &&
    b.opaque.length === 0 &&
    a.attrs.length === b.attrs.length &&
    a.attrs.every(([k, v], i) => b.attrs[i]?.[0] === k && b.attrs[i]?.[1] === v)
  );
}

/**
 * Would `ip rule del <args of spec>` hit `r`? The kernel compares only the attributes a delete
 * request names, so any rule carrying all of them (and maybe more) matches. This over-approximates
 * the kernel, which is the safe direction: a false "matches" only makes us take the slower plan.
 */
function deleteHits(spec: KernelRule, r: KernelRule): boolean {
  return (
    spec.priority === r.priority &&
    spec.attrs.every(([k, v]) => r.attrs.some(([k2, v2]) => k2 === k && v2 === v))
  );
}

export interface RuleStep {
  /** `ip -4|-6 -batch` lines, in the order they must run. */
  readonly lines: readonly string[];
  readonly changes: readonly Change[];
}

function detail(r: KernelRule): string {
  return (r.family === 6 ? "-6 " : "") + ruleText(r);
}

const add = (r: KernelRule, out: { lines: string[]; changes: Change[] }): void => {
  out.lines.push(`rule add ${ruleArgs(r)}`);
  out.changes.push({ backend: "rule", action: "add", detail: detail(r) });
};
const del = (r: KernelRule, out: { lines: string[]; changes: Change[] }): void => {
  out.lines.push(`rule del ${ruleArgs(r)}`);
  out.changes.push({ backend: "rule", action: "delete", detail: detail(r) });
};

/**
 * The deletes (in kernel order) that remove exactly `doomed` from `list`, or undefined when some
 * delete would hit another rule first. `ip rule del` removes the first rule its arguments match.
 */
function orderedDeletes(list: readonly KernelRule[], doomed: ReadonlySet<number>): KernelRule[] | undefined {
  const remaining = list.map((r, i) => ({ r, i }));
  const out: KernelRule[] = [];
  for (let i = 0; i < list.length; i++) {
    if (!doomed.has(i)) continue;
    const target = list[i] as KernelRule;
    const hit = remaining.find((e) => deleteHits(target, e.r));
    if (hit?.i !== i) return undefined;
    remaining.splice(remaining.indexOf(hit), 1);
    out.push(target);
  }
  return out;
}

/**
 * Converge the rules at one owned priority to `want` (or none). A missing rule is added before any
 * rule at that priority is deleted, so the lookup it provides does not disappear: the kernel puts a
 * new rule after those of equal priority, so each original can then be deleted front to back, each
 * delete hitting its own target. When the planned rule exists, the strays are deleted around it;
 * only if a stray's delete would hit the planned rule first (the stray names a subset of its
 * attributes) is everything deleted and the planned rule re-added, a gap of one batch line, since
 * the kernel refuses a second identical rule.
 */
function planPriority(
  list: readonly KernelRule[],
  want: KernelRule | undefined,
  out: { lines: string[]; changes: Change[] },
): void {
  if (want === undefined) {
    for (const r of list) del(r, out);
    return;
  }
  if (list.length === 1 && sameRule(list[0] as KernelRule, want)) return;
  let keep = -1;
  list.forEach((r, i) => {
    if (sameRule(r, want)) keep = i;
  });
  if (keep < 0) {
    add(want, out);
    for (const r of list) del(r, out);
    return;
  }
  const deletes = orderedDeletes(list, new Set(list.map((_, i) => i).filter((i) => i !== keep)));
  if (deletes) {
    for (const r of deletes) del(r, out);
    return;
  }
  for (const r of list) del(r, out);
  add(want, out);
}

function groupByPriority(rules: readonly KernelRule[]): Map<number, KernelRule[]> {
  const m = new Map<number, KernelRule[]>();
  for (const r of rules) m.set(r.priority, [...(m.get(r.priority) ?? []), r]);
  return m;
}

/** Checks a plan's rules before anything is written: every rule must sit at an owned priority, once. */
export function checkPlannedRules(rules: readonly IpRule[], localPriority: number): void {
  const problems: string[] = [];
  if (localPriority !== 0 && !OWNED_RULE_PRIORITIES.has(localPriority)) {
    problems.push(`the local rule's priority ${localPriority} is not one offmesh owns`);
  }
  const seen = new Map<string, IpRule>();
  for (const r of rules) {
    const text = detail(ruleFromPlan(r));
    if (!OWNED_RULE_PRIORITIES.has(r.priority)) problems.push(`${text}: priority ${r.priority} is not owned`);
    if (r.family !== 4 && r.family !== 6) problems.push(`${text}: family ${String(r.family)}`);
    const key = `${r.family}/${r.priority}`;
    const other = seen.get(key);
    if (other) problems.push(`${text}: priority ${r.priority} is planned twice`);
    if (r.priority === localPriority && localPriority !== 0) {
      problems.push(`${text}: priority ${r.priority} is where the local rule goes`);
    }
    seen.set(key, r);
  }
  if (problems.length > 0) throw new ApplyError("rule", `plan cannot be applied: ${problems.join("; ")}`);
}

/**
 * The batch that converges one family's rules: the owned priorities hold exactly the planned rules,
 * and the kernel's `lookup local` rule sits at `localPriority`. Order: the local rule at 0 is
 * restored first, owned priorities are converged in ascending order (which adds a relocated local
 * rule), and only then is the local rule at 0 deleted: a local lookup exists at every moment.
 */
export function planRules(
  family: IpFamily,
  desired: readonly IpRule[],
  localPriority: number,
  current: readonly KernelRule[],
): RuleStep {
  const out = { lines: [] as string[], changes: [] as Change[] };
  const want = new Map<number, KernelRule>();
  for (const r of desired) if (r.family === family) want.set(r.priority, ruleFromPlan(r));
  if (localPriority !== 0) want.set(localPriority, localRule(family, localPriority));
  const byPriority = groupByPriority(current);
  const atZero = byPriority.get(0) ?? [];
  const kernelLocal = localRule(family, 0);
  if (localPriority === 0 && !atZero.some((r) => sameRule(r, kernelLocal))) add(kernelLocal, out);
  for (const priority of [...OWNED_RULE_PRIORITIES].sort((a, b) => a - b)) {
    planPriority(byPriority.get(priority) ?? [], want.get(priority), out);
  }
  if (localPriority !== 0) {
    const doomed = new Set(atZero.flatMap((r, i) => (sameRule(r, kernelLocal) ? [i] : [])));
    const deletes = orderedDeletes(atZero, doomed);
    if (!deletes) {
      throw new ApplyError(
        "rule",
        `cannot delete "${detail(kernelLocal)}" without risking another rule at priority 0 (${atZero.map(detail).join(", ")})`,
      );
    }
    for (const r of deletes) del(r, out);
  }
  return out;
}

/** Every rule at an owned priority goes; `lookup local` is back at 0 before the relocated one is deleted. */
export function planRuleCleanup(family: IpFamily, current: readonly KernelRule[]): RuleStep {
  return planRules(family, [], 0, current);
}
