import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { after } from "node:test";
import { Runner } from "../../src/netapply/exec.js";

// Network namespaces for kernel tests. Names are unique per run ("omt-<random>-<label>") and every
// namespace a test file creates is deleted when the file's tests end, pass or fail.

export const isRoot = typeof process.getuid === "function" && process.getuid() === 0;

/** `{ skip: reason }` for node:test when the kernel tests cannot run here. */
export const rootOnly: { skip: string | false } = {
  skip: isRoot ? false : "needs root to create network namespaces (run the suite as root)",
};

const RUN_ID = randomBytes(3).toString("hex");
const created = new Set<string>();
let hooked = false;

export interface TestNetns {
  readonly name: string;
  readonly path: string;
  readonly runner: Runner;
  /** Run a command in the namespace synchronously (test assertions and setup). */
  sh(cmd: string, args: readonly string[], input?: string): string;
}

export function createNetns(label: string): TestNetns {
  const name = `omt-${RUN_ID}-${label}`.slice(0, 40);
  execFileSync("ip", ["netns", "add", name]);
  created.add(name);
  if (!hooked) {
    hooked = true;
    after(() => {
      for (const ns of created) deleteNetns(ns);
    });
  }
  execFileSync("ip", ["netns", "exec", name, "ip", "link", "set", "lo", "up"]);
  const path = `/var/run/netns/${name}`;
  return {
    name,
    path,
    runner: new Runner(path),
    sh: (cmd, args, input) =>
      execFileSync("ip", ["netns", "exec", name, cmd, ...args], { encoding: "utf8", input: input ?? "" }),
  };
}

export function deleteNetns(name: string): void {
  try {
    execFileSync("ip", ["netns", "del", name], { stdio: "ignore" });
  } catch {
    // already gone
  }
  created.delete(name);
}
