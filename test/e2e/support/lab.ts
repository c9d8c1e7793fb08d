import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { after, before } from "node:test";
import { promisify } from "node:util";
import { labStateDir } from "../../../src/lab/names.js";
import { LabProcesses } from "../../../src/lab/processes.js";
import { AccessLogReader } from "../../../src/lab/verify-access.js";
import { loadLabView } from "../../../src/lab/verify-cast.js";
import type { LabPodView, LabView } from "../../../src/lab/verify-cast.js";
import { fromRoot } from "../../support/paths.js";
import { testNetnsName } from "../../support/netns.js";

// One lab per end-to-end test file, brought up with the real command and brought down in `after`
// whatever happened. Its name derives from the test run's id (scripts/test.sh sets it), so the
// runner can find and remove the labs of a run that crashed: `omt<first 4 of the run id><tag>`.

const run = promisify(execFile);

/** The run id of test/support/netns.ts (its namespaces are `omt-<run>-<label>`). */
const RUN_ID = testNetnsName("x").split("-")[1] ?? randomBytes(2).toString("hex");

/** `omt` + 4 characters of the run id + the file's one-character tag: 8 characters, [a-z0-9]. */
export function e2eLabName(tag: string): string {
  assert.match(tag, /^[a-z0-9]$/, "a lab tag is one lower-case letter or digit");
  return `omt${RUN_ID.slice(0, 4)}${tag}`;
}

export const OFFMESH = fromRoot("bin", "offmesh");

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** `offmesh <args>` as a user runs it; never throws on a non-zero exit. */
export async function offmesh(args: readonly string[], timeoutMs = 60_000): Promise<CliResult> {
  try {
    const r = await run(process.execPath, [OFFMESH, ...args], {
      timeout: timeoutMs,
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; message: string };
    return {
      code: typeof e.code === "number" ? e.code : -1,
      stdout: e.stdout ?? "",
      stderr: e.stderr ?? e.message,
    };
  }
}

export async function labUpCli(name: string): Promise<void> {
  const r = await offmesh(["lab", "up", "--name", name], 180_000);
  assert.equal(r.code, 0, `offmesh lab up --name ${name} failed:\n${r.stderr}\n${r.stdout}`);
}

export async function labDownCli(name: string): Promise<CliResult> {
  return offmesh(["lab", "down", "--name", name], 60_000);
}

export interface E2eLab {
  readonly name: string;
  readonly stateDir: string;
  readonly processes: LabProcesses;
  /** Reads the ztunnels' access logs since a mark. */
  readonly logs: AccessLogReader;
  /** The lab as the API shows it now. */
  view(): Promise<LabView>;
}

/**
 * The file's lab: up before its tests (after `beforeUp`), down after them even when they fail.
 * Call at the top level of a test file.
 */
export function useLab(tag: string, opts: { beforeUp?: () => Promise<void> } = {}): E2eLab {
  const name = e2eLabName(tag);
  const stateDir = labStateDir(name);
  before(
    async () => {
      await opts.beforeUp?.();
      await labUpCli(name);
    },
    { timeout: 240_000 },
  );
  after(
    async () => {
      await labDownCli(name);
    },
    { timeout: 90_000 },
  );
  const processes = new LabProcesses(stateDir);
  return {
    name,
    stateDir,
    processes,
    logs: new AccessLogReader((c) => processes.logFile(c)),
    view: () => loadLabView(name),
  };
}

export function podOf(view: LabView, ref: string): LabPodView {
  const p = view.pods.find((x) => x.ref === ref);
  assert.ok(p, `lab ${view.lab} has no running pod ${ref} (pods: ${view.pods.map((x) => x.ref).join(", ")})`);
  return p;
}

/** A payload unique to this run, to look for on the wire. */
export const markerFor = (what: string): string =>
  `omt-e2e-${randomBytes(4).toString("hex")}-${what}-plaintext`;

/**
 * Try `attempt` until it returns a value (not undefined), at most `ms`; then fail naming `what`
 * and the last value it saw through `describe`.
 */
export async function eventually<T>(
  what: string,
  attempt: () => Promise<T | undefined>,
  ms = 20_000,
  pauseMs = 200,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const got = await attempt();
    if (got !== undefined) return got;
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, pauseMs));
  }
}
