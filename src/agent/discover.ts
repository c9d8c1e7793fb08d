import { randomBytes } from "node:crypto";
import type { Runner } from "../netapply/exec.js";
import type { TunnelKind } from "../netplan/types.js";

// What the agent reads from its node's kernel: which link holds the node's address, the host-side
// veth of a local pod, and which tunnel kinds the kernel can create.

interface AddrInfo {
  family?: string;
  local?: string;
}
interface IpAddrLink {
  ifname?: string;
  mtu?: number;
  addr_info?: AddrInfo[];
}

/** The link holding `ip` and its MTU; undefined when no link does (yet). */
export async function findNic(
  runner: Runner,
  ip: string,
): Promise<{ name: string; mtu: number } | undefined> {
  const out = await runner.run("ip", ["-json", "addr", "show"]);
  const links = JSON.parse(out.stdout || "[]") as IpAddrLink[];
  for (const link of links) {
    if (link.addr_info?.some((a) => a.local === ip) && link.ifname)
      return { name: link.ifname, mtu: link.mtu ?? 1500 };
  }
  return undefined;
}

/** The link the main table reaches `podIp` through: ptp's host-side veth of that pod. */
export async function hostVethOf(runner: Runner, podIp: string): Promise<string | undefined> {
  const out = await runner.run("ip", ["-json", "route", "show", "table", "main", "exact", podIp], {
    allowFail: true,
  });
  const routes = JSON.parse(out.stdout || "[]") as { dev?: string }[];
  return routes.find((r) => r.dev !== undefined)?.dev;
}

/**
 * The best tunnel kind this kernel can create: geneve, else vxlan, else a veth pair. Probed by
 * creating and deleting a link with a documentation-range remote; nothing is sent.
 */
export async function detectTunnel(runner: Runner): Promise<TunnelKind> {
  const name = `omprobe${randomBytes(3).toString("hex")}`;
  const attempts: [TunnelKind, string[]][] = [
    ["geneve", ["type", "geneve", "id", "4094", "remote", "192.0.2.1"]],
    ["vxlan", ["type", "vxlan", "id", "4094", "remote", "192.0.2.1", "dstport", "4789"]],
  ];
  for (const [kind, args] of attempts) {
    const made = await runner.run("ip", ["link", "add", name, ...args], { allowFail: true });
    if (made.code === 0) {
      await runner.run("ip", ["link", "del", name], { allowFail: true });
      return kind;
    }
  }
  return "veth";
}
