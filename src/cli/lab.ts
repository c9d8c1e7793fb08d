import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { pino } from "pino";
import { labGet } from "../cluster/lab-client.js";
import { labDown } from "../lab/down.js";
import { runEchoCommand } from "../lab/echo.js";
import { LabKubelet } from "../lab/kubelet.js";
import { DEFAULT_LAB_NAME, labStateDir, labStatePaths, podNetns } from "../lab/names.js";
import { LabProcesses } from "../lab/processes.js";
import { DEFAULT_SPEC_FILE, DEFAULT_SPEC_TEXT, resolveSpec } from "../lab/spec.js";
import { labStatus, formatLabStatus } from "../lab/status.js";
import { labUp, OFFMESH_BIN } from "../lab/up.js";
import { formatVerifyReport, labVerify } from "../lab/verify.js";
import { addLabApiCommands } from "./lab-api.js";
import { EXIT } from "./output.js";
import type { Io } from "./output.js";

// `offmesh lab …`: the emulated CPU/DPU cluster on this machine (docs/lab.md).

export function addLabCommands(program: Command, io: Io, setExit: (code: number) => void): void {
  const lab = program
    .command("lab")
    .description("a whole CPU/DPU cluster in network namespaces on this machine");
  const named = (c: Command): Command =>
    c.option("--name <name>", "the lab's name (prefix of all it creates)", DEFAULT_LAB_NAME);

  named(
    lab
      .command("up")
      .description("bring up a lab (removing leftovers of one of the same name first)")
      .option("--spec <lab.yaml>", `the lab to build (default: ${DEFAULT_SPEC_FILE})`),
  ).action(async (flags: { spec?: string; name: string }, cmd: Command) =>
    setExit(await up(io, flags, cmd.getOptionValueSource("name") === "cli")),
  );

  named(
    lab.command("down").description("remove everything a lab made; safe to run twice, and after a crash"),
  ).action(async (flags: { name: string }) => {
    const r = await labDown(flags.name);
    io.out(
      `lab ${flags.name} down: ${r.stoppedProcesses.length} processes stopped, ${r.removedNamespaces.length} namespaces removed${r.removedStateDir ? ", state removed" : ""}\n`,
    );
    setExit(EXIT.ok);
  });

  named(
    lab
      .command("status")
      .description("nodes, roles, pods and the health of each component")
      .option("--json", "machine-readable"),
  ).action(async (flags: { name: string; json?: boolean }) => {
    const status = await labStatus(flags.name);
    if (!status) {
      io.err(
        `error: no lab named ${flags.name} (no ${labStateDir(flags.name)}); start one with: offmesh lab up\n`,
      );
      setExit(EXIT.invalid);
      return;
    }
    io.out(flags.json ? JSON.stringify(status, null, 2) + "\n" : formatLabStatus(status));
    setExit(status.healthy ? EXIT.ok : EXIT.invalid);
  });

  named(
    lab
      .command("verify")
      .description(
        "run the design's packet walks on a running lab: one row per path, PASS/FAIL (exit 1 if any fails)",
      )
      .option("--json", "machine-readable")
      .option("--only <ids>", "comma-separated path ids (a, b, c1 …)"),
  ).action(async (flags: { name: string; json?: boolean; only?: string }) => {
    if (typeof process.getuid === "function" && process.getuid() !== 0) {
      io.err("error: offmesh lab verify needs root (namespaces, tcpdump, iptables counters)\n");
      setExit(EXIT.invalid);
      return;
    }
    const only = flags.only
      ?.split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    const report = await labVerify(flags.name, {
      ...(only ? { only } : {}),
      progress: (m) => io.err(`lab ${flags.name}: verify ${m}\n`),
    });
    io.out(flags.json ? JSON.stringify(report, null, 2) + "\n" : formatVerifyReport(report));
    setExit(report.ok ? EXIT.ok : EXIT.invalid);
  });

  named(
    lab
      .command("exec")
      .description("run a command in a pod's network namespace: offmesh lab exec [ns/]pod -- cmd args…")
      .argument("<pod>", "pod as <namespace>/<name>, or <name> in namespace default")
      .argument("<command...>", "the command and its arguments"),
  ).action(async (podRef: string, command: string[], flags: { name: string }) =>
    setExit(await exec(io, flags.name, podRef, command)),
  );

  named(
    lab
      .command("logs")
      .description(
        "print a component's log (apiserver, controlplane, agent-<node>, kubelet-<node>, ztunnel-<node>, pod-<ns>.<pod>)",
      )
      .argument("[component]", "omit to list the components")
      .option("--tail <lines>", "only the last lines", parseCount),
  ).action((component: string | undefined, flags: { name: string; tail?: number }) =>
    setExit(logs(io, flags.name, component, flags.tail)),
  );

  named(
    lab
      .command("restart")
      .description("restart a component of the lab (as after a crash)")
      .argument("<component>", "see `offmesh lab logs`"),
  ).action(async (component: string, flags: { name: string }) => {
    const processes = new LabProcesses(labStateDir(flags.name));
    if (component.startsWith("ztunnel-") || component.startsWith("pod-")) {
      // A pod's process: stopping it is enough, its kubelet starts it again (restart policy Always).
      await processes.stop(component, 5_000, { keepSpec: true });
      io.out(`${component} stopped; its kubelet restarts it\n`);
    } else {
      const pid = await processes.restart(component);
      io.out(`${component} restarted (pid ${pid})\n`);
    }
    setExit(EXIT.ok);
  });

  named(
    lab
      .command("kubelet", { hidden: true })
      .description("the lab's kubelet for one node (started by lab up)")
      .requiredOption("--node <node>", "the node")
      .requiredOption("--control-plane <host:port>", "where ztunnels reach the control plane")
      .requiredOption("--cni-path <dirs>", "colon-separated CNI plugin directories"),
  ).action(async (flags: { name: string; node: string; controlPlane: string; cniPath: string }) => {
    const log = pino({ name: `kubelet-${flags.node}` }, pino.destination(1));
    const kubelet = new LabKubelet({
      lab: flags.name,
      node: flags.node,
      stateDir: labStateDir(flags.name),
      controlPlaneAddress: flags.controlPlane,
      cniPath: flags.cniPath.split(":").filter(Boolean),
      cliMain: OFFMESH_BIN,
      log,
    });
    await kubelet.start();
    await new Promise<void>((resolve) => {
      process.once("SIGTERM", resolve);
      process.once("SIGINT", resolve);
    });
    await kubelet.stop();
    setExit(EXIT.ok);
  });

  lab
    .command("echo", { hidden: true })
    .description(
      "the lab's workload: TCP echo that first reports the peer it saw, and HTTP GET / with the same",
    )
    .requiredOption("--pod <ns/name>", "the pod it runs as")
    .option("--tcp-port <port>", "TCP echo port", parseCount, 8080)
    .option("--http-port <port>", "HTTP port", parseCount, 8081)
    .action(async (flags: { pod: string; tcpPort: number; httpPort: number }) => {
      await runEchoCommand({ podName: flags.pod, tcpPort: flags.tcpPort, httpPort: flags.httpPort });
      setExit(EXIT.ok);
    });

  addLabApiCommands(lab, io, setExit);
}

async function up(io: Io, flags: { spec?: string; name: string }, nameGiven: boolean): Promise<number> {
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    io.err("error: offmesh lab up needs root (network namespaces, iptables)\n");
    return EXIT.invalid;
  }
  let text = DEFAULT_SPEC_TEXT;
  let file = DEFAULT_SPEC_FILE;
  if (flags.spec) {
    try {
      text = readFileSync(flags.spec, "utf8");
      file = flags.spec;
    } catch (err) {
      io.err(`error: --spec ${flags.spec}: ${(err as Error).message}\n`);
      return EXIT.invalid;
    }
  }
  const resolved = resolveSpec(text, file, nameGiven ? { name: flags.name } : {});
  if ("issues" in resolved) {
    for (const i of resolved.issues) io.err(`${i.file}:${i.line}:${i.column}: ${i.field}: ${i.message}\n`);
    return EXIT.invalid;
  }
  const started = Date.now();
  const result = await labUp(resolved.spec, { step: (m) => io.err(`lab ${resolved.spec.name}: ${m}\n`) });
  io.out(
    `lab ${resolved.spec.name} is up in ${((Date.now() - started) / 1000).toFixed(1)} s: ${result.pods} pods; control plane at ${result.controlPlaneAddress}; state in ${result.stateDir}\n` +
      `next: offmesh lab status --name ${resolved.spec.name} | offmesh lab verify --name ${resolved.spec.name} | offmesh lab down --name ${resolved.spec.name}\n`,
  );
  return EXIT.ok;
}

async function exec(io: Io, lab: string, podRef: string, command: string[]): Promise<number> {
  const [namespace, name] = podRef.includes("/") ? podRef.split("/", 2) : ["default", podRef];
  const paths = labStatePaths(labStateDir(lab));
  const got = await labGet(paths.apiSocket, 5_000).catch((err: unknown) => ({
    ok: false as const,
    error: (err as Error).message,
  }));
  if (!got.ok) {
    io.err(`error: lab ${lab}: ${got.error}\n`);
    return EXIT.invalid;
  }
  const pod = got.state.pods.find((p) => p.namespace === namespace && p.name === name);
  if (!pod?.nodeName) {
    io.err(`error: lab ${lab} has no pod ${namespace}/${name} (offmesh lab get pods --name ${lab})\n`);
    return EXIT.invalid;
  }
  const [program, ...args] = command;
  if (!program) return EXIT.usage;
  const child = spawn(
    "ip",
    ["netns", "exec", podNetns(lab, pod.nodeName, namespace ?? "default", name ?? ""), program, ...args],
    {
      stdio: "inherit",
    },
  );
  return new Promise((resolve) => child.on("close", (code) => resolve(code ?? EXIT.invalid)));
}

function logs(io: Io, lab: string, component: string | undefined, tail: number | undefined): number {
  const paths = labStatePaths(labStateDir(lab));
  const processes = new LabProcesses(paths.dir);
  if (!component) {
    for (const c of processes.components())
      io.out(`${c}${processes.pid(c) === undefined ? " (not running)" : ""}\n`);
    return EXIT.ok;
  }
  const file = paths.logFile(component);
  if (!existsSync(file)) {
    io.err(
      `error: lab ${lab} has no log for ${component}; components: ${processes.components().join(", ")}\n`,
    );
    return EXIT.invalid;
  }
  const lines = readFileSync(file, "utf8").split("\n");
  io.out((tail ? lines.slice(-tail - 1) : lines).join("\n"));
  return EXIT.ok;
}

function parseCount(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a non-negative integer");
  return n;
}
