import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { Runner } from "../../src/netapply/exec.js";
import { IptablesBackend } from "../../src/netapply/iptables.js";
import {
  diffMembers,
  IpsetBackend,
  ipsetProblems,
  parseIpsetSave,
  planSet,
  setMismatch,
  tempSetName,
} from "../../src/netapply/ipset.js";
import { ApplyError } from "../../src/netapply/types.js";
import type { Change } from "../../src/netapply/types.js";
import { IPSET_NAME } from "../../src/netplan/constants.js";
import { renderIpsetSave } from "../../src/netplan/render.js";
import type { IpSet, IpSetMember } from "../../src/netplan/types.js";
import { createNetns as createSupportNetns, deleteNetns, rootOnly } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { examplePlan } from "../support/plans.js";

// The ipset backend: its pure parts first (no root), then against the kernel in throwaway
// network namespaces with the sets of the example nodes' plans. Kernel state is read back with
// `ipset save` text directly.

// netns.ts registers its deleting hook on the first createNetns call, which node:test attaches
// to the test that is running then; this file-level hook removes every namespace created here.
const namespaces: string[] = [];
after(() => namespaces.forEach(deleteNetns));
function createNetns(label: string): TestNetns {
  const ns = createSupportNetns(label);
  namespaces.push(ns.name);
  return ns;
}

function podSet(example: "seed" | "large", node: string): IpSet {
  const set = examplePlan(example, node).host.ipsets.find((s) => s.name === IPSET_NAME);
  assert.ok(set, `${node} plans ${IPSET_NAME}`);
  assert.ok(set.members.length > 0, `${node} captures pods`);
  return set;
}

/** `ipset save NAME` without the hash's kernel-chosen sizing (hashsize grows with the members), members sorted. */
const unsized = (line: string): string =>
  line.replace(/ hashsize \d+/, "").replace(/ bucketsize \d+ initval 0x[0-9a-f]+$/, "");

function saved(ns: TestNetns, name: string): string {
  const lines = ns.sh("ipset", ["save", name]).trim().split("\n").map(unsized);
  const [create = "", ...adds] = lines;
  return [create, ...adds.sort()].join("\n") + "\n";
}

/** What `ipset save` prints for a planned set (sized and sorted like `saved`). */
function expected(set: IpSet): string {
  const [create = "", ...adds] = renderIpsetSave(set).trim().split("\n").map(unsized);
  return [create, ...adds.sort()].join("\n") + "\n";
}

const setNames = (ns: TestNetns): string[] =>
  ns
    .sh("ipset", ["list", "-n"])
    .split("\n")
    .filter((l) => l !== "")
    .sort();

const actions = (changes: readonly Change[]): string[][] => changes.map((c) => [c.action, c.detail]);

const SAVE = [
  "create ztunnel-pods-ips hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x1f2e3d4c",
  'add ztunnel-pods-ips 10.244.1.5 comment "uid-a"',
  "add ztunnel-pods-ips 10.244.1.6",
  'add ztunnel-pods-ips 10.244.1.7 comment "uid-c"',
  "",
].join("\n");

const SET: IpSet = {
  name: IPSET_NAME,
  type: "hash:ip",
  family: 4,
  members: [
    { ip: "10.244.1.5", comment: "uid-a" },
    { ip: "10.244.1.6", comment: "uid-b" },
    { ip: "10.244.1.8", comment: "uid-d" },
  ],
};

describe("ipset: parsing and diffing (no kernel)", () => {
  it("parses create options and flags, and members with their comments", () => {
    const [s] = parseIpsetSave(SAVE);
    assert.ok(s);
    assert.equal(s.type, "hash:ip");
    assert.equal(s.options.get("family"), "inet");
    assert.equal(s.options.get("maxelem"), "65536");
    assert.ok(s.flags.has("comment"));
    assert.deepEqual(
      [...s.members],
      [
        ["10.244.1.5", "uid-a"],
        ["10.244.1.6", undefined],
        ["10.244.1.7", "uid-c"],
      ],
    );
  });

  it("compares IPv6 members in canonical form", () => {
    const [s] = parseIpsetSave('create s hash:ip family inet6 comment\nadd s fd00::5 comment "u"\n');
    assert.ok(s);
    assert.deepEqual(diffMembers([{ ip: "FD00:0::5", comment: "u" }], s.members), {
      add: [],
      update: [],
      del: [],
    });
  });

  it("diffs members: new ones added, missing ones deleted, a changed comment re-added", () => {
    const [s] = parseIpsetSave(SAVE);
    assert.ok(s);
    assert.deepEqual(diffMembers(SET.members, s.members), {
      add: [{ ip: "10.244.1.8", comment: "uid-d" }],
      update: [{ ip: "10.244.1.6", comment: "uid-b" }],
      del: ["10.244.1.7"],
    });
    assert.deepEqual(planSet(SET, s, false).lines, [
      `del ${IPSET_NAME} 10.244.1.7`,
      `add ${IPSET_NAME} 10.244.1.8 comment "uid-d"`,
      `add ${IPSET_NAME} 10.244.1.6 comment "uid-b"`,
    ]);
  });

  it("a matching set plans nothing", () => {
    const [s] = parseIpsetSave(renderIpsetSave(SET));
    assert.ok(s);
    assert.deepEqual(planSet(SET, s, false), { lines: [], changes: [] });
  });

  it("a set of another type or family is recreated; other differences are swapped", () => {
    const parse = (text: string): NonNullable<ReturnType<typeof parseIpsetSave>[number]> => {
      const [s] = parseIpsetSave(text);
      assert.ok(s);
      return s;
    };
    assert.equal(setMismatch(SET, parse("create x hash:ip family inet6 comment\n"))?.repair, "recreate");
    assert.equal(setMismatch(SET, parse("create x hash:net family inet comment\n"))?.repair, "recreate");
    assert.equal(setMismatch(SET, parse("create x hash:ip family inet\n"))?.repair, "swap");
    assert.equal(setMismatch(SET, parse("create x hash:ip family inet maxelem 2 comment\n"))?.repair, "swap");
    assert.equal(
      setMismatch(SET, parse("create x hash:ip family inet timeout 60 comment\n"))?.repair,
      "swap",
    );
    const swap = planSet(SET, parse(`create ${IPSET_NAME} hash:ip family inet\n`), true).lines;
    const temp = tempSetName(IPSET_NAME);
    assert.deepEqual(swap, [
      `destroy ${temp}`,
      `create ${temp} hash:ip family inet hashsize 1024 maxelem 65536 comment`,
      ...SET.members.map((m) => `add ${temp} ${m.ip} comment "${m.comment}"`),
      `swap ${temp} ${IPSET_NAME}`,
      `destroy ${temp}`,
    ]);
  });

  it("refuses names too long for the temporary set, quotes in comments, duplicate members", () => {
    const long = "x".repeat(30);
    const p = ipsetProblems([
      { ...SET, name: long },
      { ...SET, members: [...SET.members, { ip: "10.244.1.5", comment: 'a"b' }] },
    ]);
    assert.equal(p.length, 3, p.join("\n"));
    assert.ok(tempSetName(IPSET_NAME).length <= 31);
  });
});

describe("ipset backend against the kernel", { ...rootOnly }, () => {
  it("creates a missing set with the plan's members; a second reconcile writes nothing", async () => {
    const ns = createNetns("ipset-create");
    const set = podSet("seed", "master-dpu");
    const backend = new IpsetBackend(ns.runner);
    const r = await backend.reconcile([set]);
    assert.equal(r.writes, 1);
    assert.deepEqual(actions(r.changes)[0], ["create", `${IPSET_NAME} hash:ip family inet`]);
    assert.equal(r.changes.filter((c) => c.action === "add").length, set.members.length);
    assert.equal(saved(ns, IPSET_NAME), expected(set));
    assert.deepEqual(await backend.reconcile([set]), { changes: [], writes: 0 });
    assert.deepEqual(await backend.reconcile([set], { dryRun: true }), { changes: [], writes: 0 });
  });

  it("adds and removes members, and re-adds a member whose pod UID changed, in one restore", async () => {
    const ns = createNetns("ipset-members");
    const set = podSet("large", "cpu2-dpu");
    const backend = new IpsetBackend(ns.runner);
    await backend.reconcile([set]);
    const [first, second, ...rest] = set.members;
    assert.ok(first && second);
    const next: IpSet = {
      ...set,
      members: [
        { ip: first.ip, comment: "new-uid" },
        ...rest,
        { ip: "10.244.12.200", comment: "uid-new-pod" },
      ],
    };
    const dry = await backend.reconcile([next], { dryRun: true });
    assert.equal(dry.writes, 0);
    assert.equal(saved(ns, IPSET_NAME), expected(set));

    const r = await backend.reconcile([next]);
    assert.equal(r.writes, 1);
    assert.deepEqual(r.changes, dry.changes);
    assert.deepEqual(actions(r.changes), [
      ["delete", `${IPSET_NAME} ${second.ip}`],
      ["add", `${IPSET_NAME} 10.244.12.200 comment "uid-new-pod"`],
      ["replace", `${IPSET_NAME} ${first.ip} comment "new-uid"`],
    ]);
    assert.equal(saved(ns, IPSET_NAME), expected(next));
    assert.deepEqual(await backend.reconcile([next]), { changes: [], writes: 0 });
  });

  it("swaps in a rebuilt set when only its options are wrong (no comment extension), even while iptables uses it", async () => {
    const ns = createNetns("ipset-swap");
    ns.sh("ipset", ["create", IPSET_NAME, "hash:ip", "family", "inet"]);
    ns.sh("ipset", ["add", IPSET_NAME, "10.99.0.1"]);
    ns.sh("iptables-nft", [
      "-t",
      "mangle",
      "-A",
      "PREROUTING",
      "-m",
      "set",
      "--match-set",
      IPSET_NAME,
      "src",
      "-j",
      "ACCEPT",
    ]);
    // A temp left behind by an interrupted earlier run, with a stale member.
    ns.sh("ipset", ["create", tempSetName(IPSET_NAME), "hash:ip", "family", "inet", "comment"]);
    ns.sh("ipset", ["add", tempSetName(IPSET_NAME), "10.99.0.2"]);
    const set = podSet("seed", "master");
    const backend = new IpsetBackend(ns.runner);
    const r = await backend.reconcile([set]);
    assert.equal(r.writes, 1);
    assert.deepEqual(
      r.changes.map((c) => c.action),
      ["destroy", "swap"],
    );
    assert.match(r.changes[1]?.detail ?? "", /has no comment extension/);
    assert.equal(saved(ns, IPSET_NAME), expected(set));
    assert.deepEqual(setNames(ns), [IPSET_NAME]);
    assert.deepEqual(await backend.reconcile([set]), { changes: [], writes: 0 });
  });

  it("recreates a set of the wrong family; refuses, with the reason, while an iptables rule references it", async () => {
    const ns = createNetns("ipset-family");
    ns.sh("ipset", ["create", IPSET_NAME, "hash:ip", "family", "inet6", "comment"]);
    ns.sh("ipset", ["add", IPSET_NAME, "fd00::1", "comment", "old"]);
    ns.sh("ip6tables-legacy", [
      "-t",
      "mangle",
      "-A",
      "PREROUTING",
      "-m",
      "set",
      "--match-set",
      IPSET_NAME,
      "src",
      "-j",
      "ACCEPT",
    ]);
    const before = saved(ns, IPSET_NAME);
    const set = podSet("seed", "master-dpu");
    const backend = new IpsetBackend(ns.runner);
    await assert.rejects(backend.reconcile([set]), (e: unknown) => {
      assert.ok(e instanceof ApplyError);
      assert.match(e.message, /^ipset: .*in use by a kernel component.*referenced by an iptables rule/);
      return true;
    });
    assert.equal(saved(ns, IPSET_NAME), before);

    ns.sh("ip6tables-legacy", ["-t", "mangle", "-F", "PREROUTING"]);
    const r = await backend.reconcile([set]);
    assert.deepEqual(
      r.changes.map((c) => c.action),
      ["recreate"],
    );
    assert.match(r.changes[0]?.detail ?? "", /is hash:ip family inet6, the plan wants hash:ip family inet/);
    assert.equal(r.writes, 1);
    assert.equal(saved(ns, IPSET_NAME), expected(set));
  });

  it("applyMembers: one restore, no read; re-adding with a new comment replaces it; nothing to do writes nothing", async () => {
    const ns = createNetns("ipset-apply");
    const set = podSet("large", "cpu2");
    const backend = new IpsetBackend(ns.runner);
    await backend.reconcile([set]);
    const [gone, renamed] = set.members;
    assert.ok(gone && renamed);
    const add: IpSetMember[] = [
      { ip: "10.244.12.77", comment: "uid-77" },
      { ip: renamed.ip, comment: "uid-renamed" },
    ];
    const r = await backend.applyMembers(IPSET_NAME, add, [gone.ip]);
    assert.equal(r.writes, 1);
    assert.deepEqual(actions(r.changes), [
      ["delete", `${IPSET_NAME} ${gone.ip}`],
      ["add", `${IPSET_NAME} 10.244.12.77 comment "uid-77"`],
      ["add", `${IPSET_NAME} ${renamed.ip} comment "uid-renamed"`],
    ]);
    const now: IpSet = {
      ...set,
      members: [...set.members.filter((m) => m !== gone && m !== renamed), ...add],
    };
    assert.equal(saved(ns, IPSET_NAME), expected(now));
    assert.deepEqual(await backend.reconcile([now]), { changes: [], writes: 0 });
    // Applying the same event twice is harmless (-exist), and an empty event is free.
    assert.equal((await backend.applyMembers(IPSET_NAME, add, [gone.ip])).writes, 1);
    assert.equal(saved(ns, IPSET_NAME), expected(now));
    assert.deepEqual(await backend.applyMembers(IPSET_NAME, [], []), { changes: [], writes: 0 });
  });

  it("applyMembers does not read the kernel first", async () => {
    const calls: string[][] = [];
    class RecordingRunner extends Runner {
      override async run(cmd: string, args: readonly string[], opts?: Parameters<Runner["run"]>[2]) {
        calls.push([cmd, ...args]);
        return super.run(cmd, args, opts);
      }
    }
    const ns = createNetns("ipset-noread");
    ns.sh("ipset", ["create", IPSET_NAME, "hash:ip", "family", "inet", "comment"]);
    await new IpsetBackend(new RecordingRunner(ns.path)).applyMembers(
      IPSET_NAME,
      [{ ip: "10.0.0.9", comment: "u" }],
      [],
    );
    assert.deepEqual(calls, [["ipset", "restore", "-exist"]]);
  });

  it("5,000 members: created, re-applied without writes, changed by one restore", async () => {
    const ns = createNetns("ipset-5000");
    const members = (offset: number): IpSetMember[] =>
      Array.from({ length: 5000 }, (_, i) => {
        const n = i + offset;
        return { ip: `10.${100 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`, comment: `uid-${n}` };
      });
    const big: IpSet = { name: IPSET_NAME, type: "hash:ip", family: 4, members: members(0) };
    const backend = new IpsetBackend(ns.runner);
    assert.equal((await backend.reconcile([big])).writes, 1);
    assert.equal(saved(ns, IPSET_NAME), expected(big));
    assert.deepEqual(await backend.reconcile([big]), { changes: [], writes: 0 });
    const shifted: IpSet = { ...big, members: members(100) };
    const r = await backend.reconcile([shifted]);
    assert.equal(r.writes, 1);
    assert.equal(r.changes.filter((c) => c.action === "delete").length, 100);
    assert.equal(r.changes.filter((c) => c.action === "add").length, 100);
    assert.equal(r.changes.filter((c) => c.action === "replace").length, 0);
    assert.equal(saved(ns, IPSET_NAME), expected(shifted));
  });

  it("cleanup destroys owned sets only; refuses with the reason while iptables still uses one; runs after iptables cleanup", async () => {
    const ns = createNetns("ipset-cleanup");
    ns.sh("ipset", ["create", "KUBE-FOREIGN", "hash:ip", "family", "inet"]);
    const plan = examplePlan("seed", "master");
    const ipset = new IpsetBackend(ns.runner);
    const iptables = new IptablesBackend(ns.runner, "nft");
    await ipset.reconcile(plan.host.ipsets);
    await iptables.reconcile(plan.host.firewalls);

    await assert.rejects(ipset.cleanup(), /in use by a kernel component.*remove the rules that use it first/);
    assert.deepEqual(setNames(ns), ["KUBE-FOREIGN", IPSET_NAME].sort());

    await iptables.cleanup();
    const r = await ipset.cleanup();
    assert.deepEqual(r, {
      changes: [{ backend: "ipset", action: "destroy", detail: IPSET_NAME }],
      writes: 1,
    });
    assert.deepEqual(setNames(ns), ["KUBE-FOREIGN"]);
    assert.deepEqual(await ipset.cleanup(), { changes: [], writes: 0 });
  });

  it("an owned set the plan leaves out is destroyed by reconcile", async () => {
    const ns = createNetns("ipset-unplanned");
    const backend = new IpsetBackend(ns.runner);
    await backend.reconcile([podSet("seed", "master")]);
    const r = await backend.reconcile([]);
    assert.deepEqual(r, {
      changes: [{ backend: "ipset", action: "destroy", detail: IPSET_NAME }],
      writes: 1,
    });
    assert.deepEqual(setNames(ns), []);
  });
});
