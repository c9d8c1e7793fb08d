import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { parseFacts } from "../../src/netplan/facts.js";
import { planNode } from "../../src/netplan/plan.js";
import { routeText } from "../../src/netplan/render.js";
import type { IpRule, Link, NetState, Route } from "../../src/netplan/types.js";
import { parseBatchFailures } from "../../src/netapply/iproute.js";
import type { KernelLink } from "../../src/netapply/iplinks.js";
import { parseLinks, planLinkCleanup, planLinks } from "../../src/netapply/iplinks.js";
import type { KernelRoute } from "../../src/netapply/iproutes.js";
import {
  isAbsentRouteError,
  parseRoutes,
  planRouteCleanup,
  planRouteDelta,
  planRoutes,
  routeDetail,
  routeFromPlan,
} from "../../src/netapply/iproutes.js";
import {
  checkPlannedRules,
  parseRules,
  planRuleCleanup,
  planRules,
  ruleText,
} from "../../src/netapply/iprules.js";
import { normalizeValue, parseReadOutput, parseState, sysctlPath } from "../../src/netapply/sysctl.js";
import { ApplyError } from "../../src/netapply/types.js";
import { parseTopology } from "../../src/topology/parse.js";
import { fromRoot } from "../support/paths.js";

// The pure halves of the ip and sysctl backends: parsing what `ip -json` prints (samples below are
// verbatim from iproute2 6.1) and planning the batches that converge the kernel. No root needed.

const DEFAULT_RULES_JSON =
  '[{"priority":0,"src":"all","table":"255"},{"priority":32766,"src":"all","table":"254"},{"priority":32767,"src":"all","table":"253"}]';

const CPU_RULES: IpRule[] = [
  { family: 4, priority: 90, fwmark: { value: 0x80, mask: 0x80 }, action: { lookup: 101 } },
  { family: 4, priority: 100, fwmark: { value: 0x200, mask: 0x200 }, action: { goto: 32766 } },
  { family: 4, priority: 101, fwmark: { value: 0x100, mask: 0x100 }, action: { lookup: 101 } },
  { family: 4, priority: 103, action: { lookup: 100 } },
];

const rulesJson = (...extra: object[]): string => {
  const base = JSON.parse(DEFAULT_RULES_JSON) as { priority: number }[];
  return JSON.stringify(
    [...base, ...extra].sort(
      (a, b) => (a as { priority: number }).priority - (b as { priority: number }).priority,
    ),
  );
};

describe("ip rules: parse", () => {
  it("reads selectors and actions as ip rule add takes them, and prints them as ip rule does", () => {
    const rules = parseRules(
      '[{"priority":0,"src":"all","table":"255"},{"priority":90,"src":"all","fwmark":"0x80","fwmask":"0x80","table":"101"},' +
        '{"priority":100,"src":"all","fwmark":"0x200","fwmask":"0x200","goto":32766},' +
        '{"priority":101,"src":"all","fwmark":"0x100","table":"101"},' +
        '{"priority":101,"not":null,"src":"10.0.0.0","srclen":8,"iif":"lo","uid_start":1,"uid_end":5,"ipproto":"ipproto-6","sport":5,"table":"101"}]',
      4,
    );
    assert.deepEqual(rules.map(ruleText), [
      "0: from all lookup local",
      "90: from all fwmark 0x80/0x80 lookup 101",
      "100: from all fwmark 0x200/0x200 goto 32766",
      "101: from all fwmark 0x100 lookup 101",
      '101: not from 10.0.0.0/8 iif lo lookup 101 [uid_start 1] [uid_end 5] [ipproto "ipproto-6"] [sport 5]',
    ]);
    assert.deepEqual(rules[4]?.opaque.length, 4);
  });

  it("accepts table names (ip without -N)", () => {
    const [r] = parseRules('[{"priority":32766,"src":"all","table":"main"}]', 6);
    assert.equal(r && ruleText(r), "32766: from all lookup main");
  });
});

describe("ip rules: plan", () => {
  const lines = (family: 4 | 6, desired: IpRule[], lp: number, json: string): readonly string[] =>
    planRules(family, desired, lp, parseRules(json, family)).lines;

  it("a CPU: the local rule moves to 99, added before the one at 0 is deleted", () => {
    assert.deepEqual(lines(4, CPU_RULES, 99, DEFAULT_RULES_JSON), [
      "rule add priority 90 fwmark 0x80/0x80 lookup 101",
      "rule add priority 99 lookup 255",
      "rule add priority 100 fwmark 0x200/0x200 goto 32766",
      "rule add priority 101 fwmark 0x100/0x100 lookup 101",
      "rule add priority 103 lookup 100",
      "rule del priority 0 lookup 255",
    ]);
  });

  it("back to 0: the rule at 0 is restored before the relocated one goes", () => {
    const relocated = rulesJson({ priority: 99, src: "all", table: "255" }).replace(
      '{"priority":0,"src":"all","table":"255"},',
      "",
    );
    assert.deepEqual(lines(4, [], 0, relocated), [
      "rule add priority 0 lookup 255",
      "rule del priority 99 lookup 255",
    ]);
  });

  it("a converged kernel needs nothing; foreign priorities are never touched", () => {
    const json = rulesJson(
      { priority: 90, src: "all", fwmark: "0x80", fwmask: "0x80", table: "101" },
      { priority: 99, src: "all", table: "255" },
      { priority: 100, src: "all", fwmark: "0x200", fwmask: "0x200", goto: 32766 },
      { priority: 101, src: "all", fwmark: "0x100", fwmask: "0x100", table: "101" },
      { priority: 103, src: "all", table: "100" },
      { priority: 500, src: "all", table: "100" },
    ).replace('{"priority":0,"src":"all","table":"255"},', "");
    assert.deepEqual(lines(4, CPU_RULES, 99, json), []);
  });

  it("duplicates at an owned priority are reduced to the planned rule", () => {
    const dup = { priority: 103, src: "all", table: "100" };
    assert.deepEqual(lines(4, CPU_RULES.slice(3), 0, rulesJson(dup, dup)), [
      "rule del priority 103 lookup 100",
    ]);
    const stray = { priority: 103, src: "all", fwmark: "0x1", fwmask: "0x1", table: "100" };
    assert.deepEqual(lines(4, CPU_RULES.slice(3), 0, rulesJson(stray, dup)), [
      "rule del priority 103 fwmark 0x1/0x1 lookup 100",
    ]);
  });

  it("a stray whose delete would hit the planned rule first: delete both, re-add the planned one", () => {
    const planned = { priority: 101, src: "all", fwmark: "0x100", fwmask: "0x100", table: "101" };
    const stray = { priority: 101, src: "all", table: "101" };
    assert.deepEqual(lines(4, [CPU_RULES[2] as IpRule], 0, rulesJson(planned, stray)), [
      "rule del priority 101 fwmark 0x100/0x100 lookup 101",
      "rule del priority 101 lookup 101",
      "rule add priority 101 fwmark 0x100/0x100 lookup 101",
    ]);
    // Without the planned rule present it is added first, then the originals go front to back.
    assert.deepEqual(lines(4, [CPU_RULES[2] as IpRule], 0, rulesJson(stray)), [
      "rule add priority 101 fwmark 0x100/0x100 lookup 101",
      "rule del priority 101 lookup 101",
    ]);
  });

  it("a rule the kernel lists with attributes offmesh cannot express is replaced", () => {
    const odd = { priority: 103, src: "all", uid_start: 1, uid_end: 5, table: "100" };
    assert.deepEqual(lines(4, CPU_RULES.slice(3), 0, rulesJson(odd)), [
      "rule add priority 103 lookup 100",
      "rule del priority 103 lookup 100",
    ]);
  });

  it("cleanup deletes owned priorities only and restores the local rule first", () => {
    const json = rulesJson(
      { priority: 99, src: "all", table: "255" },
      { priority: 20000, src: "all", fwmark: "0x400", fwmask: "0xfff", table: "100" },
      { priority: 500, src: "all", table: "100" },
    ).replace('{"priority":0,"src":"all","table":"255"},', "");
    const step = planRuleCleanup(4, parseRules(json, 4));
    assert.deepEqual(step.lines, [
      "rule add priority 0 lookup 255",
      "rule del priority 99 lookup 255",
      "rule del priority 20000 fwmark 0x400/0xfff lookup 100",
    ]);
    assert.deepEqual(
      step.changes.map((c) => `${c.action} ${c.detail}`),
      [
        "add 0: from all lookup local",
        "delete 99: from all lookup local",
        "delete 20000: from all fwmark 0x400/0xfff lookup 100",
      ],
    );
  });

  it("refuses plans with rules it would not own", () => {
    assert.throws(
      () => checkPlannedRules([{ ...(CPU_RULES[0] as IpRule), priority: 7 }], 0),
      /priority 7 is not owned/,
    );
    assert.throws(
      () => checkPlannedRules([CPU_RULES[0] as IpRule, CPU_RULES[0] as IpRule], 0),
      /planned twice/,
    );
    assert.throws(() => checkPlannedRules([], 50), /local rule's priority 50/);
    assert.doesNotThrow(() => checkPlannedRules(CPU_RULES, 99));
  });
});

const ROUTES_JSON =
  '[{"type":"2","dst":"default","dev":"lo","table":"100","protocol":"176","scope":"254","flags":[]},' +
  '{"type":"6","dst":"10.1.0.0/16","table":"100","protocol":"176","flags":[]},' +
  '{"dst":"10.244.22.2","dev":"eth0","table":"101","protocol":"176","scope":"253","flags":[]},' +
  '{"dst":"10.244.22.3","gateway":"10.10.0.5","dev":"eth0","table":"101","protocol":"176","prefsrc":"10.10.0.22","flags":[]},' +
  '{"dst":"default","gateway":"10.10.0.9","dev":"eth0","table":"102","protocol":"176","flags":["onlink"]},' +
  '{"dst":"10.10.0.0/24","dev":"eth0","protocol":"2","scope":"253","prefsrc":"10.10.0.22","flags":[]},' +
  '{"dst":"10.244.11.0/24","gateway":"10.10.0.21","dev":"eth0","protocol":"176","flags":["linkdown"]},' +
  '{"dst":"10.99.0.0/16","gateway":"10.10.0.1","dev":"eth0","flags":[]},' +
  '{"type":"2","dst":"10.10.0.22","dev":"eth0","table":"255","protocol":"2","scope":"254","prefsrc":"10.10.0.22","flags":[]}]';

const V6_ROUTES_JSON =
  '[{"dst":"fd00:1::/64","gateway":"fd00::2","dev":"vx0","table":"100","protocol":"176","metric":1024,"flags":["linkdown"],"pref":"medium"},' +
  '{"type":"6","dst":"fd00:2::/64","dev":"lo","protocol":"176","metric":1024,"flags":[],"pref":"medium"},' +
  '{"dst":"fe80::/64","dev":"vx0","protocol":"2","metric":256,"flags":[],"pref":"medium"}]';

const r4 = (over: Partial<Route> & { dst: string }): Route => ({
  family: 4,
  table: "main",
  proto: "offmesh",
  ...over,
});

describe("ip routes: parse", () => {
  it("normalises what ip -N -json prints into ip route's text", () => {
    assert.deepEqual(parseRoutes(ROUTES_JSON, 4).map(routeDetail), [
      "local default dev lo table 100 proto 176 scope host",
      "blackhole 10.1.0.0/16 table 100 proto 176",
      "10.244.22.2 dev eth0 table 101 proto 176 scope link",
      "10.244.22.3 via 10.10.0.5 dev eth0 table 101 proto 176 src 10.10.0.22",
      "default via 10.10.0.9 dev eth0 table 102 proto 176 onlink",
      "10.10.0.0/24 dev eth0 proto kernel scope link src 10.10.0.22",
      "10.244.11.0/24 via 10.10.0.21 dev eth0 proto 176",
      "10.99.0.0/16 via 10.10.0.1 dev eth0 proto boot",
      "local 10.10.0.22 dev eth0 table local proto kernel scope host src 10.10.0.22",
    ]);
    assert.deepEqual(parseRoutes(V6_ROUTES_JSON, 6).map(routeDetail), [
      "fd00:1::/64 via fd00::2 dev vx0 table 100 proto 176 metric 1024",
      "blackhole fd00:2::/64 proto 176 metric 1024",
      "fe80::/64 dev vx0 proto kernel metric 256",
    ]);
  });

  it("planned routes of every example node read like render.ts prints them (table aside)", () => {
    let checked = 0;
    for (const example of readdirSync(fromRoot("examples"))) {
      const configPath = `examples/${example}/cluster-conf.yaml`;
      const topo = parseTopology(readFileSync(fromRoot(configPath), "utf8"), configPath);
      assert.ok(topo.ok);
      for (const file of readdirSync(fromRoot("examples", example))) {
        if (file === "cluster-conf.yaml" || !file.endsWith(".yaml")) continue;
        const node = file.slice(0, -".yaml".length);
        const factsPath = `examples/${example}/${file}`;
        const facts = parseFacts(readFileSync(fromRoot(factsPath), "utf8"), factsPath, {
          topology: topo.value,
          node,
        });
        assert.ok(facts.ok);
        const outcome = planNode(topo.value, node, facts.value);
        assert.ok(outcome.planned);
        const states: NetState[] = [
          outcome.plan.host,
          ...(outcome.plan.ztunnelPod ? [outcome.plan.ztunnelPod] : []),
        ];
        for (const route of states.flatMap((s) => s.routes)) {
          const text = routeDetail(routeFromPlan(route)).replace(/ table \w+/, "");
          // ip adds the scope it defaults to for device routes; the planner always names it.
          assert.equal(text, routeText(route), `${example}/${node}`);
          checked++;
        }
      }
    }
    assert.ok(checked > 50);
  });
});

describe("ip routes: plan", () => {
  const current = parseRoutes(ROUTES_JSON, 4);
  const devices = {
    present: new Set(["lo", "eth0"]),
    gone: new Set<string>(),
    addresses: new Set(["10.10.0.22"]),
  };
  const owned = (): Route[] => [
    r4({ table: 100, type: "local", dst: "default", dev: "lo", scope: "host" }),
    r4({ table: 100, type: "blackhole", dst: "10.1.0.0/16" }),
    r4({ table: 101, dst: "10.244.22.2", dev: "eth0", scope: "link" }),
    r4({ table: 101, dst: "10.244.22.3", via: "10.10.0.5", dev: "eth0", src: "10.10.0.22" }),
    r4({ table: 102, dst: "default", via: "10.10.0.9", dev: "eth0", onlink: true }),
    r4({ dst: "10.244.11.0/24", via: "10.10.0.21", dev: "eth0" }),
  ];

  it("nothing to do when the owned routes match", () => {
    assert.deepEqual(planRoutes(4, owned(), current, devices).lines, []);
  });

  it("adds, replaces and deletes owned routes only", () => {
    const want = owned()
      .filter((r) => r.dst !== "10.1.0.0/16")
      .map((r) => (r.table === 102 ? { ...r, via: "10.10.0.8" } : r));
    want.push(r4({ dst: "10.244.12.0/24", via: "10.10.0.12", dev: "eth0" }));
    const step = planRoutes(4, want, current, devices);
    assert.deepEqual(step.lines, [
      "route replace default via 10.10.0.8 dev eth0 table 102 proto 176 onlink",
      "route replace 10.244.12.0/24 via 10.10.0.12 dev eth0 table 254 proto 176",
      "route del blackhole 10.1.0.0/16 table 100 proto 176",
    ]);
    assert.deepEqual(
      step.changes.map((c) => c.action),
      ["replace", "add", "delete"],
    );
  });

  it("routes on links the link step deletes or recreates count as gone", () => {
    const step = planRoutes(4, owned(), current, { ...devices, gone: new Set(["eth0"]) });
    assert.equal(step.lines.length, 4);
    assert.ok(step.lines.every((l) => l.startsWith("route replace") && l.includes("dev eth0")));
  });

  it("fails, naming route and device, when a device will not exist", () => {
    assert.throws(
      () =>
        planRoutes(
          4,
          [r4({ table: 100, dst: "10.244.0.5", via: "10.1.1.1", dev: "istioin" })],
          current,
          devices,
        ),
      (e: unknown) =>
        e instanceof ApplyError &&
        e.message ===
          'route: route "10.244.0.5 via 10.1.1.1 dev istioin table 100 proto 176" needs device istioin, which does not exist',
    );
  });

  it("fails, naming route and address, when its source address is on no link", () => {
    assert.throws(
      () =>
        planRoutes(
          4,
          [r4({ table: 100, dst: "10.244.0.5", dev: "eth0", src: "10.244.22.1" })],
          current,
          devices,
        ),
      /route "10\.244\.0\.5 dev eth0 table 100 proto 176 scope link src 10\.244\.22\.1" needs source address 10\.244\.22\.1, which no link here has/,
    );
  });

  it("fails rather than displace a route offmesh does not own", () => {
    assert.throws(
      () => planRoutes(4, [r4({ dst: "10.99.0.0/16", via: "10.10.0.2", dev: "eth0" })], current, devices),
      /would replace "10\.99\.0\.0\/16 via 10\.10\.0\.1 dev eth0 proto boot", which offmesh does not own/,
    );
  });

  it("fails on a plan with two different routes for one destination", () => {
    const a = r4({ table: 100, dst: "10.244.0.5", via: "10.10.0.1", dev: "eth0" });
    assert.throws(
      () => planRoutes(4, [a, { ...a, via: "10.10.0.2" }], current, devices),
      /two routes for one destination/,
    );
    assert.doesNotThrow(() => planRoutes(4, [a, { ...a }], current, devices));
  });

  it("IPv6: default metric, blackhole without a device, cleanup of every owned route", () => {
    const v6 = parseRoutes(V6_ROUTES_JSON, 6);
    const want: Route[] = [
      { family: 6, table: 100, dst: "fd00:1::/64", via: "fd00::2", dev: "vx0", proto: "offmesh" },
      { family: 6, table: "main", type: "blackhole", dst: "fd00:2::/64", proto: "offmesh" },
    ];
    const view = { present: new Set(["vx0", "lo"]), gone: new Set<string>(), addresses: new Set<string>() };
    assert.deepEqual(planRoutes(6, want, v6, view).lines, []);
    assert.deepEqual(planRouteCleanup(6, v6).lines, [
      "route del fd00:1::/64 table 100 proto 176 metric 1024",
      "route del blackhole fd00:2::/64 table 254 proto 176 metric 1024",
    ]);
  });

  it("a pod delta deletes first, adds with replace, per family", () => {
    const add = [r4({ table: 100, dst: "10.244.0.5", via: "10.10.0.1", dev: "eth0" })];
    const del = [r4({ table: 100, dst: "10.244.0.6", via: "10.10.0.1", dev: "eth0" })];
    const delta = planRouteDelta(add, del);
    assert.deepEqual(
      delta.get(4)?.map((l) => l.line),
      [
        "route del 10.244.0.6 table 100 proto 176",
        "route replace 10.244.0.5 via 10.10.0.1 dev eth0 table 100 proto 176",
      ],
    );
    assert.equal(isAbsentRouteError("RTNETLINK answers: No such process"), true);
    assert.equal(isAbsentRouteError("Error: FIB table does not exist."), true);
    assert.equal(isAbsentRouteError("Error: Nexthop has invalid gateway."), false);
  });

  it("a route's identity: host routes without /32, default for 0/0", () => {
    const k: KernelRoute = routeFromPlan(r4({ dst: "0.0.0.0/0", via: "10.0.0.1", dev: "eth0" }));
    assert.equal(k.dst, "default");
    assert.equal(routeFromPlan(r4({ dst: "10.0.0.5/32", dev: "eth0" })).dst, "10.0.0.5");
    assert.equal(routeFromPlan(r4({ dst: "10.0.0.5/32", dev: "eth0" })).scope, "link");
  });
});

const VXLAN_JSON =
  '[{"ifindex":2,"ifname":"istioin","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":9000,"linkinfo":{"info_kind":"vxlan","info_data":{"id":1000,"remote":"10.244.22.2","port_range":{"low":0,"high":0},"port":4789,"learning":true}},' +
  '"addr_info":[{"family":"inet","local":"192.168.126.1","prefixlen":30,"scope":"global","label":"istioin"},{"family":"inet6","local":"fe80::1072:3cff:feec:5e76","prefixlen":64,"scope":"link"}]},' +
  '{"ifindex":3,"link_index":2,"ifname":"istioout","flags":["BROADCAST","MULTICAST"],"mtu":1500,"link_netnsid":0,"linkinfo":{"info_kind":"veth"},"addr_info":[]},' +
  '{"ifindex":4,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"link":"eth0peer","linkinfo":{"info_kind":"veth"},"addr_info":[]},' +
  '{"ifindex":5,"ifname":"vethd2a91c4e","flags":["UP"],"mtu":1500,"addr_info":[]}]';
const POD_JSON =
  '[{"ifindex":2,"link_index":3,"ifname":"pistioout","flags":["BROADCAST","MULTICAST"],"mtu":1500,"link_netnsid":0,"linkinfo":{"info_kind":"veth"},"addr_info":[]}]';

const vxlan = (over: Partial<Link & { kind: "vxlan" }> = {}): Link => ({
  kind: "vxlan",
  name: "istioin",
  vni: 1000,
  remote: "10.244.22.2",
  dstport: 4789,
  addresses: ["192.168.126.1/30"],
  mtu: 9000,
  ...over,
});
const veth: Link = {
  kind: "veth",
  name: "istioout",
  peer: "pistioout",
  peerNetns: "ztunnel-pod",
  addresses: ["192.168.127.1/30"],
  mtu: 9000,
};

describe("ip links", () => {
  const current = parseLinks(VXLAN_JSON);
  const pod = { netns: "ztpod", links: parseLinks(POD_JSON) };
  const withoutVeth = current.filter((k) => k.name !== "istioout");

  it("parses kind, tunnel identity, up state, veth peers and addresses (no IPv6 link-local)", () => {
    const [istioin, istioout, eth0] = current as [KernelLink, KernelLink, KernelLink];
    assert.deepEqual(istioin, {
      name: "istioin",
      ifindex: 2,
      kind: "vxlan",
      vni: 1000,
      remote: "10.244.22.2",
      dstport: 4789,
      mtu: 9000,
      up: true,
      addresses: ["192.168.126.1/30"],
    });
    assert.equal(istioout.peerIfindex, 2);
    assert.equal(istioout.peerNetnsid, 0);
    assert.equal(eth0.peerName, "eth0peer");
    const [geneve] = parseLinks(
      '[{"ifindex":7,"ifname":"istioin","flags":[],"mtu":1500,"linkinfo":{"info_kind":"geneve","info_data":{"id":1000,"remote6":"fd00::2","port":6081}},"addr_info":[]}]',
    );
    assert.deepEqual([geneve?.kind, geneve?.remote, geneve?.dstport], ["geneve", "fd00::2", 6081]);
  });

  it("a matching link needs nothing; MTU and up state are fixed in place", () => {
    assert.deepEqual(planLinks({ links: [vxlan()], settings: [], current: withoutVeth }).lines, []);
    const step = planLinks({ links: [vxlan(), veth], settings: [], current, pod });
    assert.deepEqual(step.lines, [
      "link set dev istioout mtu 9000 up",
      "addr replace 192.168.127.1/30 dev istioout",
    ]);
  });

  it("a new remote recreates the tunnel; its routes count as gone", () => {
    const step = planLinks({ links: [vxlan({ remote: "10.244.22.3" })], settings: [], current: withoutVeth });
    assert.deepEqual(step.lines, [
      "link del dev istioin",
      "link add name istioin mtu 9000 type vxlan id 1000 remote 10.244.22.3 dstport 4789",
      "link set dev istioin up",
      "addr replace 192.168.126.1/30 dev istioin",
    ]);
    assert.deepEqual([...step.gone], ["istioin"]);
    assert.ok(step.present.has("istioin"));
    assert.ok(step.addresses.has("192.168.126.1"));
    assert.match(
      step.changes[0]?.detail ?? "",
      /remote 10\.244\.22\.3 .*\(was .*: has remote 10\.244\.22\.2\)/,
    );
  });

  it("owned links out of the plan are deleted, others never", () => {
    const step = planLinks({ links: [], settings: [], current });
    assert.deepEqual(step.lines, ["link del dev istioin", "link del dev istioout"]);
    assert.ok(step.present.has("eth0") && !step.present.has("istioin"));
  });

  it("addresses: extra ones deleted before missing ones are added", () => {
    const step = planLinks({
      links: [vxlan({ addresses: ["192.168.126.2/30"] })],
      settings: [],
      current: withoutVeth,
    });
    assert.deepEqual(step.lines, [
      "addr del 192.168.126.1/30 dev istioin",
      "addr replace 192.168.126.2/30 dev istioin",
    ]);
  });

  it("a veth whose peer is not in the pod is recreated; a stale link with the peer's name goes first", () => {
    const stalePod = {
      netns: "ztpod",
      links: parseLinks(POD_JSON.replace('"link_index":3', '"link_index":9')),
    };
    const step = planLinks({ links: [vxlan(), veth], settings: [], current, pod: stalePod });
    assert.deepEqual(step.podLines, ["link del dev pistioout"]);
    assert.deepEqual(step.lines.slice(0, 3), [
      "link del dev istioout",
      "link add name istioout mtu 9000 type veth peer name pistioout mtu 9000 netns ztpod",
      "link set dev istioout up",
    ]);
  });

  it("link settings: set when different, nothing when equal, an error when the link is missing", () => {
    const setting = { name: "vethd2a91c4e", mtu: 9050, why: "overhead" };
    assert.deepEqual(planLinks({ links: [], settings: [setting], current: current.slice(2) }).lines, [
      "link set dev vethd2a91c4e mtu 9050",
    ]);
    assert.deepEqual(
      planLinks({ links: [], settings: [{ ...setting, mtu: 1500 }], current: current.slice(2) }).lines,
      [],
    );
    assert.throws(
      () => planLinks({ links: [], settings: [{ ...setting, name: "vethgone" }], current }),
      /link vethgone does not exist \(its MTU should be 9050: overhead\)/,
    );
  });

  it("refuses links it does not own, veth pairs without a pod, a missing pod end", () => {
    assert.throws(
      () => planLinks({ links: [vxlan({ name: "eth0" })], settings: [], current }),
      /eth0 is not one offmesh owns/,
    );
    assert.throws(() => planLinks({ links: [veth], settings: [], current }), /no pod namespace was given/);
    assert.throws(
      () =>
        planLinks({
          links: [{ kind: "veth-peer", name: "pistioin", addresses: [], mtu: 9000 }],
          settings: [],
          current,
        }),
      /pistioin \(the pod end of a veth pair the host creates\) does not exist/,
    );
  });

  it("cleanup deletes one end of a pair whose ends share the namespace", () => {
    const both = parseLinks(
      '[{"ifindex":8,"ifname":"istioin","link":"pistioin","flags":[],"mtu":1500,"linkinfo":{"info_kind":"veth"},"addr_info":[]},' +
        '{"ifindex":9,"ifname":"pistioin","link":"istioin","flags":[],"mtu":1500,"linkinfo":{"info_kind":"veth"},"addr_info":[]}]',
    );
    assert.deepEqual(planLinkCleanup(both).lines, ["link del dev istioin"]);
  });
});

describe("ip -batch failures", () => {
  it("pairs each message with the line ip names", () => {
    assert.deepEqual(
      parseBatchFailures(
        "RTNETLINK answers: No such process\nCommand failed -:1\nError: Nexthop has invalid gateway.\nCommand failed -:3\n",
      ),
      [
        { line: 1, message: "RTNETLINK answers: No such process" },
        { line: 3, message: "Error: Nexthop has invalid gateway." },
      ],
    );
    assert.deepEqual(parseBatchFailures("nsenter: cannot open x\n"), [
      { line: 0, message: "nsenter: cannot open x" },
    ]);
  });
});

describe("sysctl helpers", () => {
  it("maps keys to /proc/sys paths, a / in a level standing for a dot", () => {
    assert.equal(sysctlPath("net.ipv4.conf.eth0.rp_filter"), "/proc/sys/net/ipv4/conf/eth0/rp_filter");
    assert.equal(
      sysctlPath("net.ipv4.conf.eth0/100.rp_filter"),
      "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
    );
    assert.throws(() => sysctlPath("net.ipv4..x"), /not a sysctl key/);
    assert.throws(() => sysctlPath("net.//.x"), /not a sysctl key/);
    assert.throws(() => sysctlPath("net.ipv4 x"), /not a sysctl key/);
  });

  it("compares values with whitespace normalised and parses the read script's output", () => {
    assert.equal(normalizeValue("4096\t131072\t6291456\n"), "4096 131072 6291456");
    assert.deepEqual(
      [...parseReadOutput("+1\0-\0+4096\t131072\0", ["a", "b", "c"])],
      [
        ["a", "1"],
        ["b", undefined],
        ["c", "4096\t131072"],
      ],
    );
  });

  it("reads state files and refuses ones it cannot trust", () => {
    assert.deepEqual(parseState('{"version":1,"originals":{"net.ipv4.ip_forward":"0"}}', "f").originals, {
      "net.ipv4.ip_forward": "0",
    });
    assert.throws(() => parseState("{", "f"), /not JSON/);
    assert.throws(() => parseState('{"originals":{"a":1}}', "f"), /no "originals" map/);
  });
});
