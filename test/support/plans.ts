import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parseFacts } from "../../src/netplan/facts.js";
import type { NodeFacts } from "../../src/netplan/facts.js";
import { planNode } from "../../src/netplan/plan.js";
import type { NodePlan } from "../../src/netplan/types.js";
import { parseTopology } from "../../src/topology/parse.js";
import { fromRoot } from "./paths.js";

/** The plan of an example node (examples/<example>/<node>.yaml), facts optionally edited first. */
export function examplePlan(
  example: string,
  node: string,
  edit: (f: NodeFacts) => NodeFacts = (f) => f,
): NodePlan {
  const configPath = `examples/${example}/cluster-conf.yaml`;
  const topo = parseTopology(readFileSync(fromRoot(configPath), "utf8"), configPath);
  if (!topo.ok) assert.fail(`${configPath}: ${JSON.stringify(topo.issues)}`);
  const factsPath = `examples/${example}/${node}.yaml`;
  const facts = parseFacts(readFileSync(fromRoot(factsPath), "utf8"), factsPath, {
    topology: topo.value,
    node,
  });
  if (!facts.ok) assert.fail(`${factsPath}: ${JSON.stringify(facts.issues)}`);
  const outcome = planNode(topo.value, node, edit(facts.value));
  if (!outcome.planned) assert.fail(`${node}: ${outcome.reason}`);
  return outcome.plan;
}
