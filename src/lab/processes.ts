import { spawn } from "node:child_process";
import { mkdirSync, openSync, closeSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

// The lab's processes: every component runs detached (it outlives `lab up`), inside a lab network
// namespace, with its pid in `pids/<component>.pid` and its output in `logs/<component>.log`.
// Stopping goes by pid file, and only after /proc confirms the pid is still the process the lab
// started (its environment carries OFFMESH_LAB=<this lab's state directory>) — a recycled pid is
// never signalled. The spec is kept next to the pid so `lab restart` can start it again.

export interface ComponentSpec {
  /** Unique within the lab: `agent-master`, `controlplane`, `ztunnel-master-dpu`, `pod-default-client`. */
  readonly name: string;
  /** The network namespace to run in (`ip netns exec`); undefined: the root namespace (the API server). */
  readonly netns?: string;
  readonly argv: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
}

/** Set in every lab process's environment: which lab started it. */
export const LAB_ENV = "OFFMESH_LAB";

export class LabProcessError extends Error {
  constructor(
    readonly component: string,
    message: string,
  ) {
    super(`${component}: ${message}`);
    this.name = "LabProcessError";
  }
}

export class LabProcesses {
  readonly pidDir: string;
  readonly logDir: string;

  constructor(readonly stateDir: string) {
    this.pidDir = join(stateDir, "pids");
    this.logDir = join(stateDir, "logs");
  }

  logFile(component: string): string {
    return join(this.logDir, `${component}.log`);
  }

  /** Start `spec` detached; its output is appended to its log. Returns the pid. */
  start(spec: ComponentSpec): number {
    mkdirSync(this.pidDir, { recursive: true });
    mkdirSync(this.logDir, { recursive: true });
    const running = this.pid(spec.name);
    if (running !== undefined) throw new LabProcessError(spec.name, `already running as pid ${running}`);
    const [program, ...args] = spec.netns ? ["ip", "netns", "exec", spec.netns, ...spec.argv] : spec.argv;
    if (program === undefined) throw new LabProcessError(spec.name, "no program to run");
    const log = openSync(this.logFile(spec.name), "a");
    try {
      // `ip netns exec` execs the program, so the pid is the component's own.
      const child = spawn(program, args, {
        detached: true,
        stdio: ["ignore", log, log],
        env: { ...process.env, ...spec.env, [LAB_ENV]: this.stateDir },
      });
      if (child.pid === undefined) throw new LabProcessError(spec.name, `could not start ${program}`);
      child.unref();
      writeFileSync(join(this.pidDir, `${spec.name}.json`), JSON.stringify(spec) + "\n");
      writeFileSync(join(this.pidDir, `${spec.name}.pid`), `${child.pid}\n`);
      return child.pid;
    } finally {
      closeSync(log);
    }
  }

  /** The pid of a running component the lab started, or undefined. */
  pid(component: string): number | undefined {
    let text: string;
    try {
      text = readFileSync(join(this.pidDir, `${component}.pid`), "utf8");
    } catch {
      return undefined;
    }
    const pid = Number(text.trim());
    return Number.isInteger(pid) && pid > 1 && this.owns(pid) ? pid : undefined;
  }

  /** How a component was started, for a restart. */
  specOf(component: string): ComponentSpec | undefined {
    try {
      return JSON.parse(readFileSync(join(this.pidDir, `${component}.json`), "utf8")) as ComponentSpec;
    } catch {
      return undefined;
    }
  }

  /** Stop and start again with the same spec. */
  async restart(component: string, graceMs = 5_000): Promise<number> {
    const spec = this.specOf(component);
    if (!spec) throw new LabProcessError(component, "the lab has no record of how it was started");
    await this.stop(component, graceMs, { keepSpec: true });
    return this.start(spec);
  }

  /** Components with a pid file, running or not. */
  components(): string[] {
    try {
      return readdirSync(this.pidDir)
        .filter((f) => f.endsWith(".pid"))
        .map((f) => f.slice(0, -4))
        .sort();
    } catch {
      return [];
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it is gone. Its pid file is removed. */
  async stop(component: string, graceMs = 5_000, opts: { keepSpec?: boolean } = {}): Promise<void> {
    const pid = this.pid(component);
    if (pid !== undefined) {
      signal(pid, "SIGTERM");
      const deadline = Date.now() + graceMs;
      while (alive(pid) && this.owns(pid) && Date.now() < deadline) await sleep(50);
      if (alive(pid) && this.owns(pid)) {
        signal(pid, "SIGKILL");
        while (alive(pid) && this.owns(pid)) await sleep(20);
      }
    }
    rmSync(join(this.pidDir, `${component}.pid`), { force: true });
    if (!opts.keepSpec) rmSync(join(this.pidDir, `${component}.json`), { force: true });
  }

  async stopAll(graceMs = 5_000, order: (names: string[]) => string[] = (n) => n): Promise<void> {
    for (const name of order(this.components())) await this.stop(name, graceMs);
  }

  /** Whether `pid` is a process this lab started (its environment carries the lab's marker). */
  owns(pid: number): boolean {
    try {
      return readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(`${LAB_ENV}=${this.stateDir}`);
    } catch {
      return false;
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone meanwhile
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
