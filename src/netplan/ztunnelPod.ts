import type { IpFamily } from "../configfile/net.js";
import {
  CHAIN,
  POD_MARK,
  POD_RULE_PRIORITY,
  TABLE,
  TUNNEL,
  TUNNEL_ADDRS,
  TUNNEL_OVERHEAD,
  TUNNEL_PORT,
  ZTUNNEL_PORT,
} from "./constants.js";
import { host, rule } from "./common.js";
import type { NodeFacts } from "./facts.js";
import type { IpRule, Link, NetState, Route } from "./types.js";

const POD_ETH = "eth0";

/**
 * State inside the ztunnel pod's network namespace (original §3.7, the init container's script as
 * data): the pod ends of the two tunnels, TPROXY of what arrives on them to the ztunnel's
 * listeners, and policy routing of the ztunnel's own sockets by their marks. The per-packet LOG
 * rules of the original (bug 34) are left out.
 */
export function planZtunnelPod(family: IpFamily, facts: NodeFacts, ztunnelIp: string): NetState {
  const hostIp = facts.podGateway; // the ztunnel pod's default gateway: the host side of its veth
  const addrs = TUNNEL_ADDRS[family];
  const mtu = facts.nic.mtu;
  const proto = "offmesh" as const;
  const tproxy = (port: number): string =>
    `-j TPROXY --on-port ${port} --on-ip ${family === 4 ? "127.0.0.1" : "::1"} --tproxy-mark 0x${POD_MARK.tproxy.toString(16)}/0x${POD_MARK.mask.toString(16)}`;
  const { inbound: tin, outbound: tout } = TUNNEL;

  const links: Link[] = (["inbound", "outbound"] as const).map((dir): Link => {
    const t = TUNNEL[dir];
    const addresses = [`${addrs[dir].pod}/${addrs[dir].prefix}`];
    if (facts.tunnel === "veth") return { kind: "veth-peer", name: t.podLink, addresses, mtu };
    return {
      kind: facts.tunnel,
      name: t.podLink,
      vni: t.vni,
      remote: hostIp,
      dstport: TUNNEL_PORT[facts.tunnel],
      addresses,
      mtu,
    };
  });

  const pmark = (value: number): { value: number; mask: number } => ({ value, mask: POD_MARK.mask });
  const rules: IpRule[] = [
    {
      family,
      priority: POD_RULE_PRIORITY.tproxy,
      fwmark: pmark(POD_MARK.tproxy),
      action: { lookup: TABLE.inbound },
    },
    {
      family,
      priority: POD_RULE_PRIORITY.outbound,
      fwmark: pmark(POD_MARK.outboundSocket),
      action: { lookup: TABLE.outbound },
    },
    {
      family,
      priority: POD_RULE_PRIORITY.inbound,
      fwmark: pmark(POD_MARK.inboundSocket),
      action: { lookup: TABLE.proxy },
    },
    {
      family,
      priority: POD_RULE_PRIORITY.originalSrcReturn,
      fwmark: pmark(POD_MARK.originalSrcReturn),
      action: { lookup: TABLE.inbound },
    },
  ];

  const toHost = (table: number): Route => ({
    family,
    table,
    dst: hostIp,
    dev: POD_ETH,
    scope: "link",
    proto,
  });
  const routes: Route[] = [
    { family, table: TABLE.inbound, type: "local", dst: "default", dev: "lo", scope: "host", proto },
    toHost(TABLE.outbound),
    { family, table: TABLE.outbound, dst: "default", via: addrs.outbound.host, dev: tout.podLink, proto },
    toHost(TABLE.proxy),
    { family, table: TABLE.proxy, dst: "default", via: addrs.inbound.host, dev: tin.podLink, proto },
  ];

  const rpLinks = ["all", "default", POD_ETH, tin.podLink, tout.podLink];
  return {
    firewalls: [
      {
        family,
        tables: [
          {
            table: "mangle",
            jumps: [{ chain: "PREROUTING", spec: `-j ${CHAIN.prerouting}` }],
            chains: [
              {
                name: CHAIN.prerouting,
                rules: [
                  rule(
                    `-i ${tin.podLink} -p tcp -m tcp --dport ${ZTUNNEL_PORT.inboundHbone} ${tproxy(ZTUNNEL_PORT.inboundHbone)}`,
                  ),
                  rule(`-i ${tout.podLink} -p tcp ${tproxy(ZTUNNEL_PORT.outbound)}`),
                  rule(`-i ${tin.podLink} -p tcp ${tproxy(ZTUNNEL_PORT.inboundPlaintext)}`),
                  rule(
                    `! -d ${host(ztunnelIp, family)} -i ${POD_ETH} -p tcp -j MARK --set-xmark 0x${POD_MARK.originalSrcReturn.toString(16)}/0x${POD_MARK.mask.toString(16)}`,
                  ),
                ],
              },
            ],
          },
          {
            table: "nat",
            jumps: [{ chain: "OUTPUT", spec: `-j ${CHAIN.output}` }],
            chains: [
              {
                name: CHAIN.output,
                rules: [
                  rule(
                    `-p tcp -m tcp --dport ${ZTUNNEL_PORT.nodeLocalHbone} -j REDIRECT --to-ports ${ZTUNNEL_PORT.inboundHbone}`,
                  ),
                ],
              },
            ],
          },
        ],
      },
    ],
    ipsets: [],
    rules,
    localRulePriority: 0,
    routes,
    links,
    linkSettings:
      facts.tunnel === "veth"
        ? []
        : [
            {
              name: POD_ETH,
              mtu: mtu + TUNNEL_OVERHEAD[family],
              why: `carries ${facts.tunnel}-encapsulated packets; must match the host side of the veth`,
            },
          ],
    sysctls: family === 4 ? rpLinks.map((l) => ({ key: `net.ipv4.conf.${l}.rp_filter`, value: "0" })) : [],
  };
}
