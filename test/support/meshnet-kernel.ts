import { execFileSync } from "node:child_process";

// Synchronous reads of a test namespace's kernel state, for the mesh's readiness checks and for
// assertions. Reads only: nothing here needs the test process's event loop to answer, so blocking
// on them is safe (unlike a connection to a service of the test process).

/** Run a command in the named namespace and return its stdout; throws on a non-zero exit. */
export function netnsSh(netns: string, cmd: string, args: readonly string[]): string {
  return execFileSync("ip", ["netns", "exec", netns, cmd, ...args], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** `ip -d link show <link>`, or undefined when the namespace has no such link. */
export function linkDetails(netns: string, link: string): string | undefined {
  try {
    return netnsSh(netns, "ip", ["-d", "link", "show", "dev", link]);
  } catch {
    return undefined;
  }
}

/** The routes of one table (`main`, or a number). */
export function routeTable(netns: string, table: string | number): string {
  return netnsSh(netns, "ip", ["route", "show", "table", String(table)]);
}

/** The mangle table as `iptables-save` prints it, with packet and byte counters. */
export function mangleRules(netns: string): string {
  return netnsSh(netns, "iptables-save", ["-c", "-t", "mangle"]);
}

/** Packets that matched the TPROXY rules redirecting to `port` (e.g. 15001), summed. */
export function tproxyPackets(netns: string, port: number): number {
  let packets = 0;
  for (const line of mangleRules(netns).split("\n")) {
    const m = /^\[(\d+):\d+\] -A \S+ .*-j TPROXY --on-port (\d+)(?:\s|$)/.exec(line);
    if (m && Number(m[2]) === port) packets += Number(m[1]);
  }
  return packets;
}
