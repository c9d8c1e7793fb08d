import assert from "node:assert/strict";
import { readdirSync, readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { basename, join } from "node:path";
import { describe, it } from "node:test";
import { parseFacts } from "../../src/netplan/facts.js";
import { planNode } from "../../src/netplan/plan.js";
import { renderOutcome } from "../../src/netplan/render.js";
import { parseTopology } from "../../src/topology/parse.js";
import { fromRoot } from "../support/paths.js";

// Every example node's rendering is pinned in test/golden/<example>/<node>.txt. A change to a
// planner shows up here as a readable diff of iptables-save / ip rule / ip route text.
// Regenerate deliberately with: UPDATE_GOLDEN=1 npm test   (then review `git diff test/golden`).

const update = process.env.UPDATE_GOLDEN === "1";

for (const example of readdirSync(fromRoot("examples")).sort()) {
  const dir = fromRoot("examples", example);
  const configPath = join("examples", example, "cluster-conf.yaml");
  if (!existsSync(fromRoot(configPath))) continue;
  describe(`golden renderings of examples/${example}`, () => {
    const topo = parseTopology(readFileSync(fromRoot(configPath), "utf8"), configPath);
    if (!topo.ok) throw new Error(`${configPath} is invalid: ${JSON.stringify(topo.issues)}`);
    const factFiles = readdirSync(dir).filter((f) => f.endsWith(".yaml") && f !== "cluster-conf.yaml");
    for (const file of factFiles.sort()) {
      const node = basename(file, ".yaml");
      it(`${node} renders exactly as test/golden/${example}/${node}.txt`, () => {
        const factsPath = join("examples", example, file);
        const facts = parseFacts(readFileSync(fromRoot(factsPath), "utf8"), factsPath, {
          topology: topo.value,
          node,
        });
        if (!facts.ok) throw new Error(`${factsPath} is invalid: ${JSON.stringify(facts.issues)}`);
        const text = renderOutcome(planNode(topo.value, node, facts.value));
        const goldenPath = fromRoot("test", "golden", example, `${node}.txt`);
        if (update) {
          mkdirSync(fromRoot("test", "golden", example), { recursive: true });
          writeFileSync(goldenPath, text);
        }
        assert.equal(text, readFileSync(goldenPath, "utf8"));
      });
    }
  });
}
