import { isIP } from "node:net";
import { DEFAULT_AGENT_SOCKET } from "./protocol.js";
import type { AgentRequest, AgentResponse, PodRef } from "./protocol.js";
import { AgentCallError } from "./socket.js";

// The chained `offmesh-cni` plugin: after the reference plugins have wired the pod, it hands the
// pod to the node agent, which captures it when it is meshed. Runtimes exec the plugin once per
// pod and per command, so this module stays small and imports node built-ins only.

export const PLUGIN_TYPE = "offmesh-cni";
export const SUPPORTED_VERSIONS = ["0.4.0", "1.0.0"] as const;
export type SupportedVersion = (typeof SUPPORTED_VERSIONS)[number];
export const DEFAULT_TIMEOUT_MS = 10_000;

/** CNI error codes: 1–99 from the CNI spec, 100+ offmesh's own (docs/cni.md). */
export const CNI_ERROR = {
  incompatibleVersion: 1,
  invalidEnv: 4,
  io: 5,
  decode: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  /** The agent answered the request with `{ok:false}`. */
  agentRefused: 100,
  /** The agent answered something that is not a protocol response. */
  agentProtocol: 101,
  /** CHECK: the agent says the pod should be captured and is not. */
  notCaptured: 102,
  /** A bug in the plugin. */
  internal: 103,
} as const;

/** A CNI error as printed on stdout (spec: "Error"). */
export interface CniErrorBody {
  readonly cniVersion: string;
  readonly code: number;
  readonly msg: string;
  readonly details?: string;
}

/** A failure the plugin reports to the runtime as a CNI error. */
export class CniFailure extends Error {
  constructor(
    readonly code: number,
    readonly msg: string,
    readonly details?: string,
  ) {
    super(details ? `${msg}: ${details}` : msg);
    this.name = "CniFailure";
  }

  body(cniVersion: string): CniErrorBody {
    return {
      cniVersion,
      code: this.code,
      msg: this.msg,
      ...(this.details !== undefined ? { details: this.details } : {}),
    };
  }
}

export type CniCommand = "ADD" | "DEL" | "CHECK" | "VERSION";

export type CniEnv =
  | { readonly command: "VERSION" }
  | {
      readonly command: "ADD" | "DEL" | "CHECK";
      readonly containerId: string;
      /** Empty on DEL when the runtime no longer has the namespace (allowed by the spec). */
      readonly netns: string;
      readonly ifName: string;
      readonly args: ReadonlyMap<string, string>;
    };

/** The CNI_* variables of one invocation. */
export function parseCniEnv(env: Readonly<Record<string, string | undefined>>): CniEnv {
  const command = env.CNI_COMMAND;
  if (command === undefined || command === "") throw invalidEnv("CNI_COMMAND is not set");
  if (command === "VERSION") return { command };
  if (command !== "ADD" && command !== "DEL" && command !== "CHECK")
    throw invalidEnv(`unknown CNI_COMMAND "${command}" (offmesh-cni knows ADD, DEL, CHECK, VERSION)`);
  const required = (name: string): string => {
    const value = env[name];
    if (value === undefined || value === "") throw invalidEnv(`${name} is not set (CNI_COMMAND=${command})`);
    return value;
  };
  return {
    command,
    containerId: required("CNI_CONTAINERID"),
    netns: command === "DEL" ? (env.CNI_NETNS ?? "") : required("CNI_NETNS"),
    ifName: required("CNI_IFNAME"),
    args: parseCniArgs(env.CNI_ARGS ?? ""),
  };
}

/** CNI_ARGS: `KEY=VALUE` pairs separated by `;`. Unknown keys are ignored (IgnoreUnknown or not). */
export function parseCniArgs(text: string): ReadonlyMap<string, string> {
  const args = new Map<string, string>();
  for (const pair of text.split(";")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    if (eq <= 0) throw invalidEnv(`CNI_ARGS: "${pair}" is not KEY=VALUE`);
    args.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return args;
}

/** The pod named by the runtime; undefined when CNI_ARGS lacks the Kubernetes keys. */
export function podFromEnv(env: Extract<CniEnv, { args: unknown }>): PodRef | undefined {
  const namespace = env.args.get("K8S_POD_NAMESPACE");
  const name = env.args.get("K8S_POD_NAME");
  if (!namespace || !name) return undefined;
  const uid = env.args.get("K8S_POD_UID");
  return {
    namespace,
    name,
    ...(uid ? { uid } : {}),
    containerId: env.containerId,
    netns: env.netns,
    ifname: env.ifName,
  };
}

export interface PluginConfig {
  readonly cniVersion: SupportedVersion;
  readonly name: string;
  readonly type: string;
  readonly agentSocket: string;
  readonly timeoutMs: number;
  /** The previous plugin's result, passed through unchanged (in the shape of `cniVersion`). */
  readonly prevResult?: Readonly<Record<string, unknown>>;
}

/** The network configuration on stdin. Throws CniFailure 6 (not JSON), 1 (version) or 7 (invalid). */
export function parsePluginConfig(stdin: string): PluginConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    throw new CniFailure(
      CNI_ERROR.decode,
      "cannot decode the network configuration",
      err instanceof Error ? err.message : String(err),
    );
  }
  if (!isRecord(raw)) throw invalidConfig("the network configuration must be a JSON object");
  const { cniVersion, name, type, agentSocket, timeoutMs, prevResult } = raw;
  if (typeof cniVersion !== "string" || cniVersion === "") throw invalidConfig(`"cniVersion" is missing`);
  if (!isSupported(cniVersion))
    throw new CniFailure(
      CNI_ERROR.incompatibleVersion,
      `incompatible CNI version ${cniVersion}`,
      `offmesh-cni supports ${SUPPORTED_VERSIONS.join(", ")}`,
    );
  if (typeof name !== "string" || name === "") throw invalidConfig(`"name" is missing`);
  if (typeof type !== "string" || type === "") throw invalidConfig(`"type" is missing`);
  if (agentSocket !== undefined && (typeof agentSocket !== "string" || !agentSocket.startsWith("/")))
    throw invalidConfig(`"agentSocket" must be an absolute path`);
  if (
    timeoutMs !== undefined &&
    (typeof timeoutMs !== "number" || !Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000)
  )
    throw invalidConfig(`"timeoutMs" must be a whole number of milliseconds between 1 and 600000`);
  if (prevResult !== undefined && !isRecord(prevResult))
    throw invalidConfig(`"prevResult" must be an object`);
  return {
    cniVersion,
    name,
    type,
    agentSocket: (agentSocket as string | undefined) ?? DEFAULT_AGENT_SOCKET,
    timeoutMs: (timeoutMs as number | undefined) ?? DEFAULT_TIMEOUT_MS,
    ...(prevResult !== undefined ? { prevResult } : {}),
  };
}

/**
 * The pod's addresses in a previous result (0.4.0 and 1.0.0 share this part): addresses of
 * interfaces inside the sandbox, without prefix length. An address whose interface is on the host
 * side (no `sandbox`) is not the pod's.
 */
export function podIps(prevResult: Readonly<Record<string, unknown>>): string[] {
  const { ips, interfaces } = prevResult;
  if (ips === undefined) return [];
  if (!Array.isArray(ips)) throw invalidConfig(`"prevResult.ips" must be a list`);
  const ifaces = Array.isArray(interfaces) ? (interfaces as unknown[]) : [];
  const out: string[] = [];
  ips.forEach((entry: unknown, i) => {
    if (!isRecord(entry) || typeof entry.address !== "string")
      throw invalidConfig(`"prevResult.ips[${i}].address" is missing`);
    const address = entry.address.split("/")[0] ?? "";
    if (isIP(address) === 0)
      throw invalidConfig(`"prevResult.ips[${i}].address" is not an address: ${entry.address}`);
    const iface = typeof entry.interface === "number" ? ifaces[entry.interface] : undefined;
    if (isRecord(iface) && !iface.sandbox) return;
    out.push(address);
  });
  return out;
}

export const VERSION_INFO = { cniVersion: "1.0.0", supportedVersions: [...SUPPORTED_VERSIONS] } as const;

export interface PluginInput {
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Read only when the command needs the configuration (VERSION does not). */
  readonly readStdin: () => Promise<string>;
}

export interface PluginDeps {
  readonly callAgent: (
    socketPath: string,
    request: AgentRequest,
    timeoutMs: number,
  ) => Promise<AgentResponse>;
  /** Diagnostics for the runtime's log (stderr); never the protocol output. */
  readonly log: (message: string) => void;
}

export interface PluginOutcome {
  readonly exitCode: 0 | 1;
  readonly stdout: string;
}

/** One invocation of the plugin: what to print on stdout and the exit code. */
export async function runPlugin(input: PluginInput, deps: PluginDeps): Promise<PluginOutcome> {
  let errorVersion: string = VERSION_INFO.cniVersion;
  try {
    const env = parseCniEnv(input.env);
    if (env.command === "VERSION") return { exitCode: 0, stdout: JSON.stringify(VERSION_INFO) + "\n" };
    let stdin: string;
    try {
      stdin = await input.readStdin();
    } catch (err) {
      throw new CniFailure(CNI_ERROR.io, "cannot read the network configuration from stdin", String(err));
    }
    const conf = parsePluginConfig(stdin);
    errorVersion = conf.cniVersion;
    switch (env.command) {
      case "ADD":
        return { exitCode: 0, stdout: JSON.stringify(await add(env, conf, deps)) + "\n" };
      case "CHECK":
        await check(env, conf, deps);
        return { exitCode: 0, stdout: "" };
      case "DEL":
        await del(env, conf, deps);
        return { exitCode: 0, stdout: "" };
    }
  } catch (err) {
    const failure =
      err instanceof CniFailure
        ? err
        : new CniFailure(CNI_ERROR.internal, "offmesh-cni failed unexpectedly", String(err));
    return { exitCode: 1, stdout: JSON.stringify(failure.body(errorVersion)) + "\n" };
  }
}

type PodEnv = Extract<CniEnv, { args: unknown }>;

async function add(env: PodEnv, conf: PluginConfig, deps: PluginDeps): Promise<Record<string, unknown>> {
  const prevResult = requirePrevResult(conf, "ADD");
  const pod = requirePod(env);
  const ips = podIps(prevResult);
  const res = await ask(conf, { op: "add", pod, ips }, deps);
  if (!res.ok)
    throw new CniFailure(CNI_ERROR.agentRefused, `offmesh node agent refused pod ${podName(pod)}`, res.error);
  if (res.captured === undefined)
    throw new CniFailure(
      CNI_ERROR.agentProtocol,
      `offmesh node agent at ${conf.agentSocket} answered add without "captured"`,
    );
  // Chained plugins return the previous result; a plugin that does not change the interfaces has
  // nothing to add. It stays in the configuration's version (0.4.0 or 1.0.0).
  return prevResult.cniVersion === undefined
    ? { cniVersion: conf.cniVersion, ...prevResult }
    : { ...prevResult };
}

async function check(env: PodEnv, conf: PluginConfig, deps: PluginDeps): Promise<void> {
  const prevResult = requirePrevResult(conf, "CHECK");
  const pod = requirePod(env);
  const res = await ask(conf, { op: "check", pod, ips: podIps(prevResult) }, deps);
  if (!res.ok)
    throw new CniFailure(
      CNI_ERROR.notCaptured,
      `pod ${podName(pod)} is not captured as offmesh expects`,
      res.error,
    );
}

// DEL never fails because of the agent: a failed DEL blocks the pod's teardown, while the agent's
// resync removes pods that no longer exist anyway. DEL is idempotent on the agent's side.
async function del(env: PodEnv, conf: PluginConfig, deps: PluginDeps): Promise<void> {
  const pod = podFromEnv(env);
  if (!pod) {
    deps.log(`DEL of container ${env.containerId}: CNI_ARGS names no Kubernetes pod; nothing to release`);
    return;
  }
  try {
    const res = await deps.callAgent(conf.agentSocket, { op: "del", pod }, conf.timeoutMs);
    if (!res.ok) deps.log(`DEL of pod ${podName(pod)}: the agent answered: ${res.error}; it resyncs later`);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    deps.log(`DEL of pod ${podName(pod)}: ${why}; the offmesh node agent releases the pod when it resyncs`);
  }
}

/** Call the agent; transport failures become CNI errors a kubelet log explains. */
async function ask(conf: PluginConfig, request: AgentRequest, deps: PluginDeps): Promise<AgentResponse> {
  try {
    return await deps.callAgent(conf.agentSocket, request, conf.timeoutMs);
  } catch (err) {
    if (!(err instanceof AgentCallError)) throw err;
    const socket = conf.agentSocket;
    const retry = "the pod's network is set up once the agent answers; the runtime retries";
    switch (err.kind) {
      case "unreachable":
        return tryLater(
          `offmesh node agent is not running: cannot connect to ${socket}`,
          `${err.errno ?? err.message}; ${retry}`,
        );
      case "timeout":
        return tryLater(
          `offmesh node agent at ${socket} is not answering: no answer within ${conf.timeoutMs} ms`,
          `${err.message}; ${retry}`,
        );
      case "closed":
        return tryLater(`offmesh node agent at ${socket} closed the connection without answering`, retry);
      case "bad-response":
        throw new CniFailure(
          CNI_ERROR.agentProtocol,
          `offmesh node agent at ${socket} sent an invalid answer`,
          err.message,
        );
    }
  }
}

function tryLater(msg: string, details: string): never {
  throw new CniFailure(CNI_ERROR.tryAgainLater, msg, details);
}

function requirePrevResult(conf: PluginConfig, command: string): Readonly<Record<string, unknown>> {
  if (conf.prevResult === undefined)
    throw invalidConfig(
      `${command} needs "prevResult": offmesh-cni must be chained after the plugin that creates the pod's interface (e.g. ptp)`,
    );
  return conf.prevResult;
}

function requirePod(env: PodEnv): PodRef {
  const pod = podFromEnv(env);
  if (!pod) throw invalidEnv("CNI_ARGS must name the pod with K8S_POD_NAMESPACE and K8S_POD_NAME");
  return pod;
}

function podName(pod: PodRef): string {
  return `${pod.namespace}/${pod.name}`;
}

function isSupported(version: string): version is SupportedVersion {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(version);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function invalidEnv(msg: string): CniFailure {
  return new CniFailure(CNI_ERROR.invalidEnv, msg);
}

function invalidConfig(msg: string): CniFailure {
  return new CniFailure(CNI_ERROR.invalidConfig, msg);
}
