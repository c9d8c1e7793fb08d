import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { removeDirIfEmpty } from "../../src/lab/down.js";

describe("lab down: the shared run root", () => {
  it("goes with the last lab's state directory, stays while another lab's is there, and may be gone already", () => {
    const base = mkdtempSync(join(tmpdir(), "offmesh-labdown-"));
    try {
      const root = join(base, "offmesh-lab");
      mkdirSync(join(root, "other"), { recursive: true });
      writeFileSync(join(root, "other", "state.json"), "{}");
      assert.equal(removeDirIfEmpty(root), false);
      assert.ok(existsSync(join(root, "other", "state.json")), "another lab's state is untouched");
      rmSync(join(root, "other"), { recursive: true });
      assert.equal(removeDirIfEmpty(root), true);
      assert.equal(existsSync(root), false);
      assert.equal(removeDirIfEmpty(root), false);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
