import { mkdir, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
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

import { writeFileAtomic } from "../fsutil/atomic.js";
export { writeFileAtomic };
