import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { pino } from "pino";
import { DEFAULT_IDLE_TRIM_MS, startZtunnel, tuneHeapForZtunnel } from "../ztunnel/daemon.js";
import { probeCapabilities } from "../sockets/index.js";
import { EXIT } from "./output.js";
import type { Io } from "./output.js";

interface RunFlags {
  xdsAddress: string;
  rootCert: string;
  tokenFile: string;
  serverName?: string;
  node: string;
  podName: string;
  podNamespace: string;
  podIp: string;
  trustDomain: string;
  clusterId?: string;
  adminAddr: string;
  metricsAddr: string;
  readinessAddr: string;
  drainSeconds: number;
  idleTrimSeconds: number;
  logLevel: string;
}

export function addZtunnelCommands(program: Command, io: Io, setExit: (code: number) => void): void {
  const zt = program
    .command("ztunnel")
    .description("the node proxy: capture, HBONE mTLS, L4 policy, telemetry");
  zt.command("run", { isDefault: true })
    .description("run the ztunnel in this network namespace (the ztunnel pod's); the default")
    .requiredOption("--xds-address <host:port>", "the control plane (xDS and CA, TLS)")
    .requiredOption("--root-cert <file>", "mesh root certificate (offmesh controlplane root-cert)")
    .requiredOption("--token-file <file>", "this proxy's credential; re-read on every reconnect")
    .option("--server-name <name>", "name to verify the control plane's certificate against")
    .requiredOption("--node <name>", "the node this ztunnel's pod runs on")
    .requiredOption("--pod-name <name>", "this ztunnel's pod")
    .option("--pod-namespace <ns>", "this ztunnel's namespace", "istio-system")
    .requiredOption("--pod-ip <ip>", "this ztunnel's pod address", parseIp)
    .option("--trust-domain <td>", "SPIFFE trust domain", "cluster.local")
    .option("--cluster-id <id>", "sent to the control plane as clusterid")
    .option("--admin-addr <host:port>", "/config_dump, POST /quitquitquit", "127.0.0.1:15000")
    .option("--metrics-addr <host:port>", "Prometheus /metrics, /stats/prometheus", "0.0.0.0:15020")
    .option("--readiness-addr <host:port>", "/healthz/ready", "0.0.0.0:15021")
    .option("--drain-seconds <s>", "how long a graceful stop lets connections finish", parsePositive, 30)
    .option(
      "--idle-trim-seconds <s>",
      "return freed memory to the kernel after this long without traffic; 0 never",
      parsePositive,
      DEFAULT_IDLE_TRIM_MS / 1000,
    )
    .option("--log-level <level>", "pino level (info, debug, warn …)", "info")
    .action(async (flags: RunFlags) => setExit(await run(io, flags)));
}

async function run(io: Io, flags: RunFlags): Promise<number> {
  let rootCaPem: string;
  try {
    rootCaPem = await readFile(flags.rootCert, "utf8");
  } catch (err) {
    io.err(`error: --root-cert ${flags.rootCert}: ${(err as Error).message}\n`);
    return EXIT.invalid;
  }
  if (!rootCaPem.includes("BEGIN CERTIFICATE")) {
    io.err(`error: --root-cert ${flags.rootCert}: holds no PEM certificate\n`);
    return EXIT.invalid;
  }
  const token = async (): Promise<string> => (await readFile(flags.tokenFile, "utf8")).trim();
  try {
    if ((await token()) === "") throw new Error("is empty");
  } catch (err) {
    io.err(`error: --token-file ${flags.tokenFile}: ${(err as Error).message}\n`);
    return EXIT.invalid;
  }
  const caps = probeCapabilities();
  if (!caps.transparent || !caps.mark) {
    io.err(
      `error: the ztunnel needs IP_TRANSPARENT and SO_MARK (CAP_NET_ADMIN): ${caps.reason ?? "not permitted"}\n`,
    );
    return EXIT.invalid;
  }
  const log = pino({ name: "ztunnel", level: flags.logLevel }, pino.destination(2));
  tuneHeapForZtunnel();
  const running = await startZtunnel({
    xdsAddress: flags.xdsAddress,
    rootCaPem,
    ...(flags.serverName ? { serverName: flags.serverName } : {}),
    token,
    node: flags.node,
    podName: flags.podName,
    podNamespace: flags.podNamespace,
    podIp: flags.podIp,
    trustDomain: flags.trustDomain,
    ...(flags.clusterId ? { clusterId: flags.clusterId } : {}),
    adminAddr: flags.adminAddr,
    metricsAddr: flags.metricsAddr,
    readinessAddr: flags.readinessAddr,
    drainTimeoutMs: flags.drainSeconds * 1000,
    idleTrimMs: flags.idleTrimSeconds * 1000,
    log,
    accessLog: log.child({ target: "access" }),
  });
  io.err(
    `offmesh ztunnel on ${flags.node}: admin ${running.adminUrl ?? "-"}, metrics ${running.metricsUrl ?? "-"}\n`,
  );
  const signalled = new Promise<"drain" | "stop">((resolve) => {
    // SIGTERM drains as /quitquitquit does (what a pod's termination asks for); SIGINT stops now.
    process.once("SIGTERM", () => resolve("drain"));
    process.once("SIGINT", () => resolve("stop"));
  });
  const how = await Promise.race([signalled, running.stopped.then(() => "done" as const)]);
  if (how === "drain") await running.drain();
  else if (how === "stop") await running.stop();
  return EXIT.ok;
}

function parseIp(v: string): string {
  if (isIP(v) === 0) throw new InvalidArgumentError("expected an IPv4 or IPv6 address");
  return v;
}

function parsePositive(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a non-negative number");
  return n;
}
