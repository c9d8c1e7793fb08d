import { mkdir, open, readFile, rename, unlink, writeFile } from "node:fs/promises";
import { dirname } from "node:path";

/** Another live process holds the node's lock. */
export class LockHeldError extends Error {
  constructor(
    readonly path: string,
    readonly pid: number,
  ) {
    super(`${path} is held by process ${pid}: another offmesh agent manages this node`);
    this.name = "LockHeldError";
  }
}

/**
 * One agent per node: a pid file created exclusively. A file left by a process that no longer
 * exists (a crash) is taken over.
 */
export async function acquireLock(path: string): Promise<{ release(): Promise<void> }> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, "wx", 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return {
        release: async () => {
          const holder = await readPid(path);
          if (holder === process.pid) await unlink(path).catch(() => undefined);
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = await readPid(path);
      if (holder !== undefined && holder !== process.pid && alive(holder))
        throw new LockHeldError(path, holder);
      // Stale: move it aside atomically so two starters cannot both take it over.
      const aside = `${path}.stale-${process.pid}`;
      await writeFile(aside, "").catch(() => undefined);
      await rename(path, aside).catch(() => undefined);
      await unlink(aside).catch(() => undefined);
    }
  }
  throw new Error(`could not acquire ${path}`);
}

async function readPid(path: string): Promise<number | undefined> {
  try {
    const n = Number.parseInt((await readFile(path, "utf8")).trim(), 10);
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
