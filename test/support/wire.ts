import type { TestNetns } from "./netns.js";
import { createNetns } from "./netns.js";

// A "physical network" for kernel tests: a bridge in a namespace of its own, and nodes (namespaces)
// plugged into it by veth pairs. No address or route is ever added to the root namespace.

export interface Wire {
  readonly ns: TestNetns;
  /** Plug `node` in: a link named `nic` in the node holding `cidrAddress` (e.g. 192.168.50.130/24). */
  plug(node: TestNetns, nic: string, cidrAddress: string): void;
}

export function createWire(label: string): Wire {
  const ns = createNetns(`${label}-wire`);
  ns.sh("ip", ["link", "add", "br0", "type", "bridge"]);
  ns.sh("ip", ["link", "set", "br0", "up"]);
  let port = 0;
  return {
    ns,
    plug(node, nic, cidrAddress) {
      const peer = `p${port++}`;
      ns.sh("ip", ["link", "add", peer, "type", "veth", "peer", "name", nic, "netns", node.name]);
      ns.sh("ip", ["link", "set", peer, "master", "br0", "up"]);
      node.sh("ip", ["addr", "add", cidrAddress, "dev", nic]);
      node.sh("ip", ["link", "set", nic, "up"]);
    },
  };
}
