import type { IpFamily } from "../configfile/net.js";
import { CHAIN, MARK, markMask, RULE_PRIORITY, TABLE, ZTUNNEL_PORT } from "./constants.js";
import {
  baseSysctls,
  dnsDestination,
  hasConnmark,
  hasMark,
  inboundRule,
  inSet,
  looseSourceSysctls,
  MANGLE_JUMPS,
  NAT_JUMPS,
  natAcceptRules,
  outboundRule,
  podIpSet,
  rule,
  saveConnmark,
  setMark,
  skipRule,
} from "./common.js";
import type { NodeFacts } from "./facts.js";
import type { HostAmbient, IpSetMember, Route } from "./types.js";

export interface CpuInputs {
  readonly family: IpFamily;
  readonly facts: NodeFacts;
  /** The paired DPU's address (next hop of everything this CPU's meshed pods send). */
  readonly dpuIp: string;
  readonly members: readonly IpSetMember[];
}

const FIX14 = "fix of bug 14: everything arriving from the DPU is delivered as routed, never sent back to it";
const FIX15_MARK =
  "fix of bug 15: a connection captured inbound on this CPU (from a host process or a non-mesh pod) is remembered";
const FIX15_REPLY =
  "fix of bug 15: replies of captured connections go back through the DPU, even when addressed to this host";

/**
 * Ambient rules of a CPU node (original §3.2): meshed TCP sourced by local pods is policy-routed to
 * the paired DPU without kube-proxy DNAT or masquerade; what arrives from the DPU is delivered.
 *
 * Changes from the original, each a §6 fix:
 * - bug 14: skip *everything* arriving on the NIC, not only packets to meshed pods, so a ztunnel
 *   passthrough to a non-mesh local pod is not bounced back to the DPU.
 * - bug 15: same-node inbound capture. Table 100 routes each meshed local pod via the DPU (rule
 *   103), so TCP from a non-mesh pod or a host process — also after kube-proxy DNAT — reaches the
 *   pod only through the DPU's ztunnel. Replies addressed to the CPU itself are steered by a
 *   connection mark and a rule placed before the local table; host traffic from the pod gateway
 *   address is no longer exempted.
 */
export function planCpuAmbient(input: CpuInputs): HostAmbient {
  const { family, facts, dpuIp, members } = input;
  const nic = facts.nic.name;
  const notes: string[] = [];

  const mangle = {
    table: "mangle" as const,
    jumps: MANGLE_JUMPS,
    chains: [
      { name: CHAIN.forward, rules: [rule(saveConnmark(MARK.connSkip))] },
      { name: CHAIN.input, rules: [rule(saveConnmark(MARK.connSkip))] },
      { name: CHAIN.output, rules: [] },
      {
        name: CHAIN.postrouting,
        rules: [
          rule(
            `-o ${nic} -p tcp -m conntrack --ctdir ORIGINAL ${inSet("dst")} -j CONNMARK --set-xmark ${markMask(MARK.capturedReply)}`,
            FIX15_MARK,
          ),
        ],
      },
      {
        name: CHAIN.prerouting,
        rules: [
          rule(`${hasConnmark(MARK.connSkip)} ${setMark(MARK.skip)}`),
          rule(`${hasMark(MARK.skip)} -j RETURN`),
          rule(`-i ${nic} ${setMark(MARK.skip)}`, FIX14),
          rule(`-p udp ${setMark(MARK.connSkip)}`),
          rule(`${hasMark(MARK.skip)} -j RETURN`),
          rule(`${hasConnmark(MARK.capturedReply)} ${setMark(MARK.capturedReply)}`, FIX15_REPLY),
          rule(`-p tcp ${inSet("src")} ${setMark(MARK.outbound)}`),
        ],
      },
    ],
  };

  let dns: string | undefined;
  if (facts.ztunnel?.captureDNS) dns = dnsDestination(facts.ztunnel.ip, family, ZTUNNEL_PORT.dns);
  const nat = natAcceptRules(dns);

  const routes: Route[] = [
    { family, table: TABLE.outbound, dst: "default", via: dpuIp, dev: nic, proto: "offmesh" },
    ...members.map((m): Route => ({
      family,
      table: TABLE.inbound,
      dst: m.ip,
      via: dpuIp,
      dev: nic,
      proto: "offmesh",
    })),
  ];
  if (members.length === 0)
    notes.push("no meshed pods on this node yet; the rules are in place for the first one");

  return {
    notes,
    firewalls: [
      {
        family,
        tables: [
          mangle,
          {
            table: "nat",
            jumps: NAT_JUMPS,
            chains: [
              { name: CHAIN.prerouting, rules: nat.pre },
              { name: CHAIN.postrouting, rules: nat.post },
            ],
          },
        ],
      },
    ],
    ipsets: [podIpSet(family, members)],
    rules: [
      {
        family,
        priority: RULE_PRIORITY.capturedReply,
        fwmark: { value: MARK.capturedReply, mask: MARK.capturedReply },
        action: { lookup: TABLE.outbound },
      },
      skipRule(family),
      outboundRule(family),
      inboundRule(family),
    ],
    localRulePriority: RULE_PRIORITY.relocatedLocal,
    routes,
    links: [],
    linkSettings: [],
    sysctls: [...baseSysctls(family), ...looseSourceSysctls(family, [nic], [nic])],
  };
}
