import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Command } from "commander";
import { InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import { issueProxyToken, loadOrCreateTokenKey, serviceAccountSubject } from "../controlplane/auth/tokens.js";
import { DEFAULT_TRUSTED_NODE_PROXY_ACCOUNTS } from "../controlplane/ca/authorize.js";
import { ROOT_CERT_FILE } from "../controlplane/ca/root.js";
import { DEFAULT_TOKEN_AUDIENCES, KubeconfigError } from "../controlplane/auth/tokenreview.js";
import { caDir, startControlPlane } from "../controlplane/daemon.js";
import type { ControlPlaneDaemonOptions, RunningControlPlane } from "../controlplane/daemon.js";
import { clusterInput, labSourceFor } from "./lab-api.js";
import { EXIT } from "./output.js";
import type { Io } from "./output.js";

export const DEFAULT_CP_STATE_DIR = "/var/lib/offmesh/controlplane";

interface RunFlags {
  clusterState?: string;
  clusterConf?: string;
  clusterApi?: string;
  stateDir: string;
  listen: string;
  httpAddr: string;
  trustDomain: string;
  domain: string;
  rootNamespace: string;
  trustedAccount?: string[];
  debounce: number;
  tlsName?: string[];
  tlsIp?: string[];
  proxyAuth: "lab" | "kubernetes";
  kubeconfig?: string;
  tokenAudience?: string[];
}

export function addControlPlaneCommands(program: Command, io: Io, setExit: (code: number) => void): void {
  const cp = program.command("controlplane").description("the control plane: ambient index, delta ADS, CA");

  cp.command("run", { isDefault: true })
    .description("run the control plane (the default)")
    .option("--cluster-state <file>", "cluster state file (nodes, namespaces, pods, services, policies)")
    .option("--cluster-conf <file>", "cluster-conf.yaml, watched for changes (with --cluster-state)")
    .option(
      "--cluster-api <socket>",
      "watch the lab API server instead (excludes --cluster-state/--cluster-conf)",
    )
    .option("--state-dir <dir>", "CA root and token key, created on first start", DEFAULT_CP_STATE_DIR)
    .option("--listen <host:port>", "xDS and CA over TLS", "127.0.0.1:15012")
    .option(
      "--http-addr <host:port>",
      "/ready, /metrics, /debug/proxies, /debug/config_dump",
      "127.0.0.1:15014",
    )
    .option("--trust-domain <td>", "SPIFFE trust domain", "cluster.local")
    .option("--domain <domain>", "cluster DNS domain of service hostnames", "cluster.local")
    .option("--root-namespace <ns>", "namespace whose policies apply mesh-wide", "istio-system")
    .option(
      "--trusted-account <ns/sa...>",
      `node proxy accounts (default: ${DEFAULT_TRUSTED_NODE_PROXY_ACCOUNTS.join(", ")})`,
    )
    .option("--debounce <ms>", "changes within this window go out together", parseNonNegative, 10)
    .option("--tls-name <name...>", "extra DNS names for the serving certificate")
    .option("--tls-ip <ip...>", "extra IP addresses for the serving certificate")
    .addOption(
      new Option(
        "--proxy-auth <kind>",
        "how node proxies authenticate: lab tokens, or Kubernetes TokenReview",
      )
        .choices(["lab", "kubernetes"])
        .default("lab"),
    )
    .option("--kubeconfig <file>", "API server for TokenReview (default: the in-cluster service account)")
    .option(
      "--token-audience <aud...>",
      `audiences a proxy's token must be for (default: ${DEFAULT_TOKEN_AUDIENCES.join(", ")})`,
    )
    .action(async (flags: RunFlags) => setExit(await run(io, flags)));

  cp.command("token")
    .description("issue a node proxy credential (the lab's stand-in for a Kubernetes service-account token)")
    .option("--state-dir <dir>", "where the control plane keeps its token key", DEFAULT_CP_STATE_DIR)
    .requiredOption("--node <name>", "the node the proxy's pod runs on")
    .requiredOption("--pod <name>", "the proxy's pod name")
    .requiredOption("--uid <uid>", "the proxy's pod uid")
    .option("--namespace <ns>", "the proxy's namespace", "istio-system")
    .option("--service-account <sa>", "the proxy's service account", "ztunnel")
    .option("--ttl <seconds>", "lifetime", parseNonNegative, 12 * 3600)
    .action(
      async (flags: {
        stateDir: string;
        node: string;
        pod: string;
        uid: string;
        namespace: string;
        serviceAccount: string;
        ttl: number;
      }) => {
        const key = await loadOrCreateTokenKey(flags.stateDir);
        io.out(
          issueProxyToken(
            key,
            {
              sub: serviceAccountSubject(flags.namespace, flags.serviceAccount),
              pod: { name: flags.pod, uid: flags.uid },
              node: flags.node,
            },
            flags.ttl,
          ) + "\n",
        );
        setExit(EXIT.ok);
      },
    );

  cp.command("root-cert")
    .description("print the mesh root certificate (what proxies verify the control plane and peers with)")
    .option("--state-dir <dir>", "the control plane's state directory", DEFAULT_CP_STATE_DIR)
    .action(async (flags: { stateDir: string }) => {
      const path = join(caDir(flags.stateDir), ROOT_CERT_FILE);
      try {
        io.out(await readFile(path, "utf8"));
        setExit(EXIT.ok);
      } catch (err) {
        io.err(
          `error: ${path}: ${(err as Error).message} (has the control plane been started with this --state-dir?)\n`,
        );
        setExit(EXIT.invalid);
      }
    });
}

async function run(io: Io, flags: RunFlags): Promise<number> {
  const input = clusterInput(flags);
  if ("error" in input) {
    io.err(`error: ${input.error}\n`);
    return EXIT.usage;
  }
  if (flags.proxyAuth !== "kubernetes" && (flags.kubeconfig || flags.tokenAudience)) {
    io.err("error: --kubeconfig and --token-audience need --proxy-auth kubernetes\n");
    return EXIT.usage;
  }
  const log = input.kind === "api" ? pino({ name: "offmesh-controlplane" }, pino.destination(2)) : undefined;
  const source = input.kind === "api" && log ? labSourceFor(input.socket, log) : undefined;
  let running: RunningControlPlane;
  try {
    const options: ControlPlaneDaemonOptions = {
      // Unused when the cluster comes from the lab API: the daemon reads files only without a source.
      clusterState: input.kind === "files" ? input.clusterState : "",
      clusterConf: input.kind === "files" ? input.clusterConf : "",
      ...(log ? { log } : {}),
      stateDir: flags.stateDir,
      listen: flags.listen,
      httpAddr: flags.httpAddr,
      trustDomain: flags.trustDomain,
      domain: flags.domain,
      rootNamespace: flags.rootNamespace,
      ...(flags.trustedAccount ? { trustedAccounts: flags.trustedAccount } : {}),
      debounceMs: flags.debounce,
      ...(flags.tlsName ? { tlsDnsNames: flags.tlsName } : {}),
      ...(flags.tlsIp ? { tlsIps: flags.tlsIp } : {}),
      proxyAuth:
        flags.proxyAuth === "kubernetes"
          ? {
              kind: "kubernetes",
              ...(flags.kubeconfig ? { kubeconfig: flags.kubeconfig } : {}),
              ...(flags.tokenAudience ? { audiences: flags.tokenAudience } : {}),
            }
          : { kind: "lab" },
    };
    running = await startControlPlane(options, source ? { source } : {});
  } catch (err) {
    if (err instanceof KubeconfigError) {
      io.err(`error: --kubeconfig: ${err.message}\n`);
      return EXIT.invalid;
    }
    throw err;
  }
  io.err(
    `offmesh control plane: xDS and CA on port ${running.grpcPort}${running.httpUrl ? `, ${running.httpUrl}` : ""}\n`,
  );
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", () => resolve());
    process.once("SIGINT", () => resolve());
  });
  await running.stop();
  return EXIT.ok;
}

function parseNonNegative(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a non-negative number");
  return n;
}
