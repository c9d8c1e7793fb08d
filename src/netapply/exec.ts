import { spawn } from "node:child_process";

export interface CommandResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number;
}

/** A command that exited non-zero (or could not start), with what it said. */
export class CommandError extends Error {
  constructor(
    readonly command: readonly string[],
    readonly result: CommandResult,
    readonly netns: string | undefined,
  ) {
    const where = netns ? ` (in netns ${netns})` : "";
    super(
      `${command.join(" ")}${where} exited ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`,
    );
    this.name = "CommandError";
  }
}

export interface RunOptions {
  /** Written to the command's stdin. */
  readonly input?: string;
  /** Return a non-zero result instead of throwing. */
  readonly allowFail?: boolean;
}

/**
 * Runs commands in one network namespace: the caller's own (netns undefined) or the one at a path
 * such as /var/run/netns/NAME or /proc/PID/ns/net, entered with nsenter. Every effect on the
 * kernel goes through a Runner, so tests and the lab can aim the same code at any namespace.
 */
export class Runner {
  constructor(readonly netns?: string) {}

  /** A runner for a named namespace created with `ip netns add`. */
  static forNamedNetns(name: string): Runner {
    return new Runner(`/var/run/netns/${name}`);
  }

  async run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<CommandResult> {
    const argv = this.netns ? ["nsenter", `--net=${this.netns}`, "--", cmd, ...args] : [cmd, ...args];
    const result = await spawnCollect(argv, opts.input);
    if (result.code !== 0 && !opts.allowFail) throw new CommandError([cmd, ...args], result, this.netns);
    return result;
  }
}

function spawnCollect(argv: readonly string[], input: string | undefined): Promise<CommandResult> {
  return new Promise((resolve) => {
    const [file, ...args] = argv;
    const child = spawn(file ?? "", args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, LC_ALL: "C" },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e) => resolve({ stdout: "", stderr: e.message, code: 127 }));
    child.on("close", (code, signal) =>
      resolve({
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        code: code ?? (signal ? 128 : 1),
      }),
    );
    child.stdin.on("error", () => undefined); // the command may exit before reading its input
    child.stdin.end(input ?? "");
  });
}
