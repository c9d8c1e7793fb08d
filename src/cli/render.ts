import { loadFactsFile } from "../netplan/facts.js";
import { planNode } from "../netplan/plan.js";
import { renderOutcome } from "../netplan/render.js";
import { loadTopologyFile } from "../topology/file.js";
import { EXIT, reportFailure } from "./output.js";
import type { Io } from "./output.js";

export interface RenderOptions {
  config: string;
  facts: string;
  node: string;
  json?: boolean;
}

/**
 * `offmesh render`: the node's whole desired state, as the kernel would show it once applied.
 * Exit 0 with the plan; 1 on invalid input, or when the node is not in the topology (nothing is
 * planned for it, and the reason is printed).
 */
export async function renderCommand(io: Io, opts: RenderOptions): Promise<number> {
  const json = opts.json === true;
  let outcome;
  try {
    const topology = await loadTopologyFile(opts.config);
    const facts = await loadFactsFile(opts.facts, { topology, node: opts.node });
    outcome = planNode(topology, opts.node, facts);
  } catch (err) {
    return reportFailure(io, err, json);
  }
  if (json) io.out(JSON.stringify(outcome, null, 2) + "\n");
  else if (outcome.planned) io.out(renderOutcome(outcome));
  else io.err(`error: ${opts.node}: nothing planned: ${outcome.reason}\n`);
  return outcome.planned ? EXIT.ok : EXIT.invalid;
}
