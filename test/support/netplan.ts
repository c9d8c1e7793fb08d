import assert from "node:assert/strict";
import type { z } from "zod";
import { formatIssue } from "../../src/configfile/issues.js";
import { factsSchema } from "../../src/netplan/facts.js";
import type { NodeFacts } from "../../src/netplan/facts.js";
import { parseTopology } from "../../src/topology/index.js";
import type { Topology, TopologyNode } from "../../src/topology/index.js";

// Inputs for planner tests, built in code.

export type FactsInput = z.input<typeof factsSchema>;

/** A topology from cluster-conf.yaml lines; fails the test when they are invalid. */
export function topology(...lines: string[]): Topology {
  const parsed = parseTopology(lines.join("\n") + "\n", "cluster-conf.yaml");
  if (!parsed.ok) assert.fail(`topology rejected:\n${parsed.issues.map(formatIssue).join("\n")}`);
  return parsed.value;
}

/** Facts with the schema's defaults applied. */
export function facts(input: FactsInput): NodeFacts {
  return factsSchema.parse(input);
}

export function node(topo: Topology, name: string): TopologyNode {
  const n = topo.byName.get(name);
  assert.ok(n, `node ${name} is in the test topology`);
  return n;
}
