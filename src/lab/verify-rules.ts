import type { WatchedRule } from "./verify-counters.js";

// The rules whose counters show a path's packets, as the node agent installs them (see
// docs/netplan.md): on a CPU, a DPU or single, and inside the ztunnel pod.

const PREROUTING = "ztunnel-PREROUTING";

/** CPU, DPU, single: TCP from a captured pod is marked 0x100 (→ table 101: the DPU, or istioout). */
export const MESHED_TCP_MARK: WatchedRule = {
  label: "meshed-TCP mark 0x100",
  table: "mangle",
  chain: PREROUTING,
  includes: ["--match-set ztunnel-pods-ips src", "0x100/0x100"],
};

/** CPU: UDP is connection-skipped (0x220), never captured. */
export const UDP_SKIP: WatchedRule = {
  label: "UDP skip 0x220",
  table: "mangle",
  chain: PREROUTING,
  includes: ["-p udp -j MARK", "0x220/0x220"],
};

/** CPU: whatever arrives on the NIC is skipped (bug 14: a passthrough back to this node is not bounced). */
export const nicSkip = (nic: string): WatchedRule => ({
  label: `from-${nic} skip 0x200`,
  table: "mangle",
  chain: PREROUTING,
  includes: [`-i ${nic} -j MARK`, "0x200/0x200"],
});

/** CPU: a connection to a local meshed pod sent via the DPU; its replies follow it back (bug 15). */
export const CAPTURED_REPLY: WatchedRule = {
  label: "captured-reply connmark 0x80",
  table: "mangle",
  chain: "ztunnel-POSTROUTING",
  includes: ["--match-set ztunnel-pods-ips dst", "0x80/0x80"],
};

/** ztunnel pod: from istioout → the outbound listener. */
export const TPROXY_OUTBOUND: WatchedRule = {
  label: "TPROXY→15001",
  table: "mangle",
  chain: PREROUTING,
  includes: ["-i pistioout", "--on-port 15001"],
};

/** ztunnel pod: HBONE from istioin → the mTLS listener. */
export const TPROXY_HBONE: WatchedRule = {
  label: "TPROXY→15008",
  table: "mangle",
  chain: PREROUTING,
  includes: ["-i pistioin", "--on-port 15008"],
};

/** ztunnel pod: other TCP from istioin → the plaintext inbound listener. */
export const TPROXY_PLAINTEXT: WatchedRule = {
  label: "TPROXY→15006",
  table: "mangle",
  chain: PREROUTING,
  includes: ["-i pistioin", "--on-port 15006"],
};
