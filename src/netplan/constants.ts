import type { IpFamily } from "../configfile/net.js";

// Marks, tables, chains and names of the original (spec: original-behaviour §3), kept so that an
// operator who knows the original reads the same rules. Each mark is a single bit (or bit set)
// because several are combined on one packet and tested with a mask.
export const MARK = {
  /** "send to the ztunnel's outbound side" (CPU: to the DPU). */
  outbound: 0x100,
  /** "route with the main table". */
  skip: 0x200,
  /** skip, and remember it in the connection mark so replies are skipped too. */
  connSkip: 0x220,
  /** packet leaving the ztunnel pod with a foreign (original) source; contains the skip bit. */
  proxy: 0x210,
  /** reply of a proxy-marked connection: steer it back into the ztunnel pod. */
  proxyReturn: 0x040,
  /**
   * offmesh addition (fix of bug 15): a connection captured inbound on the CPU whose replies are
   * addressed to the CPU itself; routed to the DPU by a rule placed before the local table.
   */
  capturedReply: 0x080,
} as const;

export const hex = (n: number): string => `0x${n.toString(16)}`;
export const markMask = (n: number, mask = n): string => `${hex(n)}/${hex(mask)}`;

export const TABLE = { inbound: 100, outbound: 101, proxy: 102 } as const;

/** ip rule priorities on the node. The reconciler owns exactly these. */
export const RULE_PRIORITY = {
  capturedReply: 90,
  /** where the CPU moves the `lookup local` rule so that `capturedReply` can precede it. */
  relocatedLocal: 99,
  skip: 100,
  outbound: 101,
  proxyReturn: 102,
  inbound: 103,
} as const;

export const MAIN_RULE_PRIORITY = 32766;

export const IPSET_NAME = "ztunnel-pods-ips";

export const CHAIN = {
  prerouting: "ztunnel-PREROUTING",
  input: "ztunnel-INPUT",
  forward: "ztunnel-FORWARD",
  output: "ztunnel-OUTPUT",
  postrouting: "ztunnel-POSTROUTING",
  masquerade: "OFFMESH-MASQ-AGENT",
} as const;

/** Prefixes of the chains offmesh owns; the reconciler never touches other chains' contents. */
export const OWNED_CHAIN_PREFIXES = ["ztunnel-", "OFFMESH-"] as const;

/** Route protocol that tags every route offmesh installs, so stale ones can be found and removed. */
export const ROUTE_PROTO = { name: "offmesh", number: 176 } as const;

/** Host-side tunnel links between a DPU (or single) node and its ztunnel pod. */
export const TUNNEL = {
  inbound: { hostLink: "istioin", podLink: "pistioin", vni: 1000 },
  outbound: { hostLink: "istioout", podLink: "pistioout", vni: 1001 },
} as const;

export const TUNNEL_PORT = { geneve: 6081, vxlan: 4789 } as const;

/** Outer headers a geneve/vxlan tunnel adds: outer IP + UDP (8) + tunnel header (8) + inner Ethernet (14). */
export const TUNNEL_OVERHEAD: Record<IpFamily, number> = { 4: 20 + 8 + 8 + 14, 6: 40 + 8 + 8 + 14 };

/** The /30 (/126) point-to-point subnets of the two tunnels: host side .1, ztunnel side .2. */
export const TUNNEL_ADDRS: Record<IpFamily, { inbound: TunnelAddrs; outbound: TunnelAddrs }> = {
  4: {
    inbound: { host: "192.168.126.1", pod: "192.168.126.2", prefix: 30 },
    outbound: { host: "192.168.127.1", pod: "192.168.127.2", prefix: 30 },
  },
  6: {
    inbound: { host: "fd16:9254:7126::1", pod: "fd16:9254:7126::2", prefix: 126 },
    outbound: { host: "fd16:9254:7127::1", pod: "fd16:9254:7127::2", prefix: 126 },
  },
};

export interface TunnelAddrs {
  readonly host: string;
  readonly pod: string;
  readonly prefix: number;
}

/** ztunnel ports (upstream numbers). */
export const ZTUNNEL_PORT = {
  outbound: 15001,
  inboundPlaintext: 15006,
  inboundHbone: 15008,
  dns: 15053,
  /** node-local HBONE: redirected inside the pod to its own 15008. */
  nodeLocalHbone: 15088,
} as const;

/** Marks used inside the ztunnel pod (upstream §3.7). */
export const POD_MARK = {
  tproxy: 0x400,
  outboundSocket: 0x401,
  inboundSocket: 0x402,
  originalSrcReturn: 0x4d3,
  mask: 0xfff,
} as const;

export const POD_RULE_PRIORITY = { tproxy: 20000, outbound: 20001, inbound: 20002, originalSrcReturn: 20003 };

export const CNI = {
  conflistName: "offmesh",
  cniVersion: "1.0.0",
  ipamDataDir: "/run/cni-ipam-state",
  /** Where the node agent listens for the `offmesh-cni` plugin (mirrors src/cni/protocol.ts). */
  agentSocket: "/run/offmesh/cni.sock",
} as const;
