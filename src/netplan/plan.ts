import { lookupByName } from "../topology/lookup.js";
import type { Topology } from "../topology/types.js";
import { planCpuAmbient } from "./ambientCpu.js";
import { planProxyNodeAmbient } from "./ambientDpu.js";
import { planCniRoutes } from "./cniRoutes.js";
import { planConflist } from "./conflist.js";
import type { ConflistOptions } from "./conflist.js";
import type { NodeFacts } from "./facts.js";
import { planMasquerade } from "./masquerade.js";
import { selectMembers } from "./members.js";
import type { Firewall, HostAmbient, IptablesTable, Jump, PlanOutcome } from "./types.js";
import { planZtunnelPod } from "./ztunnelPod.js";

/**
 * The whole desired network state of one node, from the topology, what the node knows (facts) and
 * the meshed pods (in `facts.pods`). Pure: same inputs, same plan.
 *
 * Fix of bug 20: a node that is not in the topology plans nothing and says why, instead of
 * running the DPU logic with empty names.
 */
export function planNode(
  topo: Topology,
  nodeName: string,
  facts: NodeFacts,
  options: ConflistOptions = {},
): PlanOutcome {
  const found = lookupByName(topo, nodeName);
  if (!found.found) {
    return {
      planned: false,
      node: nodeName,
      reason: `${found.reason}; offmesh plans nothing for a node it does not know (add it under pairs or singles)`,
    };
  }
  const self = found.node;
  const family = topo.family ?? 4;
  const cni = planCniRoutes(topo, self, facts);
  const membership = selectMembers(topo, self, facts, facts.pods, family);

  let ambient: HostAmbient;
  if (self.role === "cpu") {
    const dpuIp = self.partner?.ip;
    if (dpuIp === undefined)
      return { planned: false, node: nodeName, reason: `CPU node ${nodeName} has no paired DPU` };
    ambient = planCpuAmbient({ family, facts, dpuIp, members: membership.members });
  } else {
    ambient = planProxyNodeAmbient({ family, facts, members: membership.members });
  }
  // The ztunnel pod's own state exists where a ztunnel runs here and its veth is known.
  const ztunnel = self.role !== "cpu" && facts.ztunnel?.hostVeth ? facts.ztunnel : undefined;
  const { notes: ambientNotes, ...hostAmbient } = ambient;
  return {
    planned: true,
    plan: {
      node: nodeName,
      role: self.role,
      family,
      notes: [...cni.notes, ...membership.notes, ...ambientNotes],
      conflist: planConflist(facts, options),
      host: {
        ...hostAmbient,
        firewalls: mergeFirewalls([...ambient.firewalls, ...planMasquerade(facts)]),
        routes: [...cni.routes, ...ambient.routes],
      },
      ...(ztunnel ? { ztunnelPod: planZtunnelPod(family, facts, ztunnel.ip) } : {}),
    },
  };
}

/**
 * Combine per-purpose firewall fragments into one document per family and table. Chains are
 * owned by exactly one fragment; jumps are keyed by (chain, rule), so a jump can never be
 * emitted twice (the original's duplicated jumps, bug 9, are impossible by construction).
 */
export function mergeFirewalls(parts: readonly Firewall[]): Firewall[] {
  type Acc = { chains: IptablesTable["chains"][number][]; jumps: Map<string, Jump> };
  const byFamily = new Map<number, Map<string, Acc>>();
  for (const part of parts) {
    const tables = byFamily.get(part.family) ?? new Map<string, Acc>();
    byFamily.set(part.family, tables);
    for (const t of part.tables) {
      const acc: Acc = tables.get(t.table) ?? { chains: [], jumps: new Map<string, Jump>() };
      tables.set(t.table, acc);
      for (const chain of t.chains) {
        if (acc.chains.some((c) => c.name === chain.name)) {
          throw new Error(`internal: chain ${t.table}/${chain.name} planned by two fragments`);
        }
        acc.chains.push(chain);
      }
      for (const jump of t.jumps) acc.jumps.set(`${jump.chain} ${jump.spec}`, jump);
    }
  }
  return [...byFamily.entries()]
    .sort(([a], [b]) => a - b)
    .map(([family, tables]) => ({
      family: family as Firewall["family"],
      tables: [...tables.entries()].map(([table, acc]) => ({
        table: table as IptablesTable["table"],
        chains: acc.chains,
        jumps: [...acc.jumps.values()],
      })),
    }));
}
