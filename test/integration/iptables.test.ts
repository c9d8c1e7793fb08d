import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import type { IpFamily } from "../../src/configfile/net.js";
import { Runner } from "../../src/netapply/exec.js";
import { detectIptablesMode, IptablesBackend } from "../../src/netapply/iptables.js";
import type { IptablesMode } from "../../src/netapply/iptables.js";
import { ApplyError } from "../../src/netapply/types.js";
import type { Change } from "../../src/netapply/types.js";
import { renderIptablesSave } from "../../src/netplan/render.js";
import type { Firewall, NetState } from "../../src/netplan/types.js";
import { createNetns as createSupportNetns, deleteNetns, rootOnly } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { examplePlan } from "../support/plans.js";

// The iptables backend against the kernel, in throwaway network namespaces, in both iptables
// modes, with the plans of the example nodes. Assertions read the kernel with the iptables tools
// directly (not with the backend's parser), so they check the backend rather than agree with it.

// netns.ts registers its deleting hook on the first createNetns call, which node:test attaches
// to the test that is running then; this file-level hook removes every namespace created here.
const namespaces: string[] = [];
after(() => namespaces.forEach(deleteNetns));
function createNetns(label: string): TestNetns {
  const ns = createSupportNetns(label);
  namespaces.push(ns.name);
  return ns;
}

function firewalls(state: NetState | undefined): readonly Firewall[] {
  assert.ok(state, "the plan has this state");
  return state.firewalls;
}

const OWNED = /^(ztunnel-|OFFMESH-)/;
const JUMP_TO_OWNED = / -j (ztunnel-|OFFMESH-)\S*$/;

const tool = (family: IpFamily, mode: IptablesMode): string =>
  `${family === 4 ? "iptables" : "ip6tables"}-${mode}`;

/** `iptables-save` of one table (or all), without its comment lines and counters. */
function save(ns: TestNetns, mode: IptablesMode, family: IpFamily, table?: string): string {
  const text = ns.sh(`${tool(family, mode)}-save`, table ? ["-t", table] : []);
  return text
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => l.replace(/\[\d+:\d+\]$/, "[0:0]"))
    .join("\n");
}

function isOwnedLine(line: string): boolean {
  const decl = /^:(\S+) /.exec(line);
  if (decl?.[1]) return OWNED.test(decl[1]);
  const rule = /^-A (\S+) (.*)$/.exec(line);
  if (!rule?.[1] || rule[2] === undefined) return false;
  return OWNED.test(rule[1]) || JUMP_TO_OWNED.test(` ${rule[2]}`);
}

const ownedLines = (saveText: string): string[] => saveText.split("\n").filter(isOwnedLine);
const foreignLines = (saveText: string): string[] =>
  saveText.split("\n").filter((l) => /^[:-]/.test(l) && !isOwnedLine(l));

/** The plan's lines of one table as renderIptablesSave prints them (without `why` comments). */
function expectedLines(fw: Firewall, table: string): string[] {
  const lines = renderIptablesSave(fw, false).split("\n");
  const start = lines.indexOf(`*${table}`);
  assert.ok(start >= 0, `the plan has table ${table}`);
  return lines.slice(start + 1, lines.indexOf("COMMIT", start));
}

function assertMatchesPlan(ns: TestNetns, mode: IptablesMode, desired: readonly Firewall[]): void {
  for (const fw of desired)
    for (const t of fw.tables)
      assert.deepEqual(
        ownedLines(save(ns, mode, fw.family, t.table)),
        expectedLines(fw, t.table),
        `IPv${fw.family} ${t.table}`,
      );
}

/** Rules of one built-in chain, in order. */
const chainRules = (saveText: string, chain: string): string[] =>
  saveText
    .split("\n")
    .filter((l) => l.startsWith(`-A ${chain} `))
    .map((l) => l.slice(`-A ${chain} `.length));

function assertJumpsOnTop(ns: TestNetns, mode: IptablesMode, fw: Firewall): void {
  for (const t of fw.tables) {
    const text = save(ns, mode, fw.family, t.table);
    for (const chain of new Set(t.jumps.map((j) => j.chain))) {
      const want = t.jumps.filter((j) => j.chain === chain).map((j) => j.spec);
      assert.deepEqual(chainRules(text, chain).slice(0, want.length), want, `${t.table} ${chain}`);
    }
  }
}

/** No owned chain or jump left in any table of either family. */
function assertNoOwnedState(ns: TestNetns, mode: IptablesMode): void {
  for (const family of [4, 6] as const)
    assert.deepEqual(ownedLines(save(ns, mode, family)), [], `IPv${family}`);
}

const pairs = (changes: readonly Change[]): string[][] => changes.map((c) => [c.action, c.detail]).sort();

function withIpset(ns: TestNetns): TestNetns {
  ns.sh("ipset", ["create", "ztunnel-pods-ips", "hash:ip", "family", "inet", "comment"]);
  return ns;
}

/** Foreign state another component (kube-proxy, a CNI) put there before offmesh ran. */
function addForeignState(ns: TestNetns, mode: IptablesMode): void {
  ns.sh(
    `${tool(4, mode)}-restore`,
    ["--noflush"],
    [
      "*mangle",
      ":KUBE-ztunnel-lookalike - [0:0]",
      "-A PREROUTING -p icmp -j ACCEPT",
      "-A PREROUTING -j KUBE-ztunnel-lookalike",
      '-A INPUT -m comment --comment "mentions ztunnel-INPUT" -j ACCEPT',
      "-A POSTROUTING -o lo -j RETURN",
      "-A KUBE-ztunnel-lookalike -j RETURN",
      "COMMIT",
      "*nat",
      ":KUBE-SERVICES - [0:0]",
      ":KUBE-POSTROUTING - [0:0]",
      '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
      "-A OUTPUT -j KUBE-SERVICES",
      "-A POSTROUTING -j KUBE-POSTROUTING",
      "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 192.0.2.1:6443",
      "-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE",
      "COMMIT",
      "*filter",
      ":KUBE-FIREWALL - [0:0]",
      "-A INPUT -j KUBE-FIREWALL",
      "-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP",
      "COMMIT",
      "",
    ].join("\n"),
  );
}

const TABLES = ["mangle", "nat", "filter"] as const;
const foreignSnapshot = (ns: TestNetns, mode: IptablesMode): string[][] =>
  TABLES.map((t) => foreignLines(save(ns, mode, 4, t)));

const MODES: readonly IptablesMode[] = ["nft", "legacy"];

const NODES = [
  { label: "cpu", role: "CPU node", example: "seed", node: "master", state: "host" },
  { label: "dpu", role: "DPU node", example: "seed", node: "master-dpu", state: "host" },
  { label: "single", role: "single node", example: "large", node: "edge1", state: "host" },
  { label: "zpod", role: "ztunnel pod (TPROXY)", example: "large", node: "cpu2-dpu", state: "ztunnelPod" },
] as const;

for (const mode of MODES) {
  describe(`iptables backend (${mode}): converging example plans`, { ...rootOnly }, () => {
    for (const n of NODES) {
      it(`${n.role} ${n.node}: the kernel holds exactly the plan's chains and jumps; a second apply writes nothing`, async () => {
        const ns = withIpset(createNetns(`${mode}-${n.label}`));
        const plan = examplePlan(n.example, n.node);
        const desired = firewalls(n.state === "host" ? plan.host : plan.ztunnelPod);
        const backend = new IptablesBackend(ns.runner, mode);

        const first = await backend.reconcile(desired);
        const tables = desired.flatMap((fw) => fw.tables);
        assert.equal(first.writes, tables.length, "one restore per table");
        const chains = tables.reduce((k, t) => k + t.chains.length, 0);
        const jumps = tables.reduce((k, t) => k + t.jumps.length, 0);
        assert.equal(first.changes.filter((c) => c.action === "create").length, chains);
        assert.equal(first.changes.filter((c) => c.action === "insert").length, jumps);
        assertMatchesPlan(ns, mode, desired);

        const again = await backend.reconcile(desired);
        assert.deepEqual(again, { changes: [], writes: 0 });
        assert.deepEqual(await backend.reconcile(desired, { dryRun: true }), { changes: [], writes: 0 });
      });
    }

    it("repairs drift: a deleted rule, a stale rule, a duplicated jump, a jump moved below a foreign rule, a stale chain", async () => {
      const ns = withIpset(createNetns(`${mode}-drift`));
      addForeignState(ns, mode);
      const foreign = foreignSnapshot(ns, mode);
      const desired = firewalls(examplePlan("seed", "master-dpu").host);
      const backend = new IptablesBackend(ns.runner, mode);
      await backend.reconcile(desired);
      assertJumpsOnTop(ns, mode, desired[0]!);

      const ipt = (...args: string[]): string => ns.sh(tool(4, mode), args);
      ipt("-t", "mangle", "-D", "ztunnel-PREROUTING", "3");
      ipt("-t", "mangle", "-A", "ztunnel-FORWARD", "-s", "10.9.9.9/32", "-j", "ACCEPT");
      ipt("-t", "mangle", "-A", "INPUT", "-j", "ztunnel-INPUT");
      ipt("-t", "nat", "-D", "PREROUTING", "-j", "ztunnel-PREROUTING");
      ipt("-t", "nat", "-A", "PREROUTING", "-j", "ztunnel-PREROUTING");
      ipt("-t", "mangle", "-N", "ztunnel-STALE");
      ipt("-t", "mangle", "-A", "ztunnel-STALE", "-j", "ACCEPT");
      ipt("-t", "mangle", "-A", "OUTPUT", "-j", "ztunnel-STALE");
      assert.notDeepEqual(ownedLines(save(ns, mode, 4, "mangle")), expectedLines(desired[0]!, "mangle"));

      const repair = await backend.reconcile(desired);
      assert.equal(repair.writes, 2, "mangle and nat, one restore each");
      assert.deepEqual(
        pairs(repair.changes),
        [
          ["delete", "iptables -t mangle -D INPUT -j ztunnel-INPUT"],
          ["delete", "iptables -t mangle -D INPUT -j ztunnel-INPUT"],
          ["delete", "iptables -t mangle -D OUTPUT -j ztunnel-STALE"],
          ["delete", "iptables -t nat -D PREROUTING -j ztunnel-PREROUTING"],
          ["insert", "iptables -t mangle -I INPUT 1 -j ztunnel-INPUT"],
          ["insert", "iptables -t nat -I PREROUTING 1 -j ztunnel-PREROUTING"],
          ["remove", "iptables -t mangle ztunnel-STALE"],
          ["rewrite", "iptables -t mangle ztunnel-FORWARD"],
          ["rewrite", "iptables -t mangle ztunnel-PREROUTING"],
        ].sort(),
      );
      assertMatchesPlan(ns, mode, desired);
      assertJumpsOnTop(ns, mode, desired[0]!);
      assert.deepEqual(foreignSnapshot(ns, mode), foreign, "foreign chains and rules unchanged, in order");
      assert.deepEqual(await backend.reconcile(desired), { changes: [], writes: 0 });
    });

    it("foreign chains and rules in the same built-in chains survive reconcile and cleanup, in order", async () => {
      const ns = withIpset(createNetns(`${mode}-foreign`));
      addForeignState(ns, mode);
      const foreign = foreignSnapshot(ns, mode);
      const desired = firewalls(examplePlan("large", "cpu2-dpu").host);
      const backend = new IptablesBackend(ns.runner, mode);

      await backend.reconcile(desired);
      assertMatchesPlan(ns, mode, desired);
      assertJumpsOnTop(ns, mode, desired[0]!);
      assert.deepEqual(foreignSnapshot(ns, mode), foreign);

      const removed = await backend.cleanup();
      assert.equal(removed.writes, 2);
      assertNoOwnedState(ns, mode);
      assert.deepEqual(foreignSnapshot(ns, mode), foreign);
      assert.deepEqual(await backend.cleanup(), { changes: [], writes: 0 });
    });
  });
}

describe("iptables backend: plan changes, both families, failures, dry runs", { ...rootOnly }, () => {
  it("turning captureDNS on rewrites only nat ztunnel-PREROUTING (nft)", async () => {
    const ns = withIpset(createNetns("nft-dns"));
    const backend = new IptablesBackend(ns.runner, "nft");
    const before = firewalls(examplePlan("seed", "master-dpu").host);
    const after = firewalls(
      examplePlan("seed", "master-dpu", (f) => ({
        ...f,
        ztunnel: f.ztunnel && { ...f.ztunnel, captureDNS: true },
      })).host,
    );
    await backend.reconcile(before);
    const mangle = save(ns, "nft", 4, "mangle");

    const r = await backend.reconcile(after);
    assert.deepEqual(r, {
      changes: [{ backend: "iptables", action: "rewrite", detail: "iptables -t nat ztunnel-PREROUTING" }],
      writes: 1,
    });
    assertMatchesPlan(ns, "nft", after);
    assert.ok(save(ns, "nft", 4, "nat").includes("--dport 53 -j DNAT --to-destination 10.244.1.2:15053"));
    assert.equal(save(ns, "nft", 4, "mangle"), mangle);
  });

  it("IPv6 and other tables: state of a family or table the plan leaves out is removed; cleanup empties both families (legacy)", async () => {
    const mode = "legacy";
    const ns = withIpset(createNetns("legacy-families"));
    const backend = new IptablesBackend(ns.runner, mode);
    const dual = firewalls(
      examplePlan("seed", "master-dpu", (f) => ({
        ...f,
        clusterPodCIDRs: ["10.244.0.0/16", "fd00:244::/48"],
      })).host,
    );
    assert.deepEqual(
      dual.map((f) => f.family),
      [4, 6],
    );
    await backend.reconcile(dual);
    assertMatchesPlan(ns, mode, dual);
    ns.sh(tool(6, mode), ["-t", "raw", "-N", "OFFMESH-OLD"]);
    ns.sh(tool(6, mode), ["-t", "raw", "-A", "PREROUTING", "-j", "OFFMESH-OLD"]);
    ns.sh(tool(6, mode), ["-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "ACCEPT"]);
    ns.sh(tool(4, mode), ["-t", "filter", "-N", "ztunnel-OLD"]);
    ns.sh(tool(4, mode), ["-t", "filter", "-A", "INPUT", "-j", "ztunnel-OLD"]);

    const v4only = dual.filter((f) => f.family === 4);
    const r = await backend.reconcile(v4only);
    assert.deepEqual(
      pairs(r.changes),
      [
        ["delete", "ip6tables -t nat -D POSTROUTING " + dual[1]!.tables[0]!.jumps[0]!.spec],
        ["delete", "ip6tables -t raw -D PREROUTING -j OFFMESH-OLD"],
        ["delete", "iptables -t filter -D INPUT -j ztunnel-OLD"],
        ["remove", "ip6tables -t nat OFFMESH-MASQ-AGENT"],
        ["remove", "ip6tables -t raw OFFMESH-OLD"],
        ["remove", "iptables -t filter ztunnel-OLD"],
      ].sort(),
    );
    assert.equal(r.writes, 3);
    assert.deepEqual(ownedLines(save(ns, mode, 6)), []);
    assert.deepEqual(chainRules(save(ns, mode, 6, "raw"), "PREROUTING"), ["-p udp -j ACCEPT"]);
    assertMatchesPlan(ns, mode, v4only);

    const clean = await backend.cleanup();
    assert.equal(clean.writes, 2);
    assertNoOwnedState(ns, mode);
    assert.deepEqual(await backend.cleanup(), { changes: [], writes: 0 });
  });

  for (const mode of MODES) {
    it(`a restore the kernel refuses throws ApplyError naming the table and leaves it unchanged (${mode})`, async () => {
      const ns = withIpset(createNetns(`${mode}-broken`));
      const backend = new IptablesBackend(ns.runner, mode);
      const good = firewalls(examplePlan("large", "edge1").host);
      await backend.reconcile(good);
      const before = [save(ns, mode, 4, "mangle"), save(ns, mode, 4, "nat")];
      const bad: Firewall[] = good.map((fw) => ({
        ...fw,
        tables: fw.tables.map((t) => ({
          ...t,
          chains: t.chains.map((c) =>
            c.name === "ztunnel-PREROUTING" && t.table === "mangle"
              ? { ...c, rules: [{ spec: "-m set --match-set no-such-set src -j RETURN" }, ...c.rules] }
              : c,
          ),
        })),
      }));
      await assert.rejects(backend.reconcile(bad), (e: unknown) => {
        assert.ok(e instanceof ApplyError);
        assert.match(e.message, /^iptables: .*table mangle/);
        assert.match(e.message, /no-such-set/);
        return true;
      });
      assert.deepEqual([save(ns, mode, 4, "mangle"), save(ns, mode, 4, "nat")], before);
    });
  }

  it("a dry run reports what a real run then does, and writes nothing (legacy)", async () => {
    const ns = withIpset(createNetns("legacy-dry"));
    const backend = new IptablesBackend(ns.runner, "legacy");
    const desired = firewalls(examplePlan("seed", "master").host);
    const dry = await backend.reconcile(desired, { dryRun: true });
    assert.equal(dry.writes, 0);
    assert.ok(dry.changes.length > 0);
    assertNoOwnedState(ns, "legacy");
    const real = await backend.reconcile(desired);
    assert.deepEqual(real.changes, dry.changes);
    assert.equal(real.writes, 2);
  });

  it("a plan that names a foreign chain is refused before anything is read or written", async () => {
    const backend = new IptablesBackend(new Runner("/nonexistent/netns"), "nft");
    await assert.rejects(
      backend.reconcile([
        { family: 4, tables: [{ table: "nat", chains: [{ name: "KUBE-X", rules: [] }], jumps: [] }] },
      ]),
      /not an owned chain name/,
    );
  });
});

describe("detectIptablesMode", { ...rootOnly }, () => {
  it("empty namespace → nft; >10 legacy rules → legacy; otherwise the mode with more rules, both families counted", async () => {
    const ns = createNetns("detect");
    assert.equal(await detectIptablesMode(ns.runner), "nft");
    const add = (family: IpFamily, mode: IptablesMode, count: number): void => {
      for (let i = 0; i < count; i++)
        ns.sh(tool(family, mode), ["-A", "INPUT", "-p", "tcp", "--dport", String(1000 + i), "-j", "ACCEPT"]);
    };
    add(4, "nft", 3);
    add(4, "legacy", 2);
    assert.equal(await detectIptablesMode(ns.runner), "nft", "legacy 2 < nft 3");
    add(6, "legacy", 2);
    assert.equal(await detectIptablesMode(ns.runner), "legacy", "legacy 2+2 > nft 3");
    add(4, "nft", 30);
    assert.equal(await detectIptablesMode(ns.runner), "nft", "legacy 4 < nft 33");
    add(6, "legacy", 7);
    assert.equal(await detectIptablesMode(ns.runner), "legacy", "legacy 11 > 10");
  });

  it("an override is returned without running anything", async () => {
    assert.equal(
      await detectIptablesMode(new Runner("/nonexistent/netns"), { override: "legacy" }),
      "legacy",
    );
  });
});
