import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { CniConflist } from "../netplan/types.js";

export const DEFAULT_CONFLIST_FILE = "10-offmesh.conflist";

/**
 * Install the node's conflist in the runtime's CNI configuration directory. Writes only when the
 * content differs, so an unchanged plan does not make the runtime reload its configuration, and
 * atomically, so the runtime never reads half a file. Returns whether the file changed.
 */
export async function installConflist(
  dir: string,
  conflist: CniConflist,
  fileName: string = DEFAULT_CONFLIST_FILE,
): Promise<boolean> {
  if (fileName !== basename(fileName) || fileName.startsWith("."))
    throw new Error(`conflist file name "${fileName}" must be a plain file name`);
  const path = join(dir, fileName);
  const text = formatConflist(conflist);
  let current: string | undefined;
  try {
    current = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (current === text) return false;
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await writeFileAtomic(path, text, 0o644);
  return true;
}

/**
 * The conflist as JSON, stable for equal content: `cniVersion`, `name`, `type` first (as people
 * write them), then the other keys in alphabetical order, at every level; two-space indent.
 */
export function formatConflist(conflist: CniConflist): string {
  return JSON.stringify(canonical(conflist), null, 2) + "\n";
}

const LEADING_KEYS = ["cniVersion", "name", "type"];

function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (typeof value !== "object" || value === null) return value;
  const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
  const rank = (k: string): number => {
    const i = LEADING_KEYS.indexOf(k);
    return i < 0 ? LEADING_KEYS.length : i;
  };
  entries.sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  return Object.fromEntries(entries.map(([k, v]) => [k, canonical(v)]));
}

/**
 * Replace `path` with `content` in one rename: a temporary file in the same directory (rename is
 * atomic only within a filesystem), flushed before the rename. The temporary name starts with a
 * dot and ends in `.tmp` because runtimes load every `*.conf`/`*.conflist`/`*.json` they see in the
 * directory.
 */
export async function writeFileAtomic(path: string, content: string, mode: number): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    const file = await open(tmp, "wx", mode);
    try {
      await file.writeFile(content, "utf8");
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  // Persist the rename itself; a crash right after must not bring back the old file.
  const parent = await open(dirname(path), "r");
  try {
    await parent.sync();
  } finally {
    await parent.close();
  }
}
