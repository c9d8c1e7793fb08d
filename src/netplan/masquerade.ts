import { parseCidr } from "../configfile/net.js";
import type { IpFamily } from "../configfile/net.js";
import { CHAIN } from "./constants.js";
import type { NodeFacts } from "./facts.js";
import type { Firewall } from "./types.js";

const COMMENT = {
  jump: "offmesh-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom OFFMESH-MASQ-AGENT chain",
  cluster: "offmesh-masq-agent: cluster pod traffic is not subject to MASQUERADE",
  last: "offmesh-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)",
};

/**
 * Masquerade for traffic leaving the cluster's pod network (kindnet's masq agent, same rules on
 * every role), one chain per family the cluster's pod CIDRs use.
 */
export function planMasquerade(facts: NodeFacts): Firewall[] {
  const byFamily = new Map<IpFamily, string[]>();
  for (const text of facts.clusterPodCIDRs) {
    const cidr = parseCidr(text);
    if (!cidr) continue;
    const known = byFamily.get(cidr.family) ?? [];
    if (!known.includes(cidr.text)) byFamily.set(cidr.family, [...known, cidr.text]);
  }
  return [...byFamily.entries()]
    .sort(([a], [b]) => a - b)
    .map(([family, cidrs]) => ({
      family,
      tables: [
        {
          table: "nat" as const,
          chains: [
            {
              name: CHAIN.masquerade,
              rules: [
                ...cidrs.map((c) => ({
                  spec: `-d ${c} -m comment --comment "${COMMENT.cluster}" -j RETURN`,
                })),
                { spec: `-m comment --comment "${COMMENT.last}" -j MASQUERADE` },
              ],
            },
          ],
          jumps: [
            {
              chain: "POSTROUTING" as const,
              spec: `-m addrtype ! --dst-type LOCAL -m comment --comment "${COMMENT.jump}" -j ${CHAIN.masquerade}`,
            },
          ],
        },
      ],
    }));
}
