import { existsSync, readFileSync } from "node:fs";
import { labGet } from "../cluster/lab-client.js";
import { netnsPath } from "../cni/runtime.js";
import { isZtunnel } from "../cluster/membership.js";
import { labStateDir, labStatePaths, nodeNetns, podNetns } from "./names.js";
import { httpInNetns } from "./probe.js";
import { LabProcesses } from "./processes.js";
import { labNodes, resolveSpec } from "./spec.js";

// `offmesh lab status`: what the lab is made of and whether each part is healthy.

export interface LabStatus {
  readonly name: string;
  readonly stateDir: string;
  readonly healthy: boolean;
  readonly nodes: { name: string; role: string; ip: string; podCIDR: string; agent: string }[];
  readonly components: { name: string; pid?: number; running: boolean }[];
  readonly pods: {
    namespace: string;
    name: string;
    node?: string;
    ip?: string;
    phase: string;
    health: string;
  }[];
  readonly problems: string[];
}

const AGENT_METRICS_PORT = 15030;
const ZTUNNEL_READINESS_PORT = 15021;

export async function labStatus(lab: string): Promise<LabStatus | undefined> {
  const stateDir = labStateDir(lab);
  const paths = labStatePaths(stateDir);
  if (!existsSync(paths.spec)) return undefined;
  const resolved = resolveSpec(readFileSync(paths.spec, "utf8"), paths.spec);
  const problems: string[] = [];
  if ("issues" in resolved)
    return {
      name: lab,
      stateDir,
      healthy: false,
      nodes: [],
      components: [],
      pods: [],
      problems: ["spec.yaml is unreadable"],
    };
  const spec = resolved.spec;
  const processes = new LabProcesses(stateDir);
  const components = processes.components().map((name) => {
    const pid = processes.pid(name);
    if (pid === undefined) problems.push(`${name} is not running`);
    return { name, ...(pid !== undefined ? { pid } : {}), running: pid !== undefined };
  });
  const nodes = await Promise.all(
    labNodes(spec).map(async (n) => {
      const probe = await httpInNetns(netnsPath(nodeNetns(lab, n.name)), AGENT_METRICS_PORT, "/healthz");
      const agent = probe.status === 200 ? "healthy" : `unhealthy (${probe.error ?? `HTTP ${probe.status}`})`;
      if (probe.status !== 200) problems.push(`agent on ${n.name} is ${agent}`);
      return { name: n.name, role: n.role, ip: n.ip, podCIDR: n.podCIDR, agent };
    }),
  );
  const got = await labGet(paths.apiSocket, 3_000).catch((err: unknown) => ({
    ok: false as const,
    error: (err as Error).message,
  }));
  const pods: LabStatus["pods"] = [];
  if (!got.ok) problems.push(`lab API: ${got.error}`);
  else {
    for (const p of got.state.pods) {
      let health = p.phase === "Running" ? "running" : p.phase.toLowerCase();
      if (isZtunnel(p) && p.nodeName && p.phase === "Running") {
        const probe = await httpInNetns(
          netnsPath(podNetns(lab, p.nodeName, p.namespace, p.name)),
          ZTUNNEL_READINESS_PORT,
          "/healthz/ready",
        );
        health =
          probe.status === 200
            ? "ready"
            : `not ready (${probe.error ?? probe.body?.trim() ?? `HTTP ${probe.status}`})`;
      }
      if (health !== "running" && health !== "ready")
        problems.push(`pod ${p.namespace}/${p.name}: ${health}`);
      pods.push({
        namespace: p.namespace,
        name: p.name,
        ...(p.nodeName ? { node: p.nodeName } : {}),
        ...(p.ips[0] ? { ip: p.ips[0] } : {}),
        phase: p.phase,
        health,
      });
    }
  }
  return { name: lab, stateDir, healthy: problems.length === 0, nodes, components, pods, problems };
}

export function formatLabStatus(s: LabStatus): string {
  const lines = [
    `lab ${s.name} (${s.stateDir}): ${s.healthy ? "healthy" : "UNHEALTHY"}`,
    "",
    "NODE            ROLE    IP               POD CIDR         AGENT",
  ];
  for (const n of s.nodes)
    lines.push(`${n.name.padEnd(16)}${n.role.padEnd(8)}${n.ip.padEnd(17)}${n.podCIDR.padEnd(17)}${n.agent}`);
  lines.push("", "POD                              NODE            IP               HEALTH");
  for (const p of s.pods)
    lines.push(
      `${`${p.namespace}/${p.name}`.padEnd(33)}${(p.node ?? "-").padEnd(16)}${(p.ip ?? "-").padEnd(17)}${p.health}`,
    );
  lines.push("", "COMPONENT                        PID");
  for (const c of s.components)
    lines.push(`${c.name.padEnd(33)}${c.running ? String(c.pid) : "not running"}`);
  if (s.problems.length > 0) lines.push("", "problems:", ...s.problems.map((p) => `  - ${p}`));
  return lines.join("\n") + "\n";
}
