import { resolve } from "node:path";
import type { Command } from "commander";
import { pino } from "pino";
import type { Logger } from "pino";
import {
  labApply,
  LabApiCallError,
  labDelete,
  labGet,
  labSetTopology,
  LabClusterSource,
} from "../cluster/lab-client.js";
import type {
  ClusterNamespace,
  ClusterNode,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
} from "../cluster/types.js";
import { ConfigError, formatIssue } from "../configfile/issues.js";
import type { ConfigIssue } from "../configfile/issues.js";
import { readConfigText } from "../configfile/read.js";
import { locateIssues, parseManifestRefs, parseManifests } from "../lab/api/manifests.js";
import type { LocatedObject, LocatedRef } from "../lab/api/manifests.js";
import type { DeletedObject, ObjectRef, StateBody } from "../lab/api/protocol.js";
import { DEFAULT_LAB_NAME, defaultApiSocket, labStateDir } from "../lab/names.js";
import type { ObjectKind } from "../lab/api/schema.js";
import {
  DEFAULT_SERVICE_CIDR,
  LabApiInUseError,
  LabApiServer,
  LabStateFileError,
} from "../lab/api/server.js";
import { EXIT, table } from "./output.js";
import type { Io } from "./output.js";

// `offmesh lab apiserver|apply|delete|get`: the lab's API server and its kubectl. The `lab`
// command itself (and `lab up`/`down`) lives in lab.ts, which calls addLabApiCommands.

/** How a daemon gets its cluster: the lab API, or a state file and cluster-conf.yaml. */
export type ClusterInput =
  | { readonly kind: "api"; readonly socket: string }
  | { readonly kind: "files"; readonly clusterState: string; readonly clusterConf: string };

/** The `--cluster-api` / `--cluster-state` + `--cluster-conf` choice, or the usage error. */
export function clusterInput(flags: {
  clusterApi?: string;
  clusterState?: string;
  clusterConf?: string;
}): ClusterInput | { readonly error: string } {
  const files = flags.clusterState !== undefined || flags.clusterConf !== undefined;
  if (flags.clusterApi !== undefined) {
    if (files) return { error: "--cluster-api cannot be combined with --cluster-state or --cluster-conf" };
    return { kind: "api", socket: flags.clusterApi };
  }
  if (flags.clusterState !== undefined && flags.clusterConf !== undefined)
    return { kind: "files", clusterState: flags.clusterState, clusterConf: flags.clusterConf };
  if (files)
    return { error: "--cluster-state and --cluster-conf go together (or use --cluster-api <socket>)" };
  return {
    error:
      "say where the cluster comes from: --cluster-api <socket> (the lab API server), or --cluster-state <file> with --cluster-conf <file>",
  };
}

/** A LabClusterSource that reports lost and regained connections through a daemon's logger. */
export function labSourceFor(socket: string, log: Logger): LabClusterSource {
  return new LabClusterSource({
    socketPath: socket,
    log: { info: (m) => log.info(m), warn: (m) => log.warn(m) },
  });
}

const KIND_NAMES: Readonly<Record<string, ObjectKind>> = {
  pod: "pod",
  pods: "pod",
  po: "pod",
  service: "service",
  services: "service",
  svc: "service",
  policy: "policy",
  policies: "policy",
  authorizationpolicy: "policy",
  authorizationpolicies: "policy",
  ap: "policy",
  node: "node",
  nodes: "node",
  no: "node",
  namespace: "namespace",
  namespaces: "namespace",
  ns: "namespace",
};
const KIND_LIST = "pods, services, policies, nodes, namespaces";

interface ClientFlags {
  socket?: string;
  name: string;
}

export function addLabApiCommands(lab: Command, io: Io, setExit: (code: number) => void): void {
  const nameOption = (c: Command): Command => c.option("--name <name>", "the lab's name", DEFAULT_LAB_NAME);
  const socketOption = (c: Command): Command =>
    c.option("--socket <path>", `the lab API socket (default: ${defaultApiSocket("<name>")})`);

  nameOption(
    lab
      .command("apiserver")
      .description("run the lab API server (the lab's Kubernetes API) in the foreground; SIGTERM stops it")
      .option("--state-dir <dir>", `holds cluster.json and api.sock (default: ${labStateDir("<name>")})`)
      .option("--socket <path>", "the API socket (default: <state-dir>/api.sock)")
      .option("--cluster-conf <file>", "set the topology from this cluster-conf.yaml at start")
      .option("--service-cidr <cidr>", "range of the service addresses it allocates", DEFAULT_SERVICE_CIDR),
  ).action(
    async (
      flags: { stateDir?: string; socket?: string; clusterConf?: string; serviceCidr: string },
      cmd: Command,
    ) => setExit(await apiServerCommand(io, { ...flags, name: labName(cmd) })),
  );

  socketOption(
    nameOption(
      lab
        .command("apply")
        .description("create or update the objects of Kubernetes-style manifests (and/or the topology)")
        .option("-f, --file <file...>", "manifests: multi-document YAML (- reads stdin)")
        .option("--cluster-conf <file>", "replace the topology with this cluster-conf.yaml")
        .option("--json", "print the API server's answer as JSON"),
    ),
  ).action(
    async (flags: ClientFlags & { file?: string[]; clusterConf?: string; json?: boolean }, cmd: Command) =>
      setExit(await applyCommand(io, { ...flags, name: labName(cmd) })),
  );

  socketOption(
    nameOption(
      lab
        .command("delete")
        .description("delete the objects of manifests, or one object: <kind> <namespace>/<name>")
        .argument("[kind]", KIND_LIST)
        .argument(
          "[name]",
          "<namespace>/<name>, or <name> (nodes, namespaces; pods etc. in namespace default)",
        )
        .option("-f, --file <file...>", "delete what these manifests define")
        .option("--ignore-not-found", "objects that do not exist are not an error"),
    ),
  ).action(
    async (
      kind: string | undefined,
      name: string | undefined,
      flags: ClientFlags & { file?: string[]; ignoreNotFound?: boolean },
      cmd: Command,
    ) => setExit(await deleteCommand(io, kind, name, { ...flags, name: labName(cmd) })),
  );

  socketOption(
    nameOption(
      lab
        .command("get")
        .description("list the cluster's objects")
        .argument("[kind]", `${KIND_LIST} (default: all of them)`)
        .option("--json", "machine-readable output"),
    ),
  ).action(async (kind: string | undefined, flags: ClientFlags & { json?: boolean }, cmd: Command) =>
    setExit(await getCommand(io, kind, { ...flags, name: labName(cmd) })),
  );
}

/** `--name` as given on this command or on `lab` (which lab.ts may define too); else the default. */
function labName(cmd: Command): string {
  for (let c: Command | null = cmd; c; c = c.parent) {
    const source = c.getOptionValueSource("name");
    if (source !== undefined && source !== "default") return String(c.getOptionValue("name"));
  }
  return DEFAULT_LAB_NAME;
}

const printIssues = (io: Io, issues: readonly ConfigIssue[]): number => {
  for (const issue of issues) io.err(`error: ${formatIssue(issue)}\n`);
  return EXIT.invalid;
};

/** Transport failures and unreadable files as one line each; anything else is not ours to word. */
function reportError(io: Io, err: unknown): number {
  if (err instanceof ConfigError) return printIssues(io, err.issues);
  if (err instanceof LabApiCallError || err instanceof LabApiInUseError || err instanceof LabStateFileError) {
    io.err(`error: ${err.message}\n`);
    return EXIT.invalid;
  }
  throw err;
}

async function apiServerCommand(
  io: Io,
  flags: { stateDir?: string; socket?: string; clusterConf?: string; serviceCidr: string; name: string },
): Promise<number> {
  let server: LabApiServer;
  try {
    const topology = flags.clusterConf
      ? { text: await readConfigText(flags.clusterConf), source: resolve(flags.clusterConf) }
      : undefined;
    server = await LabApiServer.start({
      stateDir: flags.stateDir ?? labStateDir(flags.name),
      ...(flags.socket ? { socketPath: flags.socket } : {}),
      serviceCIDR: flags.serviceCidr,
      log: pino({ name: "offmesh-lab-apiserver" }, pino.destination(2)),
    });
    if (topology) {
      const set = await server.setTopology(topology);
      if (!set.ok) {
        await server.stop();
        return printIssues(io, locateIssues([], set.issues, topology.source));
      }
    }
  } catch (err) {
    return reportError(io, err);
  }
  io.err(
    `offmesh lab API server on ${server.socketPath}: ${server.statePath}, revision ${server.currentRevision()}\n`,
  );
  await new Promise<void>((done) => {
    process.once("SIGTERM", () => done());
    process.once("SIGINT", () => done());
  });
  await server.stop();
  return EXIT.ok;
}

async function readManifest(file: string): Promise<string> {
  if (file !== "-") return readConfigText(file);
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

const describeRef = (r: ObjectRef): string => `${r.kind} ${r.namespace ? `${r.namespace}/` : ""}${r.name}`;

async function applyCommand(
  io: Io,
  flags: ClientFlags & { file?: string[]; clusterConf?: string; json?: boolean },
): Promise<number> {
  if (!flags.file && !flags.clusterConf) {
    io.err("error: give manifests with -f <file> and/or a topology with --cluster-conf <file>\n");
    return EXIT.usage;
  }
  const socket = flags.socket ?? defaultApiSocket(flags.name);
  try {
    // Every file is read and checked before anything is sent: a typo in the last file changes nothing.
    const sent: LocatedObject[] = [];
    const issues: ConfigIssue[] = [];
    for (const file of flags.file ?? []) {
      const parsed = parseManifests(await readManifest(file), file);
      if (parsed.ok) sent.push(...parsed.value);
      else issues.push(...parsed.issues);
    }
    if (issues.length > 0) return printIssues(io, issues);
    const answers: unknown[] = [];
    if (flags.clusterConf) {
      const source = resolve(flags.clusterConf);
      const set = await labSetTopology(socket, { text: await readConfigText(flags.clusterConf), source });
      if (!set.ok) return printIssues(io, locateIssues([], set.issues, source));
      answers.push(set);
      if (!flags.json) io.out(`topology ${source} ${set.changed ? "configured" : "unchanged"}\n`);
    }
    if (sent.length > 0) {
      const applied = await labApply(
        socket,
        sent.map((o) => o.object),
      );
      if (!applied.ok)
        return printIssues(io, locateIssues(sent, applied.issues, flags.file?.[0] ?? "(request)"));
      answers.push(applied);
      if (!flags.json) for (const a of applied.applied) io.out(`${describeRef(a)} ${a.action}\n`);
    }
    if (flags.json) io.out(JSON.stringify(answers.length === 1 ? answers[0] : answers, null, 2) + "\n");
    return EXIT.ok;
  } catch (err) {
    return reportError(io, err);
  }
}

async function deleteCommand(
  io: Io,
  kindArg: string | undefined,
  nameArg: string | undefined,
  flags: ClientFlags & { file?: string[]; ignoreNotFound?: boolean },
): Promise<number> {
  const socket = flags.socket ?? defaultApiSocket(flags.name);
  if (flags.file && kindArg !== undefined) {
    io.err("error: give either -f <file> or <kind> <namespace>/<name>, not both\n");
    return EXIT.usage;
  }
  let targets: LocatedRef[] | undefined;
  let refs: ObjectRef[];
  try {
    if (flags.file) {
      targets = [];
      const issues: ConfigIssue[] = [];
      for (const file of flags.file) {
        const parsed = parseManifestRefs(await readManifest(file), file);
        if (parsed.ok) targets.push(...parsed.value);
        else issues.push(...parsed.issues);
      }
      if (issues.length > 0) return printIssues(io, issues);
      refs = targets.map((t) => t.ref);
    } else {
      const ref = refFromArgs(kindArg, nameArg);
      if ("error" in ref) {
        io.err(`error: ${ref.error}\n`);
        return EXIT.usage;
      }
      refs = [ref];
    }
    const deleted = await labDelete(socket, refs, { ignoreMissing: flags.ignoreNotFound === true });
    if (!deleted.ok) {
      if (targets)
        return printIssues(io, locateIssues(targets, deleted.issues, flags.file?.[0] ?? "(request)"));
      for (const i of deleted.issues) io.err(`error: ${i.message}\n`);
      return EXIT.invalid;
    }
    for (const d of deleted.deleted) io.out(`${describeRef(d)} deleted${cascadeNote(d)}\n`);
    return EXIT.ok;
  } catch (err) {
    return reportError(io, err);
  }
}

const cascadeNote = (d: DeletedObject): string =>
  d.cascade ? (d.kind === "pod" ? " (with its namespace or node)" : " (with its namespace)") : "";

function refFromArgs(
  kindArg: string | undefined,
  nameArg: string | undefined,
): ObjectRef | { error: string } {
  if (kindArg === undefined || nameArg === undefined)
    return { error: "give -f <file>, or <kind> and <namespace>/<name> (e.g. lab delete pod default/client)" };
  const kind = KIND_NAMES[kindArg.toLowerCase()];
  if (!kind) return { error: `unknown kind "${kindArg}"; one of ${KIND_LIST}` };
  const slash = nameArg.indexOf("/");
  if (kind === "node" || kind === "namespace") {
    if (slash >= 0) return { error: `a ${kind} has no namespace: give its name only` };
    return { kind, name: nameArg };
  }
  if (slash < 0) return { kind, namespace: "default", name: nameArg };
  const namespace = nameArg.slice(0, slash);
  const name = nameArg.slice(slash + 1);
  if (namespace === "" || name === "" || name.includes("/"))
    return { error: `"${nameArg}" is not <namespace>/<name>` };
  return { kind, namespace, name };
}

type Section = "nodes" | "namespaces" | "pods" | "services" | "policies";
const SECTIONS: Readonly<Record<ObjectKind, Section>> = {
  node: "nodes",
  namespace: "namespaces",
  pod: "pods",
  service: "services",
  policy: "policies",
};

async function getCommand(
  io: Io,
  kindArg: string | undefined,
  flags: ClientFlags & { json?: boolean },
): Promise<number> {
  let section: Section | undefined;
  if (kindArg !== undefined) {
    const kind = KIND_NAMES[kindArg.toLowerCase()];
    if (!kind) {
      io.err(`error: unknown kind "${kindArg}"; one of ${KIND_LIST}\n`);
      return EXIT.usage;
    }
    section = SECTIONS[kind];
  }
  try {
    const got = await labGet(flags.socket ?? defaultApiSocket(flags.name));
    if (!got.ok) {
      io.err(`error: ${got.error}\n`);
      return EXIT.invalid;
    }
    if (flags.json) {
      const body = section ? got.state[section] : { revision: got.revision, ...got.state };
      io.out(JSON.stringify(body, null, 2) + "\n");
      return EXIT.ok;
    }
    if (section) {
      io.out(formatSection(got.state, section));
      return EXIT.ok;
    }
    io.out(`revision ${got.revision}, topology ${got.state.topology?.source ?? "(none)"}\n`);
    for (const s of ["nodes", "namespaces", "pods", "services", "policies"] as const)
      io.out(`\n${formatSection(got.state, s)}`);
    return EXIT.ok;
  } catch (err) {
    return reportError(io, err);
  }
}

const labelText = (labels: Readonly<Record<string, string>> | undefined): string =>
  Object.entries(labels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(",") || "-";
const listText = (values: readonly string[]): string => (values.length > 0 ? values.join(",") : "-");

export function formatSection(state: StateBody, section: Section): string {
  const rows = ((): { header: string[]; rows: string[][] } => {
    switch (section) {
      case "nodes":
        return {
          header: ["NODE", "INTERNAL-IP", "POD-CIDR", "LABELS"],
          rows: state.nodes.map((n: ClusterNode) => [
            n.name,
            listText(n.internalIPs),
            listText(n.podCIDRs),
            labelText(n.labels),
          ]),
        };
      case "namespaces":
        return {
          header: ["NAMESPACE", "LABELS"],
          rows: state.namespaces.map((n: ClusterNamespace) => [n.name, labelText(n.labels)]),
        };
      case "pods":
        return {
          header: ["NAMESPACE", "POD", "NODE", "IP", "STATUS", "UID"],
          rows: state.pods.map((p: ClusterPod) => [
            p.namespace,
            p.name,
            p.nodeName ?? "-",
            listText(p.ips),
            p.terminating ? "Terminating" : `${p.phase}${p.ready ? "" : ",NotReady"}`,
            p.uid,
          ]),
        };
      case "services":
        return {
          header: ["NAMESPACE", "SERVICE", "CLUSTER-IP", "PORTS", "SELECTOR"],
          rows: state.services.map((s: ClusterService) => [
            s.namespace,
            s.name,
            s.clusterIPs.length > 0 ? s.clusterIPs.join(",") : "None",
            listText(
              s.ports.map(
                (p) => `${p.port}${p.targetPort !== p.port ? `→${p.targetPort}` : ""}/${p.protocol}`,
              ),
            ),
            s.selector ? labelText(s.selector) : "(none)",
          ]),
        };
      case "policies":
        return {
          header: ["NAMESPACE", "POLICY", "ACTION"],
          rows: state.policies.map((p: ClusterPolicy) => [
            p.namespace,
            p.name,
            String((p.spec as { action?: unknown } | null)?.action ?? "ALLOW"),
          ]),
        };
    }
  })();
  if (rows.rows.length === 0) return `no ${section}\n`;
  return table(rows.header, rows.rows);
}
