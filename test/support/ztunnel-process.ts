import { mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { httpInNetns as labHttpInNetns } from "../../src/lab/probe.js";
import type { MeshNet, MeshPod } from "./meshnet.js";
import type { NetnsProcess } from "./meshnet-process.js";
import { fromRoot } from "./paths.js";

// A ztunnel as a user runs it: `offmesh ztunnel run` as a child process entered into a ztunnel
// pod's network namespace (`ip netns exec` execs node, so the child's pid is node's). Its HTTP
// endpoints listen inside that namespace, so they are reached with sockets created there
// (connectTcp with netnsPath) rather than through any address of the test's own namespace. The
// control plane lives in the test process: every wait here is asynchronous.

/** The `offmesh` command; run with this process's node so NODE_OPTIONS and the version match. */
export const OFFMESH_BIN = fromRoot("bin/offmesh");

/** Upstream's ports of the ztunnel's HTTP endpoints (the CLI's defaults). */
export const ZTUNNEL_HTTP_PORTS = { admin: 15000, metrics: 15020, readiness: 15021 } as const;

export type LogLine = Record<string, unknown>;

export interface ZtunnelRunFiles {
  readonly rootCert: string;
  readonly tokenFile: string;
}

/** The `ztunnel run` flags for the ztunnel pod `pod` of `mesh`, with extra flags appended. */
export function ztunnelRunArgs(
  mesh: MeshNet,
  pod: MeshPod,
  files: ZtunnelRunFiles,
  extra: readonly string[] = [],
): string[] {
  return [
    "ztunnel",
    "run",
    "--xds-address",
    mesh.controlPlaneAddress,
    "--root-cert",
    files.rootCert,
    "--token-file",
    files.tokenFile,
    "--node",
    pod.node,
    "--pod-name",
    pod.name,
    "--pod-namespace",
    pod.namespace,
    "--pod-ip",
    pod.ip,
    "--trust-domain",
    mesh.trustDomain,
    ...extra,
  ];
}

export interface ZtunnelProcessOptions {
  /** pino level of the process; default "info" (the access log is written at info). */
  readonly logLevel?: string;
  /** `--drain-seconds`; default 10. */
  readonly drainSeconds?: number;
  /** More `ztunnel run` flags. */
  readonly extraArgs?: readonly string[];
  /** node's own flags, before the script (e.g. --cpu-prof, which NODE_OPTIONS may not carry). */
  readonly nodeArgs?: readonly string[];
  /** Added to the child's environment. */
  readonly env?: Readonly<Record<string, string>>;
  /** Bound of the wait for /healthz/ready; default 30 s. */
  readonly readyTimeoutMs?: number;
  /** Lifetime of the proxy token written to the token file; default 1 h. */
  readonly tokenTtlSeconds?: number;
}

export interface HttpAnswer {
  readonly status: number;
  readonly body: string;
}

export interface ZtunnelProcess {
  readonly node: string;
  readonly pod: MeshPod;
  /** The node process's pid (checked to be node once ready). */
  readonly pid: number;
  readonly command: readonly string[];
  /** The temporary directory holding the root certificate and the token file. */
  readonly dir: string;
  /** Resolves with the exit code (null when ended by a signal). */
  readonly exited: Promise<number | null>;
  /** undefined while running. */
  exitCode(): number | null | undefined;
  stderr(): string;
  /** What the process printed on stdout (the CLI prints nothing there; node's --trace-* flags do). */
  stdout(): string;
  /** Every JSON line the process logged so far (pino writes to stderr). */
  logLines(): LogLine[];
  /** The access-log lines (`target: "access"`) so far. */
  accessLog(): LogLine[];
  /** The first access-log line whose fields equal every one of `fields`, waiting up to `ms`. */
  waitForAccessLog(fields: LogLine, ms?: number): Promise<LogLine>;
  /** The first log line (any) matching `fields`, waiting up to `ms`. */
  waitForLog(fields: LogLine, ms?: number): Promise<LogLine>;
  /** VmRSS of the process, in KiB. */
  rssKb(): number;
  /** The soft RLIMIT_NOFILE of the process. */
  openFilesLimit(): number;
  /** An HTTP request to 127.0.0.1:`port` inside the pod's namespace. */
  http(port: number, path: string, method?: string): Promise<HttpAnswer>;
  /** GET /metrics on the Prometheus port. */
  metrics(): Promise<string>;
  /** GET /config_dump on the admin port, parsed. */
  configDump(): Promise<Record<string, unknown>>;
  /** POST /quitquitquit on the admin port: the process drains and exits. */
  quit(): Promise<HttpAnswer>;
  /** SIGTERM (a graceful drain), SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/** The process did not start, become ready, or is not what it should be. */
export class ZtunnelProcessError extends Error {
  override readonly name = "ZtunnelProcessError";
  constructor(
    readonly node: string,
    reason: string,
    readonly stderr = "",
  ) {
    super(`ztunnel process on ${node}: ${reason}${stderr.trim() ? `; stderr (tail): ${tail(stderr)}` : ""}`);
  }
}

const tail = (text: string, max = 2_000): string => {
  const t = text.trim();
  return t.length <= max ? t : `…${t.slice(t.length - max)}`;
};

// Processes still running when the importing file ends are killed and their files removed, so a
// test that failed before `stop` leaves nothing behind. Registered at import, like netns.ts.
const live = new Set<{ kill: () => Promise<void> }>();
after(async () => {
  for (const p of [...live]) await p.kill();
});

/**
 * Start `offmesh ztunnel run` in the namespace of the ztunnel pod of `node` and wait (bounded)
 * until its readiness endpoint answers 200.
 */
export async function startZtunnelProcess(
  mesh: MeshNet,
  node: string,
  opts: ZtunnelProcessOptions = {},
): Promise<ZtunnelProcess> {
  const pod = mesh.ztunnelOn(node);
  const dir = mkdtempSync(join(tmpdir(), `offmesh-ztp-${node}-`));
  const files: ZtunnelRunFiles = { rootCert: join(dir, "root-cert.pem"), tokenFile: join(dir, "token") };
  writeFileSync(files.rootCert, mesh.rootCaPem);
  writeFileSync(files.tokenFile, mesh.tokenFor(pod.name, opts.tokenTtlSeconds ?? 3600), { mode: 0o600 });
  const args = [
    ...(opts.nodeArgs ?? []),
    OFFMESH_BIN,
    ...ztunnelRunArgs(mesh, pod, files, [
      "--log-level",
      opts.logLevel ?? "info",
      "--drain-seconds",
      String(opts.drainSeconds ?? 10),
      ...(opts.extraArgs ?? []),
    ]),
  ];
  const proc = mesh.spawn(pod.name, process.execPath, args, opts.env ? { env: opts.env } : {});
  const zt = new RunningZtunnelProcess(node, pod, proc, dir);
  live.add(zt);
  try {
    await zt.waitReady(opts.readyTimeoutMs ?? 30_000);
    zt.checkIsNode();
  } catch (err) {
    await zt.kill();
    throw err;
  }
  return zt;
}

/** One request inside the namespace; a failure to get an answer rejects (tests want to see it). */
export async function httpInNetns(
  netnsPath: string,
  port: number,
  path: string,
  method = "GET",
  timeoutMs = 5_000,
): Promise<HttpAnswer> {
  const res = await labHttpInNetns(netnsPath, port, path, { method, timeoutMs });
  if (res.status === undefined)
    throw new Error(`${method} ${path} on port ${port}: ${res.error ?? "no answer"}`);
  return { status: res.status, body: res.body ?? "" };
}

class RunningZtunnelProcess implements ZtunnelProcess {
  readonly pid: number;
  readonly command: readonly string[];
  readonly exited: Promise<number | null>;
  private readonly lines: LogLine[] = [];
  private partial = "";
  private code: number | null | undefined;

  constructor(
    readonly node: string,
    readonly pod: MeshPod,
    private readonly proc: NetnsProcess,
    readonly dir: string,
  ) {
    this.pid = proc.pid;
    this.command = proc.command;
    proc.child.stderr?.on("data", (b: Buffer) => this.take(b.toString("utf8")));
    this.exited = proc.exited.then((code) => {
      this.code = code;
      this.take("\n"); // a last line without its newline
      rmSync(this.dir, { recursive: true, force: true });
      live.delete(this);
      return code;
    });
  }

  private take(text: string): void {
    const chunks = (this.partial + text).split("\n");
    this.partial = chunks.pop() ?? "";
    for (const line of chunks) {
      if (!line.startsWith("{")) continue; // the CLI's one plain start line
      try {
        this.lines.push(JSON.parse(line) as LogLine);
      } catch {
        // not pino's: nothing to index
      }
    }
  }

  exitCode(): number | null | undefined {
    return this.code;
  }

  stderr(): string {
    return this.proc.stderr();
  }

  stdout(): string {
    return this.proc.stdout();
  }

  logLines(): LogLine[] {
    return [...this.lines];
  }

  accessLog(): LogLine[] {
    return this.lines.filter((l) => l["target"] === "access");
  }

  waitForAccessLog(fields: LogLine, ms = 5_000): Promise<LogLine> {
    return this.waitFor({ target: "access", ...fields }, ms);
  }

  waitForLog(fields: LogLine, ms = 5_000): Promise<LogLine> {
    return this.waitFor(fields, ms);
  }

  private async waitFor(fields: LogLine, ms: number): Promise<LogLine> {
    const matches = (l: LogLine): boolean => Object.entries(fields).every(([k, v]) => l[k] === v);
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.lines.find(matches);
      if (found) return found;
      if (Date.now() > deadline)
        throw new ZtunnelProcessError(this.node, `logged no line with ${JSON.stringify(fields)} in ${ms} ms`);
      await sleep(20);
    }
  }

  private procFile(name: string): string {
    try {
      return readFileSync(`/proc/${this.pid}/${name}`, "utf8");
    } catch (err) {
      throw new ZtunnelProcessError(
        this.node,
        `cannot read /proc/${this.pid}/${name}: ${(err as Error).message}`,
      );
    }
  }

  rssKb(): number {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(this.procFile("status"));
    if (!m?.[1]) throw new ZtunnelProcessError(this.node, `no VmRSS in /proc/${this.pid}/status`);
    return Number(m[1]);
  }

  openFilesLimit(): number {
    const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(this.procFile("limits"));
    if (!m?.[1]) throw new ZtunnelProcessError(this.node, `no open-files limit in /proc/${this.pid}/limits`);
    return m[1] === "unlimited" ? Infinity : Number(m[1]);
  }

  /** `ip netns exec` replaces itself with node: the pid we hold must now run node's binary. */
  checkIsNode(): void {
    let exe: string;
    try {
      exe = readlinkSync(`/proc/${this.pid}/exe`);
    } catch (err) {
      throw new ZtunnelProcessError(
        this.node,
        `pid ${this.pid} is gone: ${(err as Error).message}`,
        this.stderr(),
      );
    }
    if (exe !== realpathSync(process.execPath))
      throw new ZtunnelProcessError(this.node, `pid ${this.pid} runs ${exe}, not node (${process.execPath})`);
  }

  http(port: number, path: string, method = "GET"): Promise<HttpAnswer> {
    return httpInNetns(this.pod.netnsPath, port, path, method);
  }

  async metrics(): Promise<string> {
    const res = await this.http(ZTUNNEL_HTTP_PORTS.metrics, "/metrics");
    if (res.status !== 200)
      throw new ZtunnelProcessError(this.node, `/metrics answered ${res.status}: ${res.body}`);
    return res.body;
  }

  async configDump(): Promise<Record<string, unknown>> {
    const res = await this.http(ZTUNNEL_HTTP_PORTS.admin, "/config_dump");
    if (res.status !== 200)
      throw new ZtunnelProcessError(this.node, `/config_dump answered ${res.status}: ${res.body}`);
    return JSON.parse(res.body) as Record<string, unknown>;
  }

  quit(): Promise<HttpAnswer> {
    return this.http(ZTUNNEL_HTTP_PORTS.admin, "/quitquitquit", "POST");
  }

  /** Poll readiness until 200; fail early when the process exits. */
  async waitReady(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    let last: string;
    for (;;) {
      if (this.code !== undefined)
        throw new ZtunnelProcessError(this.node, `exited ${this.code} before it was ready`, this.stderr());
      try {
        const res = await this.http(ZTUNNEL_HTTP_PORTS.readiness, "/healthz/ready");
        if (res.status === 200) return;
        last = `${res.status} ${res.body.trim()}`;
      } catch (err) {
        last = (err as Error).message; // not listening yet
      }
      if (Date.now() > deadline)
        throw new ZtunnelProcessError(this.node, `not ready after ${ms} ms (last: ${last})`, this.stderr());
      await sleep(50);
    }
  }

  async stop(graceMs = 15_000): Promise<number | null> {
    if (this.code === undefined) {
      signal(this.pid, "SIGTERM");
      const kill = setTimeout(() => signal(this.pid, "SIGKILL"), graceMs);
      try {
        await this.exited;
      } finally {
        clearTimeout(kill);
      }
    }
    return this.exited;
  }

  /** Cleanup: SIGKILL now. */
  async kill(): Promise<void> {
    if (this.code === undefined) signal(this.pid, "SIGKILL");
    await this.exited;
  }
}

/** Signal exactly this pid (never a group or a name); a process already gone is fine. */
function signal(pid: number, sig: NodeJS.Signals): void {
  if (pid <= 0) return;
  try {
    process.kill(pid, sig);
  } catch {
    // already exited
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
