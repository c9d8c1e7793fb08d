import type { IpFamily } from "../configfile/net.js";
import type { NodeRole } from "../topology/types.js";

// The desired state of one network namespace (a node's host namespace, or the ztunnel pod's),
// as data. Planners produce it; `render.ts` prints it in the formats of iptables-save, ipset save,
// ip rule and ip route; the reconciler (src/netapply) converges the kernel to it.

export type TableName = "mangle" | "nat";
export type BuiltinChain = "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING";

/** An iptables rule in iptables-save's canonical spelling, without the leading `-A <chain>`. */
export interface Rule {
  readonly spec: string;
  /** Why the rule exists, when it differs from the original (names the §6 fix). Rendered as a comment. */
  readonly why?: string;
}

export interface OwnedChain {
  readonly name: string;
  readonly rules: readonly Rule[];
}

/** A rule offmesh puts into a built-in chain; kept once, ahead of other users' rules. */
export interface Jump {
  readonly chain: BuiltinChain;
  readonly spec: string;
}

export interface IptablesTable {
  readonly table: TableName;
  readonly chains: readonly OwnedChain[];
  readonly jumps: readonly Jump[];
}

/** One `iptables-save` (family 4) or `ip6tables-save` (family 6) worth of owned state. */
export interface Firewall {
  readonly family: IpFamily;
  readonly tables: readonly IptablesTable[];
}

export interface IpSetMember {
  readonly ip: string;
  /** Pod UID, so an entry can be traced to its pod. */
  readonly comment: string;
}

export interface IpSet {
  readonly name: string;
  readonly type: "hash:ip";
  readonly family: IpFamily;
  readonly members: readonly IpSetMember[];
}

export type RouteTableId = number | "main";

export interface IpRule {
  readonly family: IpFamily;
  readonly priority: number;
  readonly fwmark?: { readonly value: number; readonly mask: number };
  readonly action: { readonly lookup: RouteTableId | "local" } | { readonly goto: number };
}

export interface Route {
  readonly family: IpFamily;
  readonly table: RouteTableId;
  readonly type?: "unicast" | "local" | "blackhole";
  /** `default` or a CIDR / address. */
  readonly dst: string;
  readonly via?: string;
  readonly dev?: string;
  readonly scope?: "link" | "host";
  readonly src?: string;
  readonly onlink?: boolean;
  /** Routes offmesh installs carry its protocol; routes created by the kernel do not. */
  readonly proto?: "offmesh";
}

export type TunnelKind = "geneve" | "vxlan" | "veth";

/** A link offmesh creates. `veth` links are created as a pair whose peer is moved into the ztunnel pod. */
export type Link =
  | {
      readonly kind: "geneve" | "vxlan";
      readonly name: string;
      readonly vni: number;
      readonly remote: string;
      readonly dstport: number;
      readonly addresses: readonly string[];
      readonly mtu: number;
    }
  | {
      readonly kind: "veth";
      readonly name: string;
      readonly peer: string;
      /** The peer lives in the ztunnel pod's network namespace. */
      readonly peerNetns: "ztunnel-pod";
      readonly addresses: readonly string[];
      readonly mtu: number;
    }
  | {
      /** The pod-side end of a veth pair created from the host; only addressed and brought up here. */
      readonly kind: "veth-peer";
      readonly name: string;
      readonly addresses: readonly string[];
      readonly mtu: number;
    };

/** A setting on a link someone else created (the CNI's veth of the ztunnel pod). */
export interface LinkSetting {
  readonly name: string;
  readonly mtu: number;
  readonly why: string;
}

export interface Sysctl {
  readonly key: string;
  readonly value: string;
  readonly why?: string;
}

export interface NetState {
  readonly firewalls: readonly Firewall[];
  readonly ipsets: readonly IpSet[];
  readonly rules: readonly IpRule[];
  /**
   * Priority the kernel's `lookup local` rule must sit at. 0 is the kernel default; the CPU moves
   * it so that the rule for replies of captured connections can come first (fix of bug 15).
   */
  readonly localRulePriority: number;
  readonly routes: readonly Route[];
  readonly links: readonly Link[];
  readonly linkSettings: readonly LinkSetting[];
  readonly sysctls: readonly Sysctl[];
}

/** What an ambient planner contributes to a node's host state (everything but CNI routes and masquerade). */
export type HostAmbient = NetState & { readonly notes: readonly string[] };

export interface CniConflist {
  readonly cniVersion: string;
  readonly name: string;
  readonly plugins: readonly Record<string, unknown>[];
}

export interface NodePlan {
  readonly node: string;
  readonly role: NodeRole;
  readonly family: IpFamily;
  /** Facts the plan had to work around (skipped pods, nodes routed directly, ztunnel absent …). */
  readonly notes: readonly string[];
  readonly conflist: CniConflist;
  readonly host: NetState;
  /** State inside the ztunnel pod's namespace; on DPU and single nodes while their ztunnel runs. */
  readonly ztunnelPod?: NetState;
}

export type PlanOutcome =
  | { readonly planned: true; readonly plan: NodePlan }
  | { readonly planned: false; readonly node: string; readonly reason: string };
