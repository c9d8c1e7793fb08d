import type { IpFamily } from "../configfile/net.js";
import { hostPrefix } from "../configfile/net.js";
import { CHAIN, IPSET_NAME, MARK, markMask, RULE_PRIORITY, TABLE } from "./constants.js";
import type { IpRule, IpSet, IpSetMember, Jump, Rule, Sysctl } from "./types.js";

export const host = (ip: string, family: IpFamily): string => `${ip}/${hostPrefix(family)}`;

export const rule = (spec: string, why?: string): Rule => (why === undefined ? { spec } : { spec, why });

export const setMark = (bits: number, mask = bits): string => `-j MARK --set-xmark ${markMask(bits, mask)}`;
export const hasMark = (bits: number): string => `-m mark --mark ${markMask(bits)}`;
export const hasConnmark = (bits: number): string => `-m connmark --mark ${markMask(bits)}`;
export const saveConnmark = (bits: number): string =>
  `-m mark --mark ${markMask(bits)} -j CONNMARK --save-mark --nfmask ${markMask(bits).split("/")[0]} --ctmask ${markMask(bits).split("/")[0]}`;
export const inSet = (dir: "src" | "dst"): string => `-m set --match-set ${IPSET_NAME} ${dir}`;

/** The five mangle jumps, one per hook, in hook order. Built from a constant list: never duplicated. */
export const MANGLE_JUMPS: readonly Jump[] = (
  [
    ["PREROUTING", CHAIN.prerouting],
    ["INPUT", CHAIN.input],
    ["FORWARD", CHAIN.forward],
    ["OUTPUT", CHAIN.output],
    ["POSTROUTING", CHAIN.postrouting],
  ] as const
).map(([chain, target]) => ({ chain, spec: `-j ${target}` }));

export const NAT_JUMPS: readonly Jump[] = [
  { chain: "PREROUTING", spec: `-j ${CHAIN.prerouting}` },
  { chain: "POSTROUTING", spec: `-j ${CHAIN.postrouting}` },
];

/** Meshed TCP keeps its service VIP and pod source: no kube-proxy DNAT, no masquerade, on this hop. */
export function natAcceptRules(dnsDnat: string | undefined): { pre: Rule[]; post: Rule[] } {
  const pre = [rule(`${hasMark(MARK.outbound)} -j ACCEPT`)];
  if (dnsDnat !== undefined)
    pre.push(rule(`-p udp ${inSet("src")} -m udp --dport 53 -j DNAT --to-destination ${dnsDnat}`));
  return { pre, post: [rule(`${hasMark(MARK.outbound)} -j ACCEPT`)] };
}

export function podIpSet(family: IpFamily, members: readonly IpSetMember[]): IpSet {
  return { name: IPSET_NAME, type: "hash:ip", family, members };
}

export const skipRule = (family: IpFamily): IpRule => ({
  family,
  priority: RULE_PRIORITY.skip,
  fwmark: { value: MARK.skip, mask: MARK.skip },
  action: { goto: 32766 },
});

export const outboundRule = (family: IpFamily): IpRule => ({
  family,
  priority: RULE_PRIORITY.outbound,
  fwmark: { value: MARK.outbound, mask: MARK.outbound },
  action: { lookup: TABLE.outbound },
});

export const inboundRule = (family: IpFamily): IpRule => ({
  family,
  priority: RULE_PRIORITY.inbound,
  action: { lookup: TABLE.inbound },
});

export function dnsDestination(ip: string, family: IpFamily, port: number): string {
  return family === 4 ? `${ip}:${port}` : `[${ip}]:${port}`;
}

/** Sysctls every role needs: forwarding, and a conntrack that tolerates a proxy's two TCP legs. */
export function baseSysctls(family: IpFamily): Sysctl[] {
  return [
    family === 4
      ? { key: "net.ipv4.ip_forward", value: "1", why: "pod traffic is routed through this node" }
      : { key: "net.ipv6.conf.all.forwarding", value: "1", why: "pod traffic is routed through this node" },
    {
      key: "net.netfilter.nf_conntrack_tcp_be_liberal",
      value: "1",
      why: "the two TCP legs of a transparent proxy share one 5-tuple on the host; strict window tracking would mark the second leg INVALID and lose its connection mark",
    },
  ];
}

/** rp_filter off (and accept_local on) where packets legitimately arrive with a foreign source. */
export function looseSourceSysctls(
  family: IpFamily,
  links: readonly string[],
  acceptLocal: readonly string[],
): Sysctl[] {
  if (family === 6) return []; // IPv6 has no rp_filter sysctl; nothing to relax
  const why = "fix of bug 13: written unconditionally (the original's loop condition was inverted)";
  return [
    ...["all", "default", ...links].map((l) => ({ key: `net.ipv4.conf.${l}.rp_filter`, value: "0", why })),
    ...acceptLocal.map((l) => ({
      key: `net.ipv4.conf.${l}.accept_local`,
      value: "1",
      why: "packets whose source is one of this node's addresses arrive here from the proxy",
    })),
  ];
}
