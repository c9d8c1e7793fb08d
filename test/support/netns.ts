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

// scripts/test.sh sets OFFMESH_TEST_RUN so that it can remove this run's namespaces even after a
// test process crashed; a file run on its own gets a random id.
const RUN_ID = (process.env.OFFMESH_TEST_RUN ?? randomBytes(3).toString("hex")).slice(0, 8);
const created = new Set<string>();

// Registered when the module loads, i.e. at the top level of the test file that imports it: a hook
// registered inside a test would belong to that test only and miss namespaces created later.
after(() => {
  for (const ns of created) deleteNetns(ns);
});

export interface TestNetns {
  readonly name: string;
  readonly path: string;
  readonly runner: Runner;
  /** Run a command in the namespace synchronously (test assertions and setup). */
  sh(cmd: string, args: readonly string[], input?: string): string;
}

/** A namespace name unique to this run, for namespaces made by other means (a pod's, by the CNI runtime). */
export const testNetnsName = (label: string): string => `omt-${RUN_ID}-${label}`.slice(0, 40);

export function createNetns(label: string): TestNetns {
  const name = testNetnsName(label);
  execFileSync("ip", ["netns", "add", name]);
  created.add(name);
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
