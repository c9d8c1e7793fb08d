import { join } from "node:path";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { pino } from "pino";
import type { AgentStatus } from "../agent/agent.js";
import { startDaemon } from "../agent/daemon.js";
import type { DaemonOptions } from "../agent/daemon.js";
import { acquireLock } from "../agent/lock.js";
import { DEFAULT_AGENT_SOCKET } from "../cni/protocol.js";
import { callAgent } from "../cni/socket.js";
import { Runner } from "../netapply/exec.js";
import { Reconciler } from "../netapply/reconciler.js";
import type { TunnelKind } from "../netplan/types.js";
import { clusterInput, labSourceFor } from "./lab-api.js";
import { EXIT } from "./output.js";
import type { Io } from "./output.js";

export const DEFAULT_STATE_DIR = "/var/lib/offmesh";

interface RunFlags {
  node: string;
  clusterState?: string;
  clusterConf?: string;
  clusterApi?: string;
  netns?: string;
  stateDir: string;
  socket: string;
  cniConfDir?: string;
  ipamDir?: string;
  clusterCidr?: string[];
  tunnel?: TunnelKind;
  iptables?: "nft" | "legacy";
  resync: number;
  metricsAddr?: string;
  pairKeyFile?: string;
  pairPort: number;
  pairTimeout: number;
  pairGrace: number;
}

export function addAgentCommands(program: Command, io: Io, setExit: (code: number) => void): void {
  const agent = program
    .command("agent")
    .description("the node agent: keeps this node's kernel in the planned state");

  agent
    .command("run", { isDefault: true })
    .description("run the node agent (the default)")
    .requiredOption("--node <name>", "this node's name, as in cluster-conf.yaml")
    .option("--cluster-state <file>", "cluster state file (nodes, namespaces, pods) the agent watches")
    .option("--cluster-conf <file>", "cluster-conf.yaml, watched for changes (with --cluster-state)")
    .option(
      "--cluster-api <socket>",
      "watch the lab API server instead (excludes --cluster-state/--cluster-conf)",
    )
    .option("--netns <path>", "network namespace of the node (default: the agent's own)")
    .option("--state-dir <dir>", "lock and records of changed sysctls", DEFAULT_STATE_DIR)
    .option("--socket <path>", "unix socket for the offmesh-cni plugin", DEFAULT_AGENT_SOCKET)
    .option("--cni-conf-dir <dir>", "install the CNI conflist here (e.g. /etc/cni/net.d)")
    .option("--ipam-dir <dir>", "host-local IPAM state directory written into the conflist")
    .option(
      "--cluster-cidr <cidr...>",
      "cluster pod CIDRs exempt from masquerade (default: every node's pod CIDR)",
    )
    .option("--tunnel <kind>", "geneve | vxlan | veth (default: detected)", parseTunnel)
    .option("--iptables <mode>", "nft | legacy (default: detected)", parseMode)
    .option("--resync <seconds>", "full resync period", parsePositive, 30)
    .option("--metrics-addr <host:port>", "serve /metrics, /healthz and /status", "127.0.0.1:15030")
    .option(
      "--pair-key-file <file>",
      "key shared by a CPU's and its DPU's agents (pair channel; off without)",
    )
    .option("--pair-port <port>", "TCP port of the pair channel on a DPU's node address", parsePort, 15031)
    .option(
      "--pair-timeout <seconds>",
      "how long a CPU's pod ADD waits for its DPU to hold the pod",
      parsePositive,
      5,
    )
    .option(
      "--pair-grace <seconds>",
      "how long a DPU captures a held pod the API has not confirmed",
      parsePositive,
      60,
    )
    .action(async (flags: RunFlags) => setExit(await runAgent(io, flags)));

  agent
    .command("status")
    .description("ask the running agent for its state")
    .option("--socket <path>", "the agent's unix socket", DEFAULT_AGENT_SOCKET)
    .option("--json", "machine-readable output")
    .option("--all", "list every member, not only the first 20")
    .action(async (flags: { socket: string; json?: boolean; all?: boolean }) =>
      setExit(await agentStatus(io, flags)),
    );

  agent
    .command("resync")
    .description("make the running agent reconcile now (repair drift) and show its status")
    .option("--socket <path>", "the agent's unix socket", DEFAULT_AGENT_SOCKET)
    .option("--json", "machine-readable output")
    .action(async (flags: { socket: string; json?: boolean }) =>
      setExit(await agentStatus(io, { ...flags, op: "resync" })),
    );

  agent
    .command("cleanup")
    .description("remove everything offmesh programmed on this node (stop the agent first)")
    .option("--netns <path>", "network namespace of the node (default: this process's own)")
    .option("--state-dir <dir>", "where the agent recorded changed sysctls", DEFAULT_STATE_DIR)
    .option("--iptables <mode>", "nft | legacy (default: detected)", parseMode)
    .action(async (flags: { netns?: string; stateDir: string; iptables?: "nft" | "legacy" }) =>
      setExit(await agentCleanup(io, flags)),
    );
}

async function runAgent(io: Io, flags: RunFlags): Promise<number> {
  const input = clusterInput(flags);
  if ("error" in input) {
    io.err(`error: ${input.error}\n`);
    return EXIT.usage;
  }
  const log =
    input.kind === "api"
      ? pino({ name: "offmesh-agent", base: { node: flags.node } }, pino.destination(2))
      : undefined;
  const source = input.kind === "api" && log ? labSourceFor(input.socket, log) : undefined;
  const options: DaemonOptions = {
    nodeName: flags.node,
    // Unused when the cluster comes from the lab API: the daemon reads files only without a source.
    clusterState: input.kind === "files" ? input.clusterState : "",
    clusterConf: input.kind === "files" ? input.clusterConf : "",
    ...(log ? { log } : {}),
    ...(flags.netns ? { netns: flags.netns } : {}),
    stateDir: flags.stateDir,
    socketPath: flags.socket,
    ...(flags.cniConfDir ? { cniConfDir: flags.cniConfDir } : {}),
    ...(flags.ipamDir ? { ipamDataDir: flags.ipamDir } : {}),
    ...(flags.clusterCidr ? { clusterPodCIDRs: flags.clusterCidr } : {}),
    ...(flags.tunnel ? { tunnel: flags.tunnel } : {}),
    ...(flags.iptables ? { iptablesMode: flags.iptables } : {}),
    resyncMs: flags.resync * 1000,
    ...(flags.metricsAddr ? { metricsAddr: flags.metricsAddr } : {}),
    ...(flags.pairKeyFile ? { pairKeyFile: flags.pairKeyFile } : {}),
    pairPort: flags.pairPort,
    pairTimeoutMs: flags.pairTimeout * 1000,
    pairGraceMs: flags.pairGrace * 1000,
  };
  const daemon = await startDaemon(options, source);
  const status = daemon.agent.status();
  io.err(
    `offmesh agent on ${flags.node}: role ${status.role}, ${status.ready ? "ready" : `not ready (${status.notReadyReason ?? ""})`}\n`,
  );
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  // Rules stay in place on exit (fail closed); `offmesh agent cleanup` removes them.
  await daemon.stop();
  return EXIT.ok;
}

async function agentStatus(
  io: Io,
  flags: { socket: string; json?: boolean; all?: boolean; op?: "status" | "resync" },
): Promise<number> {
  let res;
  try {
    // A resync waits for a full reconcile; a status answer is immediate.
    res = await callAgent(flags.socket, { op: flags.op ?? "status" }, flags.op === "resync" ? 60_000 : 5000);
  } catch (err) {
    io.err(`error: cannot reach the offmesh agent at ${flags.socket}: ${(err as Error).message}\n`);
    return EXIT.invalid;
  }
  if (!res.ok) {
    io.err(`error: ${res.error}\n`);
    return EXIT.invalid;
  }
  const status = res.status as AgentStatus;
  if (flags.json) {
    io.out(JSON.stringify(status, null, 2) + "\n");
    return EXIT.ok;
  }
  io.out(formatStatus(status, flags.all === true));
  return EXIT.ok;
}

export function formatStatus(s: AgentStatus, all: boolean): string {
  const lines = [
    `node          ${s.node} (${s.role}${s.pair ? `, paired with ${s.pair}` : ""})`,
    `topology      ${s.topology.source ?? "-"}${s.topology.error ? `\n  error: ${s.topology.error}` : ""}`,
    `ready         ${s.ready ? "yes" : `no: ${s.notReadyReason ?? ""}`}`,
  ];
  if (s.tunnel) lines.push(`tunnel        ${s.tunnel}`);
  if (s.ztunnel)
    lines.push(`ztunnel       ${s.ztunnel.ip}${s.ztunnel.hostVeth ? ` via ${s.ztunnel.hostVeth}` : ""}`);
  const a = s.lastApply;
  lines.push(
    a
      ? `last apply    ${a.at} ${a.kind}, ${a.durationMs} ms, ${a.writes} writes, ${a.changes} changes${a.error ? `, FAILED: ${a.error}` : ""}`
      : "last apply    never",
    `applies       ${s.applies} (${s.failures} failed), drift repairs ${s.driftRepairs}`,
    `members       ${s.members.length}`,
  );
  const held = s.pairChannel?.held.length ?? 0;
  if (s.pairChannel)
    lines.splice(
      lines.length - 1,
      0,
      `pair channel  ${s.pairChannel.detail}${held > 0 ? `; ${held} held pod(s) awaiting the API` : ""}`,
    );
  const shown = all ? s.members : s.members.slice(0, 20);
  for (const m of shown) lines.push(`  ${m.ip.padEnd(18)} ${m.uid}`);
  if (shown.length < s.members.length) lines.push(`  … ${s.members.length - shown.length} more (--all)`);
  if (s.notes.length > 0) lines.push("notes", ...s.notes.map((n) => `  - ${n}`));
  return lines.join("\n") + "\n";
}

async function agentCleanup(
  io: Io,
  flags: { netns?: string; stateDir: string; iptables?: "nft" | "legacy" },
): Promise<number> {
  // Holding the agent's lock: a running agent would put everything back at its next resync.
  const lock = await acquireLock(join(flags.stateDir, "agent.lock"));
  try {
    const runner = new Runner(flags.netns);
    const report = await new Reconciler({
      runner,
      stateDir: flags.stateDir,
      ...(flags.iptables ? { iptablesMode: flags.iptables } : {}),
    }).cleanup();
    for (const c of report.changes) io.out(`${c.backend}: ${c.action} ${c.detail}\n`);
    io.out(`cleanup: ${report.changes.length} changes, ${report.writes} writes\n`);
    return EXIT.ok;
  } finally {
    await lock.release();
  }
}

function parseTunnel(v: string): TunnelKind {
  if (v === "geneve" || v === "vxlan" || v === "veth") return v;
  throw new InvalidArgumentError("expected geneve, vxlan or veth");
}

function parseMode(v: string): "nft" | "legacy" {
  if (v === "nft" || v === "legacy") return v;
  throw new InvalidArgumentError("expected nft or legacy");
}

function parsePort(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535)
    throw new InvalidArgumentError("expected a TCP port (1-65535)");
  return n;
}

function parsePositive(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError("expected a positive number of seconds");
  return n;
}
