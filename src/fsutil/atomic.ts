import { randomBytes } from "node:crypto";
import { link, open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

// Writing files so that a reader (or a crash) never sees half of one. The temporary name starts
// with a dot and ends in `.tmp`: CNI runtimes load every *.conf/*.conflist/*.json in their
// directory, and must not pick up a file being written.

async function writeTemp(path: string, content: string, mode: number): Promise<string> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const file = await open(tmp, "wx", mode);
  try {
    await file.writeFile(content, "utf8");
    await file.sync();
  } finally {
    await file.close();
  }
  return tmp;
}

async function syncDir(path: string): Promise<void> {
  const dir = await open(dirname(path), "r");
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Replace `path` with `content` in one rename (atomic within the directory's filesystem). */
export async function writeFileAtomic(path: string, content: string, mode: number): Promise<void> {
  let tmp: string | undefined;
  try {
    tmp = await writeTemp(path, content, mode);
    await rename(tmp, path);
  } catch (err) {
    if (tmp) await rm(tmp, { force: true });
    throw err;
  }
  // Persist the rename itself; a crash right after must not bring back the old file.
  await syncDir(path);
}

/**
 * Create `path` with `content`, atomically and never over an existing file: the temporary file is
 * hard-linked to `path`, which (unlike rename) fails with EEXIST if another process created it
 * first. Errors are thrown as they come; callers word them.
 */
export async function writeNewFile(path: string, content: string, mode: number): Promise<void> {
  let tmp: string | undefined;
  try {
    tmp = await writeTemp(path, content, mode);
    await link(tmp, path);
    await syncDir(path);
  } finally {
    if (tmp) await rm(tmp, { force: true });
  }
}
