import { execFile } from "node:child_process";
import { existsSync, rmdirSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import { promisify } from "node:util";
import { labStateDir } from "./names.js";
import { destroyLabNetwork, listLabNamespaces } from "./netns.js";
import { LabProcesses } from "./processes.js";

// `offmesh lab down`: everything the lab made goes, also after a crash and when run twice —
// processes (kubelets first, so nothing is restarted behind our back; the API server last), then
// any process still inside a lab namespace, then the namespaces, then the state directory.

const run = promisify(execFile);

export interface LabDownResult {
  readonly stoppedProcesses: string[];
  readonly removedNamespaces: string[];
  readonly removedStateDir: boolean;
}

/** Order of shutdown: whoever restarts others first, the API they all watch last. */
function shutdownRank(n: string): number {
  if (n.startsWith("kubelet-")) return 0;
  if (n.startsWith("pod-")) return 1;
  if (n.startsWith("ztunnel-")) return 2;
  if (n === "controlplane") return 3;
  if (n.startsWith("agent-")) return 4;
  return 5;
}

/**
 * Stop every component rank by rank, the components of one rank together: each ztunnel waits
 * out the grace period (its peers keep HBONE connections open while it drains), once for all.
 */
async function stopInOrder(processes: LabProcesses, graceMs: number): Promise<void> {
  const byRank = new Map<number, string[]>();
  for (const name of processes.components()) {
    const rank = shutdownRank(name);
    byRank.set(rank, [...(byRank.get(rank) ?? []), name]);
  }
  for (const rank of [...byRank.keys()].sort((a, b) => a - b))
    await Promise.all((byRank.get(rank) ?? []).map((name) => processes.stop(name, graceMs)));
}

export async function labDown(lab: string): Promise<LabDownResult> {
  const stateDir = labStateDir(lab);
  const processes = new LabProcesses(stateDir);
  const stoppedProcesses = processes.components();
  await stopInOrder(processes, 3_000);
  // A crash may have left processes without pid files: anything still running inside one of the
  // lab's namespaces was started by the lab.
  for (const ns of await listLabNamespaces(lab)) {
    const pids = await run("ip", ["netns", "pids", ns]).then(
      (r) => r.stdout.split(/\s+/).filter(Boolean).map(Number),
      () => [] as number[],
    );
    for (const pid of pids) {
      if (!processes.owns(pid)) continue;
      try {
        process.kill(pid, "SIGKILL");
        stoppedProcesses.push(`pid ${pid} in ${ns}`);
      } catch {
        // gone
      }
    }
  }
  const removedNamespaces = await destroyLabNetwork(lab);
  const removedStateDir = existsSync(stateDir);
  rmSync(stateDir, { recursive: true, force: true });
  // The root all labs' state directories live in goes with the last of them.
  removeDirIfEmpty(dirname(stateDir));
  return { stoppedProcesses, removedNamespaces, removedStateDir };
}

/** Removes `dir` when it exists and is empty; a directory with entries (another lab's) stays. */
export function removeDirIfEmpty(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOTEMPTY" || code === "EEXIST" || code === "ENOENT") return false;
    throw err;
  }
}
