import type { IpFamily } from "../configfile/net.js";
import { OWNED_CHAIN_PREFIXES } from "../netplan/constants.js";
import type { Firewall, IptablesTable } from "../netplan/types.js";
import type { Runner } from "./exec.js";
import { ApplyError } from "./types.js";
import type { BackendResult, Change } from "./types.js";

// The iptables backend: converges the owned part of each (family, table) to a plan with one
// `iptables-restore --noflush` per table that differs. Owned = user chains with an owned prefix,
// and rules in built-in chains that jump to one. Everything else is read, kept and never written.
// See docs/netapply-iptables.md.

export type IptablesMode = "nft" | "legacy";

export const FAMILIES: readonly IpFamily[] = [4, 6];

/**
 * More legacy rules than this means legacy is in use, even if nft holds more: the rule of
 * kubernetes-sigs/iptables-wrapper and istio-cni, since a few nft rules may come from an image
 * whose `iptables` defaults to nft while the host's components still write legacy.
 */
export const LEGACY_RULE_THRESHOLD = 10;

/** Built-in chains in netfilter hook order; jumps are checked and reported in this order. */
const HOOK_ORDER: readonly string[] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/** Tables a plan may name, in the order they are written. Other tables are only cleaned. */
const TABLE_ORDER: readonly string[] = ["raw", "mangle", "nat", "filter", "security"];

const RESTORE_WAIT_SECONDS = "10";

export function isOwnedChain(name: string): boolean {
  return OWNED_CHAIN_PREFIXES.some((p) => name.startsWith(p));
}

export function iptablesCommand(family: IpFamily, mode: IptablesMode, op: "save" | "restore"): string {
  return `${family === 4 ? "iptables" : "ip6tables"}-${mode}-${op}`;
}

const toolName = (family: IpFamily): string => (family === 4 ? "iptables" : "ip6tables");

// ---- mode detection ------------------------------------------------------------------------------

/** Rules in an iptables-save document (lines starting `-A`). */
export function countRules(saveText: string): number {
  return saveText.split("\n").filter((l) => l.startsWith("-A")).length;
}

/** istio-cni's choice: legacy above the threshold, else whichever holds more rules; ties → nft. */
export function chooseIptablesMode(counts: { readonly legacy: number; readonly nft: number }): IptablesMode {
  if (counts.legacy > LEGACY_RULE_THRESHOLD) return "legacy";
  return counts.legacy > counts.nft ? "legacy" : "nft";
}

/**
 * Which iptables the namespace's other users write, so that offmesh's rules sit in the same
 * hooks as theirs (legacy and nft rules both run, but each tool sees only its own). Rules of both
 * families are counted together. A save command that cannot run counts as holding no rules.
 */
export async function detectIptablesMode(
  runner: Runner,
  opts: { readonly override?: IptablesMode | undefined } = {},
): Promise<IptablesMode> {
  if (opts.override) return opts.override;
  const modes: readonly IptablesMode[] = ["legacy", "nft"];
  const runs = await Promise.all(
    modes.flatMap((mode) =>
      FAMILIES.map(async (family) => {
        const cmd = iptablesCommand(family, mode, "save");
        const result = await runner.run(cmd, [], { allowFail: true });
        const ok = result.code === 0;
        return { mode, cmd, ok, rules: ok ? countRules(result.stdout) : 0, result };
      }),
    ),
  );
  if (!runs.some((r) => r.ok)) {
    const why = runs.map((r) => `${r.cmd}: ${r.result.stderr.trim() || `exit ${r.result.code}`}`).join("; ");
    throw new ApplyError("iptables", `cannot detect the iptables mode, no save command ran: ${why}`);
  }
  const count = (mode: IptablesMode): number =>
    runs.filter((r) => r.mode === mode).reduce((n, r) => n + r.rules, 0);
  return chooseIptablesMode({ legacy: count("legacy"), nft: count("nft") });
}

// ---- parsing ---------------------------------------------------------------------------------------

/**
 * Words of a rule as iptables-save prints it. A double-quoted string (a comment) stays one word,
 * quotes and backslash escapes included, so joining the words gives back iptables-save's text.
 */
export function splitWords(text: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charAt(i);
    if (quoted) {
      word += c;
      if (c === "\\" && i + 1 < text.length) word += text.charAt(++i);
      else if (c === '"') quoted = false;
      continue;
    }
    if (c === " " || c === "\t") {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
      continue;
    }
    inWord = true;
    word += c;
    if (c === '"') quoted = true;
  }
  if (inWord) words.push(word);
  return words;
}

/** A rule spec with whitespace outside quotes collapsed: the form compared with the kernel's. */
export const normaliseSpec = (spec: string): string => splitWords(spec).join(" ");

/** The chain or target a rule jumps (`-j`) or goes (`-g`) to, or undefined. */
export function ruleTarget(spec: string): string | undefined {
  const w = splitWords(spec);
  for (let i = 0; i < w.length - 1; i++) {
    // A comment without spaces is printed unquoted and could read "-j".
    if (w[i] === "--comment") i++;
    else if (w[i] === "-j" || w[i] === "-g") return w[i + 1];
  }
  return undefined;
}

const jumpsToOwned = (spec: string): boolean => {
  const t = ruleTarget(spec);
  return t !== undefined && isOwnedChain(t);
};

export interface SavedTable {
  readonly table: string;
  /** Built-in chains (declared with a policy) and their rule specs, in kernel order. */
  readonly builtins: ReadonlyMap<string, readonly string[]>;
  /** User-defined chains (declared with policy `-`) and their rule specs, in kernel order. */
  readonly chains: ReadonlyMap<string, readonly string[]>;
}

export interface SavedDocument {
  readonly tables: readonly SavedTable[];
  /** Tables iptables-nft could not decode (written with nft directly): their rules are unknown. */
  readonly incompatible: readonly string[];
}

const parseError = (n: number, line: string, why: string): ApplyError =>
  new ApplyError("iptables", `cannot read iptables-save output, line ${n} ("${line}"): ${why}`);

/** An iptables-save document of any number of tables; rule specs are normalised. */
export function parseIptablesSave(text: string): SavedDocument {
  const tables: SavedTable[] = [];
  const incompatible: string[] = [];
  let current: { table: string; builtins: Map<string, string[]>; chains: Map<string, string[]> } | undefined;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? "").trimEnd();
    const n = i + 1;
    const bad = /^# Table `([^']+)' is incompatible/.exec(line);
    if (bad?.[1]) incompatible.push(bad[1]);
    if (line === "" || line.startsWith("#")) continue;
    if (line.startsWith("*")) {
      if (current) throw parseError(n, line, `table ${current.table} has no COMMIT`);
      current = { table: line.slice(1), builtins: new Map(), chains: new Map() };
      continue;
    }
    if (!current) throw parseError(n, line, "outside a table");
    if (line === "COMMIT") {
      tables.push(current);
      current = undefined;
      continue;
    }
    if (line.startsWith(":")) {
      const [name, policy] = line.slice(1).split(" ");
      if (!name || !policy) throw parseError(n, line, "chain declaration without a policy");
      (policy === "-" ? current.chains : current.builtins).set(name, []);
      continue;
    }
    const words = splitWords(line);
    if (words[0] !== "-A" || words[1] === undefined) throw parseError(n, line, "not a rule");
    const rules = current.builtins.get(words[1]) ?? current.chains.get(words[1]);
    if (!rules) throw parseError(n, line, `chain ${words[1]} is not declared`);
    rules.push(words.slice(2).join(" "));
  }
  if (current) throw parseError(lines.length, "", `table ${current.table} has no COMMIT`);
  return { tables, incompatible };
}

/** An iptables-save document of exactly one table (`iptables-save -t TABLE`). */
export function parseSavedTable(text: string): SavedTable {
  const { tables } = parseIptablesSave(text);
  const [only, ...more] = tables;
  if (!only || more.length > 0)
    throw new ApplyError("iptables", `expected one table in iptables-save output, found ${tables.length}`);
  return only;
}

// ---- the plan's own consistency ------------------------------------------------------------------

/**
 * What in a plan would make the reconciler write something it could not recognise as its own
 * later, or break the restore document: chains without an owned prefix, jumps to chains the table
 * does not declare, line breaks inside a rule.
 */
export function planProblems(desired: readonly Firewall[]): string[] {
  const problems: string[] = [];
  const families = new Set<number>();
  for (const fw of desired) {
    if (families.has(fw.family)) problems.push(`family ${fw.family} is planned twice`);
    families.add(fw.family);
    const tables = new Set<string>();
    for (const t of fw.tables) {
      const where = `${toolName(fw.family)} -t ${t.table}`;
      if (tables.has(t.table)) problems.push(`${where}: table planned twice`);
      tables.add(t.table);
      const names = new Set<string>();
      for (const c of t.chains) {
        if (!isOwnedChain(c.name) || /\s/.test(c.name))
          problems.push(
            `${where}: chain "${c.name}" is not an owned chain name (${OWNED_CHAIN_PREFIXES.join(", ")})`,
          );
        if (names.has(c.name)) problems.push(`${where}: chain ${c.name} planned twice`);
        names.add(c.name);
        for (const r of c.rules)
          if (/[\r\n]/.test(r.spec) || normaliseSpec(r.spec) === "")
            problems.push(`${where}: chain ${c.name} has an empty or multi-line rule`);
      }
      for (const j of t.jumps) {
        const target = ruleTarget(j.spec);
        if (/[\r\n]/.test(j.spec)) problems.push(`${where}: jump in ${j.chain} spans lines`);
        if (target === undefined || !names.has(target))
          problems.push(`${where}: jump "${j.spec}" in ${j.chain} must target a chain the table declares`);
      }
    }
  }
  return problems;
}

// ---- diff ------------------------------------------------------------------------------------------

export interface TableDiff {
  readonly family: IpFamily;
  readonly table: string;
  /** What the restore does, one entry per chain created/rewritten/removed and per jump moved. */
  readonly changes: readonly Change[];
  /** Input for `iptables-restore --noflush`. */
  readonly restore: string;
}

const byHookOrder = (a: string, b: string): number => {
  const ia = HOOK_ORDER.indexOf(a);
  const ib = HOOK_ORDER.indexOf(b);
  return (ia < 0 ? HOOK_ORDER.length : ia) - (ib < 0 ? HOOK_ORDER.length : ib) || a.localeCompare(b);
};

const sameList = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * The restore document (and its changes) that brings the owned part of one table to `desired`;
 * undefined when it already matches. `desired` undefined means "nothing owned wanted here".
 */
export function diffTable(
  family: IpFamily,
  table: string,
  desired: IptablesTable | undefined,
  actual: SavedTable | undefined,
): TableDiff | undefined {
  const where = `${toolName(family)} -t ${table}`;
  const change = (action: string, detail: string): Change => ({ backend: "iptables", action, detail });
  const declare: string[] = [];
  const deletes: string[] = [];
  const appends: string[] = [];
  const inserts: string[] = [];
  const removes: string[] = [];
  const chainChanges: Change[] = [];
  const jumpChanges: Change[] = [];
  const staleChanges: Change[] = [];

  const actualChains = actual?.chains ?? new Map<string, readonly string[]>();
  const builtins = actual?.builtins ?? new Map<string, readonly string[]>();
  const wanted = desired?.chains ?? [];
  const wantedNames = new Set(wanted.map((c) => c.name));

  // Owned chains are written whole: declaring one in --noflush mode flushes it, so a chain that
  // differs in any way (missing, extra or reordered rules) cannot keep a stale rule.
  for (const chain of wanted) {
    const want = chain.rules.map((r) => normaliseSpec(r.spec));
    const have = actualChains.get(chain.name);
    if (have && sameList(want, have)) continue;
    declare.push(`:${chain.name} - [0:0]`);
    appends.push(...want.map((s) => `-A ${chain.name} ${s}`));
    chainChanges.push(change(have ? "rewrite" : "create", `${where} ${chain.name}`));
  }

  // Stale owned chains go, unless a rule that stays (someone else's, or the plan's) still
  // references one: the kernel refuses to delete a referenced chain, and failing would block the
  // whole table. Such a chain is only emptied.
  const stale = [...actualChains.keys()].filter((n) => isOwnedChain(n) && !wantedNames.has(n)).sort();
  const staleSet = new Set(stale);
  const keptReferences = new Map<string, string>();
  for (const [name, rules] of actualChains) {
    if (isOwnedChain(name)) continue;
    for (const r of rules) {
      const t = ruleTarget(r);
      if (t !== undefined && staleSet.has(t) && !keptReferences.has(t)) keptReferences.set(t, name);
    }
  }
  for (const chain of wanted)
    for (const r of chain.rules) {
      const t = ruleTarget(r.spec);
      if (t !== undefined && staleSet.has(t) && !keptReferences.has(t)) keptReferences.set(t, chain.name);
    }
  for (const name of stale) {
    const rules = actualChains.get(name) ?? [];
    const referrer = keptReferences.get(name);
    if (referrer !== undefined) {
      if (rules.length === 0) continue;
      declare.push(`:${name} - [0:0]`);
      staleChanges.push(change("flush", `${where} ${name} (kept: still referenced from ${referrer})`));
      continue;
    }
    declare.push(`:${name} - [0:0]`);
    removes.push(`-X ${name}`);
    staleChanges.push(change("remove", `${where} ${name}`));
  }

  // Jumps: each desired one exactly once, contiguous at the top of its built-in chain in plan
  // order. Jumps to stale chains are deleted on their own, so that they do not disturb otherwise
  // correct jumps; any other deviation deletes all our jumps in the chain and inserts them again.
  const jumpChains = new Set([...builtins.keys(), ...(desired?.jumps ?? []).map((j) => j.chain)]);
  for (const chain of [...jumpChains].sort(byHookOrder)) {
    const rules = builtins.get(chain) ?? [];
    const want = (desired?.jumps ?? []).filter((j) => j.chain === chain).map((j) => normaliseSpec(j.spec));
    const toStale = rules.filter((r) => {
      const t = ruleTarget(r);
      return t !== undefined && staleSet.has(t);
    });
    for (const r of toStale) {
      deletes.push(`-D ${chain} ${r}`);
      jumpChanges.push(change("delete", `${where} -D ${chain} ${r}`));
    }
    const rest = rules.filter((r) => !toStale.includes(r));
    const ours = rest.filter(jumpsToOwned);
    const inPlace = sameList(ours, want) && sameList(rest.slice(0, want.length), want);
    if (inPlace) continue;
    for (const r of ours) {
      deletes.push(`-D ${chain} ${r}`);
      jumpChanges.push(change("delete", `${where} -D ${chain} ${r}`));
    }
    want.forEach((s, i) => {
      inserts.push(`-I ${chain} ${i + 1} ${s}`);
      jumpChanges.push(change("insert", `${where} -I ${chain} ${i + 1} ${s}`));
    });
  }

  const body = [...declare, ...deletes, ...appends, ...inserts, ...removes];
  if (body.length === 0) return undefined;
  return {
    family,
    table,
    changes: [...chainChanges, ...jumpChanges, ...staleChanges],
    restore: [`*${table}`, ...body, "COMMIT", ""].join("\n"),
  };
}

const holdsOwnedState = (t: SavedTable): boolean =>
  [...t.chains.keys()].some(isOwnedChain) ||
  [...t.builtins.values()].some((rules) => rules.some(jumpsToOwned));

const byTableOrder = (a: string, b: string): number => {
  const ia = TABLE_ORDER.indexOf(a);
  const ib = TABLE_ORDER.indexOf(b);
  return (ia < 0 ? TABLE_ORDER.length : ia) - (ib < 0 ? TABLE_ORDER.length : ib) || a.localeCompare(b);
};

/**
 * The diffs of one family: every table the plan names, and every other table that holds owned
 * state (which is then removed). Tables that already match are left out.
 */
export function diffFirewall(
  family: IpFamily,
  desired: Firewall | undefined,
  actual: readonly SavedTable[],
): TableDiff[] {
  const names = new Set([
    ...(desired?.tables ?? []).map((t) => t.table),
    ...actual.filter(holdsOwnedState).map((t) => t.table),
  ]);
  return [...names]
    .sort(byTableOrder)
    .map((name) =>
      diffTable(
        family,
        name,
        desired?.tables.find((t) => t.table === name),
        actual.find((t) => t.table === name),
      ),
    )
    .filter((d): d is TableDiff => d !== undefined);
}

// ---- the backend -------------------------------------------------------------------------------

/** The line of a restore document iptables-restore names in its error, to quote it. */
function failingLine(stderr: string, doc: string): string {
  const m = /line:? (\d+)/.exec(stderr);
  const line = m ? doc.split("\n")[Number(m[1]) - 1] : undefined;
  return line ? ` [line ${m?.[1]}: ${line}]` : "";
}

export class IptablesBackend {
  constructor(
    private readonly runner: Runner,
    readonly mode: IptablesMode,
  ) {}

  /**
   * Converge every family and table to `desired`. Families and tables the plan leaves out are
   * converged to "no owned state". One restore per table that differs; none when all match.
   */
  async reconcile(
    desired: readonly Firewall[],
    opts: { readonly dryRun?: boolean } = {},
  ): Promise<BackendResult> {
    const problems = planProblems(desired);
    if (problems.length > 0)
      throw new ApplyError("iptables", `the plan cannot be applied: ${problems.join("; ")}`);
    const diffs: TableDiff[] = [];
    // Everything is read and diffed before anything is written, so an unreadable family stops
    // the reconcile before any table changed.
    for (const family of FAMILIES) {
      const fw = desired.find((f) => f.family === family);
      const saved = await this.read(family, fw !== undefined);
      if (!saved) continue;
      const blind = (fw?.tables ?? []).filter((t) => saved.incompatible.includes(t.table));
      if (blind.length > 0)
        throw new ApplyError(
          "iptables",
          `${iptablesCommand(family, this.mode, "save")} cannot decode table(s) ${blind.map((t) => t.table).join(", ")} ` +
            `(rules written with nft directly); offmesh will not write a table it cannot read`,
        );
      diffs.push(...diffFirewall(family, fw, saved.tables));
    }
    return this.apply(diffs, opts.dryRun ?? false);
  }

  /** Remove every owned chain and every jump to one, in both families and all tables. */
  cleanup(): Promise<BackendResult> {
    return this.reconcile([]);
  }

  /**
   * The family's tables, or undefined when its save command fails and nothing is planned for it
   * (no IPv6 in the kernel, say: then it cannot hold owned state either).
   */
  private async read(family: IpFamily, required: boolean): Promise<SavedDocument | undefined> {
    const cmd = iptablesCommand(family, this.mode, "save");
    const r = await this.runner.run(cmd, [], { allowFail: true });
    if (r.code !== 0) {
      if (!required) return undefined;
      throw new ApplyError("iptables", `${cmd} exited ${r.code}: ${r.stderr.trim()}`);
    }
    return parseIptablesSave(r.stdout);
  }

  private async apply(diffs: readonly TableDiff[], dryRun: boolean): Promise<BackendResult> {
    const changes: Change[] = [];
    let writes = 0;
    for (const d of diffs) {
      if (!dryRun) {
        const cmd = iptablesCommand(d.family, this.mode, "restore");
        // --wait: legacy restores replace the whole table, so they must not interleave with
        // another writer's; nft ignores it.
        const r = await this.runner.run(cmd, ["--noflush", "--wait", RESTORE_WAIT_SECONDS], {
          input: d.restore,
          allowFail: true,
        });
        if (r.code !== 0)
          throw new ApplyError(
            "iptables",
            `${cmd} --noflush of table ${d.table} (IPv${d.family}) failed, the table is unchanged: ` +
              `${r.stderr.trim() || `exit ${r.code}`}${failingLine(r.stderr, d.restore)}`,
          );
        writes++;
      }
      changes.push(...d.changes);
    }
    return { changes, writes };
  }
}
