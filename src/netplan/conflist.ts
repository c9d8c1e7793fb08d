import { canonicalIp, cidrContains, parseCidr } from "../configfile/net.js";
import { CNI } from "./constants.js";
import type { NodeFacts } from "./facts.js";
import type { CniConflist } from "./types.js";

/** Where the node keeps things the conflist points at; defaults are the real node's paths. */
export interface ConflistOptions {
  /** host-local's state directory. The lab gives each emulated node its own. */
  readonly ipamDataDir?: string;
  /** The node agent's socket the chained `offmesh-cni` plugin calls. */
  readonly agentSocket?: string;
}

/**
 * The node's CNI configuration: the reference `ptp` plugin with `host-local` IPAM, `portmap`, and
 * the chained `offmesh-cni` plugin last, which holds a pod's ADD until the node agent captured it.
 * ptp puts the pod CIDR's gateway address on every host-side veth and a /32 route per pod, which
 * the ambient rules rely on. Fix of bug 6: the NIC's MTU is written (the original computed it and
 * never used it).
 */
export function planConflist(facts: NodeFacts, opts: ConflistOptions = {}): CniConflist {
  const cidrs = facts.podCIDRs.map((c) => parseCidr(c)).filter((c) => c !== undefined);
  const gateway = canonicalIp(facts.podGateway)?.ip;
  return {
    cniVersion: CNI.cniVersion,
    name: CNI.conflistName,
    plugins: [
      {
        type: "ptp",
        ipMasq: false,
        mtu: facts.nic.mtu,
        ipam: {
          type: "host-local",
          dataDir: opts.ipamDataDir ?? CNI.ipamDataDir,
          routes: cidrs.map((c) => ({ dst: c.family === 4 ? "0.0.0.0/0" : "::/0" })),
          ranges: cidrs.map((c) => [
            gateway !== undefined && cidrContains(c, gateway)
              ? { subnet: c.text, gateway }
              : { subnet: c.text },
          ]),
        },
      },
      { type: "portmap", capabilities: { portMappings: true } },
      { type: "offmesh-cni", agentSocket: opts.agentSocket ?? CNI.agentSocket },
    ],
  };
}
