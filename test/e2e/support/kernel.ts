import { execFile } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { promisify } from "node:util";
import { LAB_ENV } from "../../../src/lab/processes.js";
import { processKind } from "../../../src/lab/verify-steps.js";

// What the kernel of a lab namespace holds, read the way an operator would: the captured-pods
// ipset, table 100, the rules offmesh owns, and the processes living in a namespace.

const run = promisify(execFile);

async function inNetns(netns: string, cmd: string, args: readonly string[]): Promise<string> {
  const r = await run("ip", ["netns", "exec", netns, cmd, ...args], { maxBuffer: 64 * 1024 * 1024 });
  return r.stdout;
}

/** Members of `ztunnel-pods-ips` (empty when the set does not exist). */
export async function ipsetMembers(netns: string): Promise<string[]> {
  const out = await inNetns(netns, "ipset", ["list", "ztunnel-pods-ips"]).catch(() => "");
  const at = out.indexOf("Members:");
  if (at < 0) return [];
  return out
    .slice(at + "Members:".length)
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter(Boolean)
    .sort();
}

/** Destinations routed by table 100. */
export async function table100(netns: string): Promise<string[]> {
  const out = await run("ip", ["-n", netns, "-json", "route", "show", "table", "100"]).then(
    (r) => r.stdout,
    () => "[]",
  );
  return (JSON.parse(out.trim() || "[]") as { dst: string }[]).map((r) => r.dst).sort();
}

/**
 * The node's offmesh state as text that does not change while nothing changes: iptables without
 * counters, policy rules, offmesh's routes (proto 176, every table), the ipset's members.
 */
export async function offmeshState(netns: string): Promise<string> {
  const iptables = (await inNetns(netns, "iptables-save", []))
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .map((l) => l.replace(/ \[\d+:\d+\]$/, ""))
    .join("\n");
  const rules = (await run("ip", ["-n", netns, "rule"])).stdout;
  const routes = (await run("ip", ["-n", netns, "route", "show", "table", "all", "proto", "176"])).stdout;
  const members = (await ipsetMembers(netns)).join(" ");
  return [iptables, rules, routes, members].join("\n---\n");
}

/** Kinds of the processes (ztunnel, agent, echo …) in each namespace. */
export async function processesIn(
  namespaces: readonly string[],
): Promise<{ netns: string; pid: number; kind: string }[]> {
  const out: { netns: string; pid: number; kind: string }[] = [];
  for (const ns of namespaces) {
    const pids = await run("ip", ["netns", "pids", ns]).then(
      (r) => r.stdout.split(/\s+/).filter(Boolean).map(Number),
      () => [] as number[],
    );
    for (const pid of pids) {
      let cmdline: string;
      try {
        cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
      } catch {
        continue;
      }
      out.push({ netns: ns, pid, kind: processKind(cmdline) });
    }
  }
  return out;
}

export async function netnsNames(): Promise<string[]> {
  const r = await run("ip", ["-json", "netns", "list"]);
  return r.stdout.trim() ? (JSON.parse(r.stdout) as { name: string }[]).map((n) => n.name) : [];
}

/** Pids whose environment carries the lab's marker (every process a lab started has it). */
export function processesOfLab(stateDir: string): number[] {
  const marker = `${LAB_ENV}=${stateDir}`;
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/environ`, "utf8").split("\0").includes(marker))
        out.push(Number(entry));
    } catch {
      // gone, or a kernel thread
    }
  }
  return out;
}

/** The root namespace's network state, without counters or anything that moves by itself. */
export async function rootNetworkState(): Promise<{
  links: string;
  routes: string;
  rules: string;
  iptables: string;
}> {
  const links = (
    JSON.parse((await run("ip", ["-json", "link"])).stdout) as {
      ifname: string;
      ifindex: number;
      address?: string;
    }[]
  )
    .map((l) => `${l.ifindex} ${l.ifname} ${l.address ?? ""}`)
    .sort()
    .join("\n");
  const routes = (JSON.parse((await run("ip", ["-json", "route"])).stdout) as Record<string, unknown>[])
    .map((r) => JSON.stringify(r))
    .sort()
    .join("\n");
  const rules = (await run("ip", ["rule"])).stdout;
  const iptables = (await run("iptables-save", [])).stdout
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .map((l) => l.replace(/ \[\d+:\d+\]$/, ""))
    .join("\n");
  return { links, routes, rules, iptables };
}
