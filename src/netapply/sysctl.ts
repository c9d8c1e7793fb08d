import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import type { Sysctl } from "../netplan/types.js";
import type { Runner } from "./exec.js";
import type { BackendResult, Change } from "./types.js";
import { ApplyError, NO_CHANGE } from "./types.js";

// Sysctls of one network namespace. Keys under /proc/sys/net belong to the namespace of the
// process that opens them, so reads and writes run through the Runner (one `sh` for all reads, one
// for all writes), never from this process. The value a key had before offmesh first changed it is
// kept in a state file, so cleanup can put it back.

/**
 * /proc/sys path of a key. Dots separate levels; a `/` inside a level stands for a dot, as in
 * sysctl(8) (`net.ipv4.conf.eth0/100.rp_filter` is the VLAN eth0.100). Keys that could leave
 * /proc/sys (empty, `.` or `..` levels) are refused.
 */
export function sysctlPath(key: string): string {
  const levels = key.split(".").map((l) => l.replaceAll("/", "."));
  if (levels.some((l) => l === "" || l === "." || l === "..") || !/^[\w.\-/:@]+$/.test(key)) {
    throw new ApplyError("sysctl", `"${key}" is not a sysctl key`);
  }
  return `/proc/sys/${levels.join("/")}`;
}

/** Multi-field values (tcp_rmem) read back tab-separated and may be written space-separated. */
export function normalizeValue(v: string): string {
  return v.trim().split(/\s+/).join(" ");
}

// Each value is printed as "+value" or "-" (unreadable), NUL-terminated, in argument order.
const READ_SCRIPT = `for p do if v=$(cat -- "$p" 2>/dev/null); then printf '+%s\\0' "$v"; else printf -- '-\\0'; fi; done`;
const WRITE_SCRIPT = `while [ $# -gt 1 ]; do printf '%s\\n' "$2" > "$1" || { printf 'cannot write %s\\n' "$1" >&2; exit 1; }; shift 2; done`;

/** The read script's output: key → value, or undefined for a key that does not exist here. */
export function parseReadOutput(stdout: string, keys: readonly string[]): Map<string, string | undefined> {
  const fields = stdout.split("\0");
  const out = new Map<string, string | undefined>();
  keys.forEach((k, i) => {
    const f = fields[i];
    out.set(k, f !== undefined && f.startsWith("+") ? f.slice(1) : undefined);
  });
  return out;
}

export interface SysctlState {
  readonly version: 1;
  /** The value each key had before offmesh first wrote it, as read. */
  readonly originals: Readonly<Record<string, string>>;
}

export function parseState(text: string, file: string): SysctlState {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new ApplyError(
      "sysctl",
      `state file ${file} is not JSON; left as it is, it may hold original values`,
      e,
    );
  }
  const originals = (parsed as { originals?: unknown } | null)?.originals;
  if (
    typeof originals !== "object" ||
    originals === null ||
    Object.values(originals).some((v) => typeof v !== "string")
  ) {
    throw new ApplyError("sysctl", `state file ${file} has no "originals" map of strings; left as it is`);
  }
  return { version: 1, originals: originals as Record<string, string> };
}

export class SysctlBackend {
  constructor(
    private readonly runner: Runner,
    private readonly stateFile: string,
  ) {}

  /**
   * Set every key to its planned value. A key that does not exist (an interface that is not
   * there yet) fails the whole step before anything is written. Originals are on disk before the
   * first write, so a crash between the two loses nothing.
   */
  async reconcile(
    desired: readonly Sysctl[],
    opts: { readonly dryRun?: boolean } = {},
  ): Promise<BackendResult> {
    const want = new Map<string, string>();
    for (const s of desired) {
      const other = want.get(s.key);
      if (other !== undefined && normalizeValue(other) !== normalizeValue(s.value)) {
        throw new ApplyError("sysctl", `${s.key} is planned as both "${other}" and "${s.value}"`);
      }
      want.set(s.key, s.value);
    }
    if (want.size === 0) return NO_CHANGE;
    const current = await this.read([...want.keys()]);
    const missing = [...want.keys()].filter((k) => current.get(k) === undefined);
    if (missing.length > 0) {
      throw new ApplyError(
        "sysctl",
        `${missing.join(", ")} ${missing.length === 1 ? "does" : "do"} not exist${this.where()}`,
      );
    }
    const todo = [...want].filter(([k, v]) => normalizeValue(current.get(k) ?? "") !== normalizeValue(v));
    const changes: Change[] = todo.map(([k, v]) => ({
      backend: "sysctl",
      action: "set",
      detail: `${k} = ${v} (was ${normalizeValue(current.get(k) ?? "")})`,
    }));
    if (todo.length === 0 || opts.dryRun) return { changes, writes: 0 };
    const state = await this.loadState();
    const originals = { ...(state?.originals ?? {}) };
    let recorded = false;
    for (const [k] of todo) {
      if (k in originals) continue;
      originals[k] = current.get(k) ?? "";
      recorded = true;
    }
    if (recorded) await this.saveState({ version: 1, originals });
    await this.write(todo);
    return { changes, writes: 1 };
  }

  /**
   * Put back every recorded original (keys that no longer exist, such as those of deleted
   * links, are skipped) and remove the state file.
   */
  async cleanup(opts: { readonly dryRun?: boolean } = {}): Promise<BackendResult> {
    const state = await this.loadState();
    if (!state) return NO_CHANGE;
    const keys = Object.keys(state.originals);
    const current = keys.length > 0 ? await this.read(keys) : new Map<string, string | undefined>();
    const todo = keys.flatMap((k): [string, string][] => {
      const now = current.get(k);
      const was = state.originals[k] ?? "";
      return now !== undefined && normalizeValue(now) !== normalizeValue(was) ? [[k, was]] : [];
    });
    const changes: Change[] = todo.map(([k, v]) => ({
      backend: "sysctl",
      action: "restore",
      detail: `${k} = ${normalizeValue(v)}`,
    }));
    if (opts.dryRun) return { changes, writes: 0 };
    if (todo.length > 0) await this.write(todo);
    await rm(this.stateFile, { force: true });
    return { changes, writes: todo.length > 0 ? 1 : 0 };
  }

  private where(): string {
    return this.runner.netns ? ` in netns ${this.runner.netns}` : "";
  }

  private async read(keys: readonly string[]): Promise<Map<string, string | undefined>> {
    const paths = keys.map(sysctlPath);
    const result = await this.runner.run("sh", ["-c", READ_SCRIPT, "sh", ...paths], { allowFail: true });
    if (result.code !== 0) {
      throw new ApplyError(
        "sysctl",
        `reading ${keys.join(", ")}${this.where()} failed: ${result.stderr.trim()}`,
      );
    }
    return parseReadOutput(result.stdout, keys);
  }

  private async write(entries: readonly (readonly [string, string])[]): Promise<void> {
    const args = entries.flatMap(([k, v]) => [sysctlPath(k), v]);
    const result = await this.runner.run("sh", ["-c", WRITE_SCRIPT, "sh", ...args], { allowFail: true });
    if (result.code === 0) return;
    const path = /cannot write (\S+)/.exec(result.stderr)?.[1];
    const entry = entries.find(([k]) => sysctlPath(k) === path);
    const what = entry ? `${entry[0]} = ${entry[1]}` : entries.map(([k]) => k).join(", ");
    throw new ApplyError(
      "sysctl",
      `writing ${what}${this.where()} failed (keys before it were written): ${result.stderr.trim()}`,
    );
  }

  private async loadState(): Promise<SysctlState | undefined> {
    let text: string;
    try {
      text = await readFile(this.stateFile, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new ApplyError("sysctl", `cannot read state file ${this.stateFile}`, e);
    }
    return parseState(text, this.stateFile);
  }

  /** tmp + fsync + rename: the file holds either the old or the new originals, never half of them. */
  private async saveState(state: SysctlState): Promise<void> {
    await mkdir(dirname(this.stateFile), { recursive: true });
    const tmp = `${this.stateFile}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
    try {
      const handle = await open(tmp, "w", 0o600);
      try {
        await handle.writeFile(JSON.stringify(state, null, 2) + "\n");
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(tmp, this.stateFile);
    } catch (e) {
      await rm(tmp, { force: true });
      throw new ApplyError("sysctl", `cannot write state file ${this.stateFile}`, e);
    }
  }
}
