import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";

// Processes inside test namespaces, run asynchronously: the mesh's agents, control plane and relay
// live in the test process, so a synchronous child (execFileSync) that talks to them would block
// the very event loop that has to answer it. Every process runs in a process group of its own and
// is ended through that group, by its pid, never by name.

export interface ExecOptions {
  /** Written to the command's stdin. */
  readonly input?: string;
  /** The command's process group is killed after this long; default 10 s. */
  readonly timeoutMs?: number;
  /** Return a non-zero (or timed-out) result instead of throwing. */
  readonly allowFail?: boolean;
  readonly env?: Readonly<Record<string, string>>;
}

export interface ExecResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

/** A command in a namespace exited non-zero, was killed at its timeout, or could not start. */
export class NetnsExecError extends Error {
  override readonly name = "NetnsExecError";
  constructor(
    readonly netns: string,
    readonly command: readonly string[],
    readonly result: ExecResult,
  ) {
    const why = result.timedOut ? "timed out" : `exited ${result.code}`;
    super(
      `${command.join(" ")} (in netns ${netns}) ${why}: ${result.stderr.trim() || result.stdout.trim() || "no output"}`,
    );
  }
}

export const DEFAULT_EXEC_TIMEOUT_MS = 10_000;

/** A long-running process in a namespace; its output is collected as it arrives. */
export interface NetnsProcess {
  readonly pid: number;
  readonly netns: string;
  readonly command: readonly string[];
  readonly child: ChildProcess;
  /** Resolves with the exit code (null when ended by a signal) once the process has exited. */
  readonly exited: Promise<number | null>;
  stdout(): string;
  stderr(): string;
  /** Wait until stdout matches `pattern`; rejects if the process exits first or after `ms`. */
  waitForOutput(pattern: RegExp, ms?: number): Promise<RegExpMatchArray>;
  /** `signal` to the process group, then SIGKILL after `graceMs` if it has not exited. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  readonly env?: Readonly<Record<string, string>>;
}

/** The processes one owner (a mesh) started in its namespaces; `stopAll` ends those still running. */
export class NetnsProcesses {
  private readonly running = new Set<{ stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void> }>();

  /** Run a command in the namespace `netns` (a name of `ip netns`) and collect its output. */
  exec(netns: string, cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const command = [cmd, ...args];
    const proc = this.spawn(netns, cmd, args, opts.env ? { env: opts.env } : {});
    proc.child.stdin?.on("error", () => undefined); // a command may exit before reading its input
    proc.child.stdin?.end(opts.input ?? "");
    const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(proc.pid, "SIGKILL");
    }, timeoutMs);
    return proc.exited.then((code) => {
      clearTimeout(timer);
      const result: ExecResult = {
        code: code ?? 128,
        stdout: proc.stdout(),
        stderr: proc.stderr(),
        timedOut,
      };
      if ((result.code !== 0 || timedOut) && !opts.allowFail)
        throw new NetnsExecError(netns, command, result);
      return result;
    });
  }

  spawn(netns: string, cmd: string, args: readonly string[], opts: SpawnOptions = {}): NetnsProcess {
    const command = [cmd, ...args];
    const child = spawn("ip", ["netns", "exec", netns, cmd, ...args], {
      stdio: ["pipe", "pipe", "pipe"],
      detached: true, // its own process group, so a stop also ends what it started
      env: { ...process.env, ...opts.env },
    });
    let out = "";
    let err = "";
    const outputWaiters = new Set<() => void>();
    child.stdout?.on("data", (b: Buffer) => {
      out += b.toString("utf8");
      for (const w of [...outputWaiters]) w();
    });
    child.stderr?.on("data", (b: Buffer) => void (err += b.toString("utf8")));
    let hasExited = false;
    const exited = new Promise<number | null>((resolve) => {
      child.on("error", (e) => {
        err += `cannot start: ${e.message}\n`;
        hasExited = true;
        resolve(127);
      });
      child.on("close", (code) => {
        hasExited = true;
        resolve(code);
      });
    });
    const pid = child.pid ?? -1;
    const entry = {
      stop: async (signal: NodeJS.Signals = "SIGTERM", graceMs = 2_000): Promise<void> => {
        if (!hasExited) {
          killGroup(pid, signal);
          const kill = setTimeout(() => killGroup(pid, "SIGKILL"), graceMs);
          await exited;
          clearTimeout(kill);
        }
        this.running.delete(entry);
      },
    };
    this.running.add(entry);
    void exited.then(() => this.running.delete(entry));
    return {
      pid,
      netns,
      command,
      child,
      exited,
      stdout: () => out,
      stderr: () => err,
      stop: entry.stop,
      waitForOutput: (pattern, ms = 10_000) =>
        new Promise((resolve, reject) => {
          const check = (): void => {
            const m = out.match(pattern);
            if (m) finish(() => resolve(m));
          };
          let settled = false;
          const finish = (settle: () => void): void => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            outputWaiters.delete(check);
            settle();
          };
          const timer = setTimeout(
            () =>
              finish(() =>
                reject(
                  new NetnsProcessError(
                    netns,
                    command,
                    `printed nothing matching ${pattern} in ${ms} ms`,
                    err,
                  ),
                ),
              ),
            ms,
          );
          outputWaiters.add(check);
          void exited.then((code) =>
            finish(() => {
              const m = out.match(pattern);
              if (m) resolve(m);
              else
                reject(
                  new NetnsProcessError(netns, command, `exited ${code} before printing ${pattern}`, err),
                );
            }),
          );
          check();
        }),
    };
  }

  /** End every process still running (SIGKILL: this is cleanup, not a graceful shutdown). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.running].map((p) => p.stop("SIGKILL")));
  }
}

/** A long-running process did not show what was waited for. */
export class NetnsProcessError extends Error {
  override readonly name = "NetnsProcessError";
  constructor(
    readonly netns: string,
    readonly command: readonly string[],
    reason: string,
    readonly stderr: string,
  ) {
    super(
      `${command.join(" ")} (in netns ${netns}) ${reason}${stderr.trim() ? `; stderr: ${stderr.trim()}` : ""}`,
    );
  }
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  if (pid <= 0) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}
