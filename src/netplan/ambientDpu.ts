import type { IpFamily } from "../configfile/net.js";
import {
  CHAIN,
  MARK,
  RULE_PRIORITY,
  TABLE,
  TUNNEL,
  TUNNEL_ADDRS,
  TUNNEL_OVERHEAD,
  TUNNEL_PORT,
  ZTUNNEL_PORT,
} from "./constants.js";
import {
  baseSysctls,
  dnsDestination,
  hasConnmark,
  hasMark,
  host,
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
import type { HostAmbient, IpSetMember, Link, LinkSetting, Route, Rule, TunnelKind } from "./types.js";

export interface ProxyNodeInputs {
  readonly family: IpFamily;
  readonly facts: NodeFacts;
  readonly members: readonly IpSetMember[];
}

/**
 * Ambient rules of a node that runs a ztunnel: a DPU (serving itself and its paired CPU) or a single
 * (serving itself). These are the upstream node rules (original §3.3) unchanged in meaning: TCP from
 * a meshed source goes into the ztunnel's outbound side through `istioout`; anything to a meshed
 * pod that is not skip-marked goes into its inbound side through `istioin` (table 100); packets the
 * ztunnel sends with a foreign source are marked 0x210 and their replies steered back into it.
 *
 * Fail closed: without a running ztunnel the tables hold blackhole routes instead of the tunnels,
 * so meshed traffic waits (TCP retransmits) rather than leaving in clear.
 */
export function planProxyNodeAmbient(input: ProxyNodeInputs): HostAmbient {
  const { family, facts, members } = input;
  const gw = facts.podGateway;
  const z = facts.ztunnel;
  const veth = z?.hostVeth;
  const notes: string[] = [];
  const tunnel = facts.tunnel;
  const addrs = TUNNEL_ADDRS[family];

  const forwardInput = [rule(saveConnmark(MARK.connSkip)), rule(saveConnmark(MARK.proxy))];
  const pre: Rule[] = [
    rule(`-i ${TUNNEL.inbound.hostLink} ${setMark(MARK.skip)}`),
    rule(`-i ${TUNNEL.inbound.hostLink} -j RETURN`),
    rule(`-i ${TUNNEL.outbound.hostLink} ${setMark(MARK.skip)}`),
    rule(`-i ${TUNNEL.outbound.hostLink} -j RETURN`),
  ];
  if (tunnel !== "veth") {
    pre.push(
      rule(`-p udp -m udp --dport ${TUNNEL_PORT[tunnel]} -j RETURN`, "the tunnel's own outer packets"),
    );
  }
  pre.push(
    rule(`${hasConnmark(MARK.connSkip)} ${setMark(MARK.skip)}`),
    rule(`${hasMark(MARK.skip)} -j RETURN`),
  );
  if (z && veth) {
    pre.push(
      rule(`! -i ${veth} ${hasConnmark(MARK.proxy)} ${setMark(MARK.proxyReturn)}`),
      rule(`${hasMark(MARK.proxyReturn)} -j RETURN`),
      rule(`! -s ${host(z.ip, family)} -i ${veth} ${setMark(MARK.proxy)}`),
      rule(`${hasMark(MARK.skip)} -j RETURN`),
      rule(`-i ${veth} ${setMark(MARK.connSkip)}`),
    );
  }
  pre.push(
    rule(`-p udp ${setMark(MARK.connSkip)}`),
    rule(`${hasMark(MARK.skip)} -j RETURN`),
    rule(`-p tcp ${inSet("src")} ${setMark(MARK.outbound)}`),
  );

  const dns = z?.captureDNS ? dnsDestination(z.ip, family, ZTUNNEL_PORT.dns) : undefined;
  const nat = natAcceptRules(dns);

  const routes: Route[] = [];
  const links: Link[] = [];
  const linkSettings: LinkSetting[] = [];
  const proto = "offmesh" as const;
  if (z && veth) {
    const toZtunnel = (table: number): Route => ({
      family,
      table,
      dst: z.ip,
      dev: veth,
      scope: "link",
      proto,
    });
    routes.push(
      toZtunnel(TABLE.inbound),
      ...members.map((m): Route => ({
        family,
        table: TABLE.inbound,
        dst: m.ip,
        via: addrs.inbound.pod,
        dev: TUNNEL.inbound.hostLink,
        src: gw,
        proto,
      })),
      toZtunnel(TABLE.outbound),
      {
        family,
        table: TABLE.outbound,
        dst: "default",
        via: addrs.outbound.pod,
        dev: TUNNEL.outbound.hostLink,
        proto,
      },
      toZtunnel(TABLE.proxy),
      { family, table: TABLE.proxy, dst: "default", via: z.ip, dev: veth, onlink: true, proto },
    );
    links.push(...tunnelLinks(tunnel, family, z.ip, facts.nic.mtu));
    if (tunnel !== "veth") {
      linkSettings.push({
        name: veth,
        mtu: facts.nic.mtu + TUNNEL_OVERHEAD[family],
        why: `carries ${tunnel}-encapsulated pod packets of up to the NIC's MTU; raised by the tunnel's overhead`,
      });
    }
  } else {
    notes.push(
      z
        ? "the ztunnel pod's host-side veth is not known yet; meshed traffic is held (fail closed)"
        : "no ztunnel pod is running here; meshed traffic is held by blackhole routes until it is (fail closed)",
    );
    const blackhole = (table: number, dst: string): Route => ({
      family,
      table,
      type: "blackhole",
      dst,
      proto,
    });
    routes.push(
      ...members.map((m) => blackhole(TABLE.inbound, m.ip)),
      blackhole(TABLE.outbound, "default"),
      blackhole(TABLE.proxy, "default"),
    );
  }

  const tunnelNames = links.length > 0 ? [TUNNEL.inbound.hostLink, TUNNEL.outbound.hostLink] : [];
  const proxyLinks = [...(veth && z ? [veth] : []), ...tunnelNames];
  return {
    notes,
    firewalls: [
      {
        family,
        tables: [
          {
            table: "mangle",
            jumps: MANGLE_JUMPS,
            chains: [
              { name: CHAIN.forward, rules: forwardInput },
              { name: CHAIN.input, rules: forwardInput },
              {
                name: CHAIN.output,
                rules: [rule(`-s ${host(gw, family)} -j MARK --set-xmark 0x220/0xffffffff`)],
              },
              { name: CHAIN.postrouting, rules: [] },
              { name: CHAIN.prerouting, rules: pre },
            ],
          },
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
      skipRule(family),
      outboundRule(family),
      {
        family,
        priority: RULE_PRIORITY.proxyReturn,
        fwmark: { value: MARK.proxyReturn, mask: MARK.proxyReturn },
        action: { lookup: TABLE.proxy },
      },
      inboundRule(family),
    ],
    localRulePriority: 0,
    routes,
    links,
    linkSettings,
    sysctls: [...baseSysctls(family), ...looseSourceSysctls(family, proxyLinks, proxyLinks)],
  };
}

/** The two host-side tunnel links to the ztunnel pod (the pod-side ends are in `ztunnelPod.ts`). */
function tunnelLinks(kind: TunnelKind, family: IpFamily, ztunnelIp: string, mtu: number): Link[] {
  const addrs = TUNNEL_ADDRS[family];
  return (["inbound", "outbound"] as const).map((dir): Link => {
    const t = TUNNEL[dir];
    const a = addrs[dir];
    const addresses = [`${a.host}/${a.prefix}`];
    if (kind === "veth")
      return { kind, name: t.hostLink, peer: t.podLink, peerNetns: "ztunnel-pod", addresses, mtu };
    return {
      kind,
      name: t.hostLink,
      vni: t.vni,
      remote: ztunnelIp,
      dstport: TUNNEL_PORT[kind],
      addresses,
      mtu,
    };
  });
}
