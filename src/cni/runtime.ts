import { spawn } from "node:child_process";
import { constants as fsConstants } from "node:fs";
import { access, mkdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Runner } from "../netapply/exec.js";
import type { CniConflist } from "../netplan/types.js";
import { writeFileAtomic } from "./conflist-install.js";

// A small CNI runtime: runs a conflist's plugins the way libcni does for a container runtime, so
// the lab and the tests wire pods with the real reference plugins and the real `offmesh-cni`.

export type CniCommand = "ADD" | "DEL" | "CHECK" | "VERSION";

/** A conflist as the runtime reads it; `disableCheck` skips CHECK as libcni does. */
export type RuntimeConflist = CniConflist & { readonly disableCheck?: boolean };

export interface CniInterface {
  readonly name: string;
  readonly mac?: string;
  readonly mtu?: number;
  /** Set for interfaces inside the container's namespace. */
  readonly sandbox?: string;
}

export interface CniIpConfig {
  readonly address: string;
  readonly gateway?: string;
  /** Index into `interfaces`. */
  readonly interface?: number;
  /** 0.4.0 results only. */
  readonly version?: "4" | "6";
}

export interface CniRoute {
  readonly dst: string;
  readonly gw?: string;
}

/** An ADD result (0.4.0 and 1.0.0 share these fields). */
export interface CniResult {
  readonly cniVersion: string;
  readonly interfaces?: readonly CniInterface[];
  readonly ips?: readonly CniIpConfig[];
  readonly routes?: readonly CniRoute[];
  readonly dns?: Readonly<Record<string, unknown>>;
}

export interface CniVersionInfo {
  readonly cniVersion: string;
  readonly supportedVersions: readonly string[];
}

/** One attachment of a container to the network (libcni's RuntimeConf). */
export interface CniAttachment {
  readonly containerId: string;
  /** Path of the pod's network namespace, e.g. /var/run/netns/NAME. */
  readonly netns: string;
  readonly ifName: string;
  /** CNI_ARGS pairs, in order (see kubernetesCniArgs). */
  readonly args?: Readonly<Record<string, string>>;
  /**
   * Values for plugins that declare `capabilities`, e.g. `{ portMappings: [...] }`. On DEL and CHECK
   * the values cached at ADD are used when none are given, so portmap can remove its rules.
   */
  readonly capabilityArgs?: Readonly<Record<string, unknown>>;
}

export interface CniRuntimeOptions {
  /** Directories searched for plugin binaries, in order (CNI_PATH). */
  readonly cniPath: readonly string[];
  /** Where ADD results are kept for DEL and CHECK (libcni: /var/lib/cni/results). */
  readonly cacheDir: string;
  /** The node's network namespace (path); plugins run there. Default: the caller's own. */
  readonly hostNetns?: string;
  /** Limit of one plugin execution; the plugin's process group is killed after it. */
  readonly timeoutMs?: number;
}

export const DEFAULT_PLUGIN_TIMEOUT_MS = 30_000;

/** Base of the runtime's errors. `rollbackError`: the cleanup DEL after a failed ADD failed too. */
export abstract class CniRuntimeError extends Error {
  rollbackError: Error | undefined;
}

/** A plugin answered with a CNI error. */
export class CniPluginError extends CniRuntimeError {
  constructor(
    readonly command: CniCommand,
    readonly plugin: string,
    readonly code: number,
    readonly msg: string,
    readonly details: string | undefined,
    readonly stderr: string,
  ) {
    super(`${plugin} ${command} failed with CNI error ${code}: ${msg}${details ? ` (${details})` : ""}`);
    this.name = "CniPluginError";
  }
}

export type CniExecFailure = "not-found" | "timeout" | "failed" | "bad-output";

/** A plugin could not be found, ran too long, or exited without a usable answer. */
export class CniExecError extends CniRuntimeError {
  constructor(
    readonly command: CniCommand,
    readonly plugin: string,
    readonly reason: CniExecFailure,
    message: string,
    readonly stderr = "",
  ) {
    super(`${plugin} ${command}: ${message}${stderr.trim() ? `; stderr: ${stderr.trim()}` : ""}`);
    this.name = "CniExecError";
  }
}

/** The conflist, the attachment or the cache cannot be used. */
export class CniConfigError extends CniRuntimeError {
  constructor(message: string) {
    super(message);
    this.name = "CniConfigError";
  }
}

/** CNI_ARGS as kubelet/containerd pass them for a pod. */
export function kubernetesCniArgs(pod: {
  namespace: string;
  name: string;
  uid?: string;
  containerId?: string;
}): Record<string, string> {
  return {
    IgnoreUnknown: "1",
    K8S_POD_NAMESPACE: pod.namespace,
    K8S_POD_NAME: pod.name,
    ...(pod.containerId !== undefined ? { K8S_POD_INFRA_CONTAINER_ID: pod.containerId } : {}),
    ...(pod.uid !== undefined ? { K8S_POD_UID: pod.uid } : {}),
  };
}

export function formatCniArgs(args: Readonly<Record<string, string>>): string {
  return Object.entries(args)
    .map(([k, v]) => {
      if (!/^[A-Za-z0-9_]+$/.test(k)) throw new CniConfigError(`CNI_ARGS key "${k}" is not a plain name`);
      if (v.includes(";")) throw new CniConfigError(`CNI_ARGS value of ${k} contains ";"`);
      return `${k}=${v}`;
    })
    .join(";");
}

/**
 * The stdin of one plugin (libcni's buildOneConfig): the plugin's own keys plus the network's
 * `name` and `cniVersion`, `prevResult` when there is one, and `runtimeConfig` holding the
 * capability arguments the plugin declares in `capabilities`.
 */
export function pluginStdin(
  conflist: CniConflist,
  plugin: Readonly<Record<string, unknown>>,
  prevResult: CniResult | undefined,
  capabilityArgs: Readonly<Record<string, unknown>> | undefined,
): Record<string, unknown> {
  const conf: Record<string, unknown> = { ...plugin, name: conflist.name, cniVersion: conflist.cniVersion };
  if (prevResult !== undefined) conf.prevResult = prevResult;
  const declared = plugin.capabilities;
  const runtimeConfig: Record<string, unknown> = {};
  if (typeof declared === "object" && declared !== null) {
    for (const [capability, enabled] of Object.entries(declared)) {
      if (enabled === true && capabilityArgs?.[capability] !== undefined)
        runtimeConfig[capability] = capabilityArgs[capability];
    }
  }
  if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  return conf;
}

/** What the runtime keeps per attachment between ADD and DEL. */
interface CacheEntry {
  readonly kind: "cniCacheV1";
  readonly networkName: string;
  readonly containerId: string;
  readonly ifName: string;
  readonly cniArgs: Readonly<Record<string, string>>;
  readonly capabilityArgs?: Readonly<Record<string, unknown>>;
  readonly result: CniResult;
}

export class CniRuntime {
  private readonly timeoutMs: number;

  constructor(readonly options: CniRuntimeOptions) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_PLUGIN_TIMEOUT_MS;
  }

  /**
   * Attach: every plugin in order, each given the previous one's result. If a plugin fails, the
   * whole chain is DELeted (what container runtimes do when sandbox networking fails) and the
   * plugin's error is thrown, with `rollbackError` set if that cleanup failed too.
   */
  async add(conflist: RuntimeConflist, att: CniAttachment): Promise<CniResult> {
    checkConflist(conflist);
    checkAttachment(att);
    let result: CniResult | undefined;
    try {
      for (const plugin of conflist.plugins) {
        const stdin = pluginStdin(conflist, plugin, result, att.capabilityArgs);
        result = parseResult("ADD", plugin.type as string, await this.exec("ADD", plugin, att, stdin));
      }
    } catch (err) {
      if (err instanceof CniRuntimeError) {
        try {
          await this.del(conflist, att);
        } catch (rollback) {
          err.rollbackError = rollback instanceof Error ? rollback : new Error(String(rollback));
        }
      }
      throw err;
    }
    if (result === undefined) throw new CniConfigError(`conflist "${conflist.name}" has no plugins`);
    await this.writeCache(conflist, att, result);
    return result;
  }

  /**
   * Detach: every plugin in reverse order, each given the cached ADD result (none after a failed
   * ADD). Stops at the first failure and keeps the cache, so a retried DEL has the same input.
   */
  async del(conflist: RuntimeConflist, att: CniAttachment): Promise<void> {
    checkConflist(conflist);
    checkAttachment(att);
    const cached = await this.readCache(conflist.name, att);
    const prevResult = atLeast(conflist.cniVersion, "0.4.0") ? cached?.result : undefined;
    const capabilityArgs = att.capabilityArgs ?? cached?.capabilityArgs;
    for (const plugin of [...conflist.plugins].reverse()) {
      await this.exec("DEL", plugin, att, pluginStdin(conflist, plugin, prevResult, capabilityArgs));
    }
    await rm(this.cachePath(conflist.name, att), { force: true });
  }

  /** Verify: every plugin in order, each given the cached ADD result. */
  async check(conflist: RuntimeConflist, att: CniAttachment): Promise<void> {
    checkConflist(conflist);
    checkAttachment(att);
    if (!atLeast(conflist.cniVersion, "0.4.0"))
      throw new CniConfigError(
        `CHECK needs cniVersion 0.4.0 or later; "${conflist.name}" has ${conflist.cniVersion}`,
      );
    if (conflist.disableCheck === true) return;
    const cached = await this.readCache(conflist.name, att);
    if (cached === undefined)
      throw new CniConfigError(
        `no cached ADD result for container ${att.containerId} (${att.ifName}) on "${conflist.name}"`,
      );
    const capabilityArgs = att.capabilityArgs ?? cached.capabilityArgs;
    for (const plugin of conflist.plugins) {
      await this.exec("CHECK", plugin, att, pluginStdin(conflist, plugin, cached.result, capabilityArgs));
    }
  }

  /** The CNI versions a plugin supports. */
  async version(pluginType: string, cniVersion = "1.0.0"): Promise<CniVersionInfo> {
    const out = await this.exec("VERSION", { type: pluginType }, undefined, { cniVersion });
    const info = parseJsonOutput("VERSION", pluginType, out);
    if (typeof info.cniVersion !== "string" || !Array.isArray(info.supportedVersions))
      throw new CniExecError("VERSION", pluginType, "bad-output", `not version information: ${out.trim()}`);
    return { cniVersion: info.cniVersion, supportedVersions: info.supportedVersions as string[] };
  }

  /** The ADD result kept for an attachment, if it is attached. */
  async cachedResult(networkName: string, att: CniAttachment): Promise<CniResult | undefined> {
    return (await this.readCache(networkName, att))?.result;
  }

  /** Path of a plugin binary: the first CNI_PATH directory holding an executable named `type`. */
  async findPlugin(pluginType: string): Promise<string | undefined> {
    for (const dir of this.options.cniPath) {
      const candidate = join(dir, pluginType);
      try {
        await access(candidate, fsConstants.X_OK);
        if ((await stat(candidate)).isFile()) return candidate;
      } catch {
        // not in this directory
      }
    }
    return undefined;
  }

  private async exec(
    command: CniCommand,
    plugin: Readonly<Record<string, unknown>>,
    att: CniAttachment | undefined,
    stdin: Record<string, unknown>,
  ): Promise<string> {
    const type = plugin.type as string;
    const path = await this.findPlugin(type);
    if (path === undefined)
      throw new CniExecError(
        command,
        type,
        "not-found",
        `no plugin "${type}" in CNI_PATH ${this.options.cniPath.join(":")}`,
      );
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env))
      if (v !== undefined && !k.startsWith("CNI_")) env[k] = v;
    Object.assign(env, {
      CNI_COMMAND: command,
      CNI_PATH: this.options.cniPath.join(":"),
      ...(att
        ? {
            CNI_CONTAINERID: att.containerId,
            CNI_NETNS: att.netns,
            CNI_IFNAME: att.ifName,
            CNI_ARGS: formatCniArgs(att.args ?? {}),
          }
        : {}),
    });
    const argv = this.options.hostNetns ? ["nsenter", `--net=${this.options.hostNetns}`, "--", path] : [path];
    const run = await spawnPlugin(argv, env, JSON.stringify(stdin), this.timeoutMs);
    if (run.timedOut)
      throw new CniExecError(
        command,
        type,
        "timeout",
        `did not finish within ${this.timeoutMs} ms`,
        run.stderr,
      );
    if (run.spawnError !== undefined)
      throw new CniExecError(command, type, "failed", `cannot start ${argv[0]}: ${run.spawnError}`);
    if (run.code === 0) return run.stdout;
    const error = parseCniError(run.stdout);
    if (error) throw new CniPluginError(command, type, error.code, error.msg, error.details, run.stderr);
    throw new CniExecError(
      command,
      type,
      "failed",
      `exited ${run.code} without a CNI error${run.stdout.trim() ? `: ${run.stdout.trim()}` : ""}`,
      run.stderr,
    );
  }

  private cachePath(networkName: string, att: CniAttachment): string {
    return join(this.options.cacheDir, `${networkName}-${att.containerId}-${att.ifName}`);
  }

  private async readCache(networkName: string, att: CniAttachment): Promise<CacheEntry | undefined> {
    const path = this.cachePath(networkName, att);
    let text: string;
    try {
      text = await readFile(path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    try {
      const entry = JSON.parse(text) as CacheEntry;
      if (entry.kind === "cniCacheV1" && typeof entry.result === "object") return entry;
    } catch {
      // fall through: a damaged cache is reported, not silently ignored
    }
    throw new CniConfigError(`${path}: not a CNI result cache entry`);
  }

  private async writeCache(conflist: CniConflist, att: CniAttachment, result: CniResult): Promise<void> {
    await mkdir(this.options.cacheDir, { recursive: true, mode: 0o700 });
    const entry: CacheEntry = {
      kind: "cniCacheV1",
      networkName: conflist.name,
      containerId: att.containerId,
      ifName: att.ifName,
      cniArgs: att.args ?? {},
      ...(att.capabilityArgs !== undefined ? { capabilityArgs: att.capabilityArgs } : {}),
      result,
    };
    await writeFileAtomic(this.cachePath(conflist.name, att), JSON.stringify(entry, null, 2) + "\n", 0o600);
  }
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function checkConflist(conflist: CniConflist): void {
  if (!NAME.test(conflist.name))
    throw new CniConfigError(`conflist name "${conflist.name}" is not a valid name`);
  if (!/^\d+\.\d+\.\d+$/.test(conflist.cniVersion))
    throw new CniConfigError(
      `conflist "${conflist.name}": cniVersion "${conflist.cniVersion}" is not a version`,
    );
  if (conflist.plugins.length === 0) throw new CniConfigError(`conflist "${conflist.name}" has no plugins`);
  conflist.plugins.forEach((p, i) => {
    // The type names a file in CNI_PATH; a path separator would escape it.
    if (typeof p.type !== "string" || !NAME.test(p.type))
      throw new CniConfigError(`conflist "${conflist.name}": plugins[${i}].type must be a plugin name`);
  });
}

function checkAttachment(att: CniAttachment): void {
  if (!NAME.test(att.containerId))
    throw new CniConfigError(`container id "${att.containerId}" must be letters, digits, "_", "." or "-"`);
  if (!/^[^\s/:]{1,15}$/.test(att.ifName))
    throw new CniConfigError(`interface name "${att.ifName}" is not a Linux interface name`);
  if (!att.netns.startsWith("/")) throw new CniConfigError(`netns "${att.netns}" must be an absolute path`);
}

function atLeast(version: string, min: string): boolean {
  const a = version.split(".").map(Number);
  const b = min.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d > 0;
  }
  return true;
}

function parseJsonOutput(command: CniCommand, plugin: string, out: string): Record<string, unknown> {
  try {
    const value = JSON.parse(out) as unknown;
    if (typeof value === "object" && value !== null && !Array.isArray(value))
      return value as Record<string, unknown>;
  } catch {
    // reported below
  }
  throw new CniExecError(
    command,
    plugin,
    "bad-output",
    `printed no JSON object: ${JSON.stringify(out.trim())}`,
  );
}

function parseResult(command: CniCommand, plugin: string, out: string): CniResult {
  const value = parseJsonOutput(command, plugin, out);
  if (typeof value.cniVersion !== "string")
    throw new CniExecError(command, plugin, "bad-output", `result has no cniVersion: ${out.trim()}`);
  return value as unknown as CniResult;
}

function parseCniError(out: string): { code: number; msg: string; details?: string } | undefined {
  try {
    const v = JSON.parse(out) as Record<string, unknown>;
    if (typeof v.code === "number" && typeof v.msg === "string")
      return { code: v.code, msg: v.msg, ...(typeof v.details === "string" ? { details: v.details } : {}) };
  } catch {
    // not a CNI error
  }
  return undefined;
}

interface PluginRun {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number;
  readonly timedOut: boolean;
  readonly spawnError?: string;
}

/**
 * Run a plugin in its own process group so a timeout also ends the plugins it delegates to
 * (ptp → host-local) and nothing keeps running after the runtime gave up on it.
 */
function spawnPlugin(
  argv: readonly string[],
  env: Record<string, string>,
  input: string,
  timeoutMs: number,
): Promise<PluginRun> {
  return new Promise((resolve) => {
    const [file, ...args] = argv;
    const child = spawn(file ?? "", args, { env, stdio: ["pipe", "pipe", "pipe"], detached: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }, timeoutMs);
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ stdout: "", stderr: "", code: 127, timedOut: false, spawnError: e.message });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        code: code ?? (signal ? 128 : 1),
        timedOut,
      });
    });
    child.stdin.on("error", () => undefined); // a plugin may exit before reading its input
    child.stdin.end(input);
  });
}

const NETNS_DIR = "/var/run/netns";

/** Path of a named network namespace (`ip netns` convention). */
export function netnsPath(name: string): string {
  checkNetnsName(name);
  return join(NETNS_DIR, name);
}

/**
 * Create a pod's network namespace as a container runtime does before CNI ADD, with `lo` up (the
 * runtime's loopback step). Returns its path, the CNI_NETNS of the attachment.
 */
export async function createPodNetns(name: string, runner: Runner = new Runner()): Promise<string> {
  const path = netnsPath(name);
  await runner.run("ip", ["netns", "add", name]);
  try {
    await runner.run("ip", ["-n", name, "link", "set", "lo", "up"]);
  } catch (err) {
    await runner.run("ip", ["netns", "del", name], { allowFail: true });
    throw err;
  }
  return path;
}

/** Delete a pod's network namespace; a namespace that does not exist is fine. */
export async function deletePodNetns(name: string, runner: Runner = new Runner()): Promise<void> {
  const path = netnsPath(name);
  try {
    await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  await runner.run("ip", ["netns", "del", name]);
}

function checkNetnsName(name: string): void {
  if (!NAME.test(name) || name.length > 64)
    throw new CniConfigError(`netns name "${name}" must be letters, digits, "_", "." or "-"`);
}
