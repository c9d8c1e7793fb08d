import type { IpFamily } from "../configfile/net.js";
import { hex, ROUTE_PROTO } from "./constants.js";
import { compareIps } from "./members.js";
import type {
  Firewall,
  IpRule,
  IpSet,
  Link,
  NetState,
  NodePlan,
  PlanOutcome,
  Route,
  RouteTableId,
} from "./types.js";

// Text renderings in the formats operators already read: iptables-save, ipset save, ip rule,
// ip route show table N, the ip commands that create links, and sysctl's key = value.

const HOOK_ORDER = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

export function renderIptablesSave(fw: Firewall, withReasons = true): string {
  const out: string[] = [];
  for (const t of fw.tables) {
    out.push(`*${t.table}`);
    for (const name of t.chains.map((c) => c.name).sort()) out.push(`:${name} - [0:0]`);
    const jumps = [...t.jumps].sort((a, b) => HOOK_ORDER.indexOf(a.chain) - HOOK_ORDER.indexOf(b.chain));
    for (const j of jumps) out.push(`-A ${j.chain} ${j.spec}`);
    for (const chain of [...t.chains].sort((a, b) => a.name.localeCompare(b.name))) {
      for (const r of chain.rules) {
        if (withReasons && r.why) out.push(`# ${r.why}`);
        out.push(`-A ${chain.name} ${r.spec}`);
      }
    }
    out.push("COMMIT");
  }
  return out.join("\n") + "\n";
}

export function renderIpsetSave(set: IpSet): string {
  const family = set.family === 4 ? "inet" : "inet6";
  const lines = [`create ${set.name} ${set.type} family ${family} hashsize 1024 maxelem 65536 comment`];
  for (const m of set.members) lines.push(`add ${set.name} ${m.ip} comment "${m.comment}"`);
  return lines.join("\n") + "\n";
}

export function renderIpRules(rules: readonly IpRule[], family: IpFamily, localPriority: number): string {
  const defaults: { priority: number; text: string }[] = [
    { priority: localPriority, text: "from all lookup local" },
    { priority: 32766, text: "from all lookup main" },
  ];
  if (family === 4) defaults.push({ priority: 32767, text: "from all lookup default" });
  const lines = [
    ...defaults,
    ...rules.filter((r) => r.family === family).map((r) => ({ priority: r.priority, text: ipRuleText(r) })),
  ].sort((a, b) => a.priority - b.priority);
  return lines.map((l) => `${l.priority}:\t${l.text}`).join("\n") + "\n";
}

function ipRuleText(r: IpRule): string {
  const mark = r.fwmark ? ` fwmark ${hex(r.fwmark.value)}/${hex(r.fwmark.mask)}` : "";
  const action = "goto" in r.action ? `goto ${r.action.goto}` : `lookup ${r.action.lookup}`;
  return `from all${mark} ${action}`;
}

export function routeTables(routes: readonly Route[]): RouteTableId[] {
  const ids = [...new Set(routes.map((r) => r.table))];
  return ids.sort((a, b) => (a === "main" ? -1 : b === "main" ? 1 : a - b));
}

/** Routes of one table, in the kernel's order (default first, then ascending by destination). */
export function renderRoutes(routes: readonly Route[], table: RouteTableId): string {
  const mine = routes
    .filter((r) => r.table === table)
    .sort((a, b) =>
      a.dst === "default"
        ? -1
        : b.dst === "default"
          ? 1
          : compareIps(a.dst.split("/")[0] ?? "", b.dst.split("/")[0] ?? ""),
    );
  return mine.map(routeText).join("\n") + (mine.length > 0 ? "\n" : "");
}

export function routeText(r: Route): string {
  const parts: string[] = [];
  if (r.type && r.type !== "unicast") parts.push(r.type);
  parts.push(r.dst);
  if (r.via) parts.push("via", r.via);
  if (r.dev) parts.push("dev", r.dev);
  // Printed as the kernel prints it: iproute2 knows no name for offmesh's protocol number.
  if (r.proto) parts.push("proto", String(ROUTE_PROTO.number));
  if (r.scope) parts.push("scope", r.scope);
  if (r.src) parts.push("src", r.src);
  if (r.onlink) parts.push("onlink");
  return parts.join(" ");
}

export function renderLinks(state: NetState): string {
  const lines: string[] = [];
  for (const l of state.links) lines.push(...linkCommands(l));
  for (const s of state.linkSettings) lines.push(`ip link set ${s.name} mtu ${s.mtu}    # ${s.why}`);
  return lines.join("\n") + (lines.length > 0 ? "\n" : "");
}

function linkCommands(l: Link): string[] {
  const add =
    l.kind === "veth"
      ? [`ip link add ${l.name} type veth peer name ${l.peer}    # ${l.peer} is moved into the ztunnel pod`]
      : l.kind === "veth-peer"
        ? [`# ${l.name}: pod end of the veth pair the node creates`]
        : [`ip link add ${l.name} type ${l.kind} id ${l.vni} remote ${l.remote} dstport ${l.dstport}`];
  return [
    ...add,
    ...l.addresses.map((a) => `ip addr add ${a} dev ${l.name}`),
    `ip link set ${l.name} mtu ${l.mtu} up`,
  ];
}

export function renderSysctls(state: NetState): string {
  return (
    state.sysctls.map((s) => `${s.key} = ${s.value}`).join("\n") + (state.sysctls.length > 0 ? "\n" : "")
  );
}

export function renderNetState(state: NetState, family: IpFamily): string {
  const v = family === 6 ? "-6 " : "";
  const sections: [string, string][] = [];
  for (const fw of state.firewalls)
    sections.push([fw.family === 4 ? "iptables-save" : "ip6tables-save", renderIptablesSave(fw)]);
  for (const set of state.ipsets) sections.push([`ipset save ${set.name}`, renderIpsetSave(set)]);
  sections.push([`ip ${v}rule`, renderIpRules(state.rules, family, state.localRulePriority)]);
  for (const table of routeTables(state.routes)) {
    const fams = [...new Set(state.routes.filter((r) => r.table === table).map((r) => r.family))].sort();
    for (const f of fams) {
      const routes = state.routes.filter((r) => r.family === f);
      const title = `ip ${f === 6 ? "-6 " : ""}route show table ${table}${table === "main" ? "    (offmesh's routes only)" : ""}`;
      sections.push([title, renderRoutes(routes, table)]);
    }
  }
  if (state.links.length + state.linkSettings.length > 0) sections.push(["links", renderLinks(state)]);
  if (state.sysctls.length > 0) sections.push(["sysctl", renderSysctls(state)]);
  return sections.map(([title, body]) => `## ${title}\n${body}`).join("\n");
}

export function renderPlan(plan: NodePlan): string {
  const head = [`# offmesh: desired state of node ${plan.node} (role ${plan.role}, IPv${plan.family})`];
  if (plan.notes.length > 0) head.push("# notes:", ...plan.notes.map((n) => `#   - ${n}`));
  const parts = [
    head.join("\n") + "\n",
    `## CNI conflist\n${JSON.stringify(plan.conflist, null, 2)}\n`,
    renderNetState(plan.host, plan.family),
  ];
  if (plan.ztunnelPod) {
    parts.push(
      `# ---- inside the ztunnel pod's network namespace ----\n`,
      renderNetState(plan.ztunnelPod, plan.family),
    );
  }
  return parts.join("\n");
}

export function renderOutcome(outcome: PlanOutcome): string {
  return outcome.planned
    ? renderPlan(outcome.plan)
    : `# offmesh: nothing planned for node ${outcome.node}: ${outcome.reason}\n`;
}
