import { execFile } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
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
function shutdownOrder(names: string[]): string[] {
  const rank = (n: string): number =>
    n.startsWith("kubelet-")
      ? 0
      : n.startsWith("pod-")
        ? 1
        : n.startsWith("ztunnel-")
          ? 2
          : n === "controlplane"
            ? 3
            : n.startsWith("agent-")
              ? 4
              : 5;
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

export async function labDown(lab: string, opts: { quiet?: boolean } = {}): Promise<LabDownResult> {
  void opts;
  const stateDir = labStateDir(lab);
  const processes = new LabProcesses(stateDir);
  const stoppedProcesses = processes.components();
  await processes.stopAll(3_000, shutdownOrder);
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
  return { stoppedProcesses, removedNamespaces, removedStateDir };
}
