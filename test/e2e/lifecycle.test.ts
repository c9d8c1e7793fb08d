import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { isLabNetns } from "../../src/lab/names.js";
import type { VerifyReport } from "../../src/lab/verify.js";
import { rootOnly } from "../support/netns.js";
import { netnsNames, processesOfLab, rootNetworkState } from "./support/kernel.js";
import { labDownCli, offmesh, useLab } from "./support/lab.js";

// The lab as a whole: `lab verify` passes every walk on a fresh lab, and `lab down` leaves the
// machine as it found it — no namespace, link, route, rule or process — and can run twice.

let rootBefore: Awaited<ReturnType<typeof rootNetworkState>> | undefined;
const lab = useLab("l", {
  beforeUp: async () => {
    rootBefore = await rootNetworkState();
  },
});

describe("lab lifecycle", { ...rootOnly, timeout: 300_000 }, () => {
  it(
    "lab status is healthy and lab verify passes every path (exit 0, --json)",
    { timeout: 90_000 },
    async () => {
      const status = await offmesh(["lab", "status", "--name", lab.name]);
      assert.equal(status.code, 0, `lab status:\n${status.stdout}${status.stderr}`);
      const r = await offmesh(["lab", "verify", "--name", lab.name, "--json"], 60_000);
      const report = JSON.parse(r.stdout) as VerifyReport;
      const failed = report.rows.filter((row) => row.result !== "PASS");
      assert.deepEqual(failed, [], "every path passes on the default lab");
      assert.equal(r.code, 0);
      assert.deepEqual(
        report.rows.map((row) => row.id),
        ["a", "b", "c1", "c2", "c3", "c4", "d", "e", "f1", "f2"],
      );
      // verify is side-effect free: nothing it started is left in the lab.
      const v = await offmesh(["lab", "verify", "--name", lab.name, "--only", "c4"]);
      assert.equal(v.code, 0, v.stdout + v.stderr);
      assert.match(v.stdout, /^PASS +c4 +UDP/m);
      const helpers = processesOfLab(lab.stateDir).filter((pid) => /verify-udp|tcpdump/.test(cmdlineOf(pid)));
      assert.deepEqual(helpers, [], "verify left no helper process behind");
    },
  );

  it(
    "9. lab down leaves no namespace, link, route, rule or process behind, and runs twice",
    { timeout: 120_000 },
    async () => {
      assert.ok(rootBefore, "the root namespace was recorded before lab up");
      assert.ok(
        processesOfLab(lab.stateDir).length > 0,
        "the lab's processes carry its marker (the check below can see them)",
      );
      const first = await labDownCli(lab.name);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /namespaces removed, state removed/);
      assert.deepEqual(
        (await netnsNames()).filter((n) => isLabNetns(lab.name, n)),
        [],
        "no namespace of the lab is left",
      );
      assert.deepEqual(processesOfLab(lab.stateDir), [], "no process of the lab is left");
      assert.equal(existsSync(lab.stateDir), false, "the state directory is gone");
      const rootAfter = await rootNetworkState();
      assert.equal(rootAfter.links, rootBefore.links, "root namespace links");
      assert.equal(rootAfter.routes, rootBefore.routes, "root namespace routes");
      assert.equal(rootAfter.rules, rootBefore.rules, "root namespace policy rules");
      assert.equal(rootAfter.iptables, rootBefore.iptables, "root namespace iptables");
      const second = await labDownCli(lab.name);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /0 processes stopped, 0 namespaces removed/);
    },
  );
});

function cmdlineOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return "";
  }
}
