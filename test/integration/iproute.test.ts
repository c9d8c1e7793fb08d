import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { renderIpRules, renderRoutes, routeTables } from "../../src/netplan/render.js";
import type { IpRule, NetState, Route } from "../../src/netplan/types.js";
import { IpRouteBackend } from "../../src/netapply/iproute.js";
import type { BackendResult, Change } from "../../src/netapply/types.js";
import { ApplyError } from "../../src/netapply/types.js";
import { createNetns, isRoot, rootOnly } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { examplePlan } from "../support/plans.js";

// The ip backend against real kernels: plans of the example nodes applied in network namespaces,
// checked against the planner's own renderings (`ip rule`, `ip route show table N`), then drifted
// by hand and repaired, then cleaned up.

// Namespaces are created when the file loads: the support module deletes them in an `after` hook
// registered by the first creation, which must belong to the file, not to one suite or hook.
const LABELS = ["cpu", "dpu", "dpuzt", "edge", "edgezt", "refuse", "delta", "v6"] as const;
const spaces = isRoot ? new Map(LABELS.map((l) => [l, createNetns(l)])) : undefined;
function space(label: (typeof LABELS)[number]): TestNetns {
  const ns = spaces?.get(label);
  assert.ok(ns, "namespaces exist when running as root");
  return ns;
}

const ip = (ns: TestNetns, ...args: string[]): string => ns.sh("ip", args);

/** Lines without ip's trailing blanks, so kernel listings compare with renderings. */
const tidy = (text: string): string =>
  text
    .split("\n")
    .map((l) => l.trimEnd())
    .filter((l) => l !== "")
    .map((l) => `${l}\n`)
    .join("");

/** `ip route show table N`, offmesh's routes only (the main table also holds the kernel's). */
function ownedRoutes(ns: TestNetns, table: string | number, family: 4 | 6 = 4): string {
  const lines = tidy(ip(ns, `-${family}`, "route", "show", "table", String(table))).split("\n");
  return (
    lines.filter((l) => / proto 176\b/.test(l)).join("\n") +
    (lines.some((l) => / proto 176\b/.test(l)) ? "\n" : "")
  );
}

/** Every proto-176 route in any table of both families. */
const anyOwnedRoute = (ns: TestNetns): string =>
  tidy(ip(ns, "-4", "route", "show", "table", "all", "proto", "176")) +
  tidy(ip(ns, "-6", "route", "show", "table", "all", "proto", "176"));

/** The kernel's rules and offmesh's routes in every planned table equal the plan's rendering. */
function assertMatchesPlan(ns: TestNetns, state: NetState): void {
  assert.equal(tidy(ip(ns, "rule")), renderIpRules(state.rules, 4, state.localRulePriority), "ip rule");
  for (const table of routeTables(state.routes)) {
    const v4 = state.routes.filter((r) => r.family === 4);
    assert.equal(ownedRoutes(ns, table), renderRoutes(v4, table), `ip route show table ${table}`);
  }
}

const linkJson = (ns: TestNetns, name: string): Record<string, unknown> => {
  const parsed = JSON.parse(ip(ns, "-json", "-d", "addr", "show", "dev", name)) as Record<string, unknown>[];
  assert.ok(parsed[0], `${name} exists`);
  return parsed[0];
};
const hasLink = (ns: TestNetns, name: string): boolean =>
  (JSON.parse(ip(ns, "-json", "link", "show")) as { ifname: string }[]).some((l) => l.ifname === name);

const details = (r: BackendResult, backend?: string): string[] =>
  r.changes
    .filter((c) => backend === undefined || c.backend === backend)
    .map((c) => `${c.action} ${c.detail}`);

/** A veth pair inside the namespace, one end named like a real NIC and addressed and up. */
function addNic(ns: TestNetns, name: string, cidr: string): void {
  ip(ns, "link", "add", "name", name, "type", "veth", "peer", "name", `${name}-far`.slice(0, 15));
  ip(ns, "addr", "add", cidr, "dev", name);
  ip(ns, "link", "set", "dev", name, "up");
  ip(ns, "link", "set", "dev", `${name}-far`.slice(0, 15), "up");
}

/**
 * What the ptp CNI leaves for the ztunnel pod: a veth whose host side carries the pod gateway
 * address and a host route to the pod, and whose pod side (eth0) has the pod's address.
 */
function addZtunnelVeth(
  host: TestNetns,
  pod: TestNetns,
  hostVeth: string,
  gateway: string,
  podIp: string,
): void {
  ip(host, "link", "add", "name", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", pod.name);
  ip(host, "addr", "add", `${gateway}/32`, "dev", hostVeth);
  ip(host, "link", "set", "dev", hostVeth, "up");
  ip(host, "route", "add", podIp, "dev", hostVeth, "scope", "link");
  ip(pod, "addr", "add", `${podIp}/32`, "dev", "eth0");
  ip(pod, "link", "set", "dev", "eth0", "up");
  ip(pod, "route", "add", gateway, "dev", "eth0", "scope", "link");
  ip(pod, "route", "add", "default", "via", gateway, "dev", "eth0");
}

/** Rules and routes as the kernel had them in a fresh namespace (plus what a test added). */
const DEFAULT_RULES =
  "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default\n";

describe("ip backend on a CPU node (examples/seed master)", { ...rootOnly }, () => {
  const plan = examplePlan("seed", "master");
  let ns: TestNetns;
  let backend: IpRouteBackend;

  before(() => {
    ns = space("cpu");
    addNic(ns, "ens32", "192.168.50.130/24");
    backend = new IpRouteBackend(ns.runner);
  });

  it("applies the plan: ip rule and every table print as the planner renders them", async () => {
    const result = await backend.reconcile(plan.host);
    assertMatchesPlan(ns, plan.host);
    assert.equal(plan.host.localRulePriority, 99);
    // One batch per kind and family: routes (IPv4), rules (IPv4), rules (IPv6, local moved too).
    assert.equal(result.writes, 3);
    assert.equal(result.changes.filter((c) => c.backend === "route").length, plan.host.routes.length);
    assert.deepEqual(details(result, "rule").slice(-2), [
      "add -6 99: from all lookup local",
      "delete -6 0: from all lookup local",
    ]);
    assert.ok(details(result, "rule").includes("delete 0: from all lookup local"));
    assert.equal(tidy(ip(ns, "-6", "rule")), renderIpRules([], 6, 99));
  });

  it("applying again writes nothing", async () => {
    assert.deepEqual(await backend.reconcile(plan.host), { changes: [], writes: 0 });
  });

  it("repairs each drift with one change; foreign rules and routes survive", async () => {
    ip(ns, "rule", "del", "priority", "90");
    ip(ns, "rule", "add", "priority", "101", "fwmark", "0x100/0x100", "lookup", "100");
    ip(ns, "route", "add", "10.244.9.0/24", "via", "192.168.50.131", "dev", "ens32", "proto", "176");
    ip(ns, "route", "replace", "10.244.1.0/24", "via", "192.168.50.140", "dev", "ens32", "proto", "176");
    ip(
      ns,
      "route",
      "add",
      "10.244.77.0/24",
      "via",
      "192.168.50.131",
      "dev",
      "ens32",
      "table",
      "100",
      "proto",
      "176",
    );
    // Someone else's: a static route, a route in offmesh's table with another protocol, a rule.
    ip(ns, "route", "add", "10.99.0.0/16", "via", "192.168.50.1", "dev", "ens32", "proto", "static");
    ip(ns, "route", "add", "10.244.0.77", "via", "192.168.50.131", "dev", "ens32", "table", "100");
    ip(ns, "rule", "add", "priority", "500", "fwmark", "0x1/0x1", "lookup", "100");

    const result = await backend.reconcile(plan.host);
    assert.deepEqual(details(result).sort(), [
      "add 90: from all fwmark 0x80/0x80 lookup 101",
      "delete 10.244.77.0/24 via 192.168.50.131 dev ens32 table 100 proto 176",
      "delete 10.244.9.0/24 via 192.168.50.131 dev ens32 proto 176",
      "delete 101: from all fwmark 0x100/0x100 lookup 100",
      "replace 10.244.1.0/24 via 192.168.50.131 dev ens32 proto 176 (was 10.244.1.0/24 via 192.168.50.140 dev ens32 proto 176)",
    ]);
    assert.equal(result.writes, 2);
    assert.match(
      ip(ns, "route", "show", "table", "main"),
      /10\.99\.0\.0\/16 via 192\.168\.50\.1 dev ens32 proto static/,
    );
    assert.match(
      ip(ns, "route", "show", "table", "100"),
      /10\.244\.0\.77 via 192\.168\.50\.131 dev ens32 \n/,
    );
    assert.match(ip(ns, "rule"), /500:\tfrom all fwmark 0x1\/0x1 lookup 100/);
    assert.equal(ownedRoutes(ns, 100), renderRoutes(plan.host.routes, 100));
    assert.equal(ownedRoutes(ns, "main"), renderRoutes(plan.host.routes, "main"));
    assert.deepEqual(await backend.reconcile(plan.host), { changes: [], writes: 0 });
  });

  it("a dry run reports what it would do and writes nothing", async () => {
    ip(ns, "route", "del", "default", "table", "101");
    const before = ip(ns, "route", "show", "table", "all");
    const dry = await backend.reconcile(plan.host, { dryRun: true });
    assert.deepEqual(details(dry), ["add default via 192.168.50.131 dev ens32 table 101 proto 176"]);
    assert.equal(dry.writes, 0);
    assert.equal(ip(ns, "route", "show", "table", "all"), before);
    assert.equal((await backend.reconcile(plan.host)).writes, 1);
  });

  it("cleanup removes every owned rule, route and puts lookup local back at 0", async () => {
    const result = await backend.cleanup();
    assert.ok(
      details(result, "rule").indexOf("add 0: from all lookup local") <
        details(result, "rule").indexOf("delete 99: from all lookup local"),
    );
    assert.equal(anyOwnedRoute(ns), "");
    assert.equal(
      tidy(ip(ns, "rule")),
      DEFAULT_RULES.replace("32766", "500:\tfrom all fwmark 0x1/0x1 lookup 100\n32766"),
    );
    assert.equal(tidy(ip(ns, "-6", "rule")), renderIpRules([], 6, 0));
    assert.match(ip(ns, "route", "show", "table", "100"), /10\.244\.0\.77 via/);
    assert.match(ip(ns, "route"), /10\.99\.0\.0\/16/);
    assert.deepEqual(await backend.cleanup(), { changes: [], writes: 0 });
  });
});

describe("ip backend on a DPU with vxlan tunnels (examples/large cpu2-dpu)", { ...rootOnly }, () => {
  const plan = examplePlan("large", "cpu2-dpu");
  const restarted = examplePlan("large", "cpu2-dpu", (f) => ({
    ...f,
    ztunnel: { ...f.ztunnel!, ip: "10.244.22.3" },
  }));
  let host: TestNetns;
  let pod: TestNetns;
  let hostBackend: IpRouteBackend;
  let podBackend: IpRouteBackend;

  before(() => {
    host = space("dpu");
    pod = space("dpuzt");
    addNic(host, "eth0", "10.10.0.22/24");
    addZtunnelVeth(host, pod, "vethd2a91c4e", "10.244.22.1", "10.244.22.2");
    hostBackend = new IpRouteBackend(host.runner, { podNetns: pod.name });
    podBackend = new IpRouteBackend(pod.runner);
  });

  it("applies the host and the pod plan: tunnels, MTUs, rules and routes as planned", async () => {
    assert.ok(plan.ztunnelPod);
    const h = await hostBackend.reconcile(plan.host);
    const p = await podBackend.reconcile(plan.ztunnelPod);
    assertMatchesPlan(host, plan.host);
    assertMatchesPlan(pod, plan.ztunnelPod);
    assert.ok(
      details(h, "link").includes(
        "create istioin type vxlan id 1000 remote 10.244.22.2 dstport 4789 mtu 9000",
      ),
    );
    assert.ok(details(h, "link").includes("set vethd2a91c4e mtu 9050 (was 1500)"));
    assert.ok(
      details(p, "link").includes(
        "create pistioout type vxlan id 1001 remote 10.244.22.1 dstport 4789 mtu 9000",
      ),
    );
    assert.ok(details(p, "link").includes("set eth0 mtu 9050 (was 1500)"));
    const istioin = linkJson(host, "istioin");
    assert.deepEqual(
      {
        mtu: istioin.mtu,
        up: (istioin.flags as string[]).includes("UP"),
        info: (istioin.linkinfo as { info_data: Record<string, unknown> }).info_data,
        addrs: (istioin.addr_info as { family: string; local: string; prefixlen: number }[])
          .filter((a) => a.family === "inet")
          .map((a) => `${a.local}/${a.prefixlen}`),
      },
      {
        mtu: 9000,
        up: true,
        info: {
          ...(istioin.linkinfo as { info_data: Record<string, unknown> }).info_data,
          id: 1000,
          remote: "10.244.22.2",
          port: 4789,
        },
        addrs: ["192.168.126.1/30"],
      },
    );
    assert.equal(linkJson(host, "vethd2a91c4e").mtu, 9050);
    assert.equal(linkJson(pod, "eth0").mtu, 9050);
    // The CNI's host route to the pod is someone else's and stays.
    assert.match(ip(host, "route", "show", "table", "main"), /^10\.244\.22\.2 dev vethd2a91c4e scope link/m);
  });

  it("applying again writes nothing, on the host and in the pod", async () => {
    assert.ok(plan.ztunnelPod);
    assert.deepEqual(await hostBackend.reconcile(plan.host), { changes: [], writes: 0 });
    assert.deepEqual(await podBackend.reconcile(plan.ztunnelPod), { changes: [], writes: 0 });
  });

  it("follows a ztunnel restart: tunnels recreated with the new remote, routes on them restored", async () => {
    ip(host, "route", "add", "10.244.22.3", "dev", "vethd2a91c4e", "scope", "link");
    const result = await hostBackend.reconcile(restarted.host);
    assert.deepEqual(details(result, "link"), [
      "recreate istioin type vxlan id 1000 remote 10.244.22.3 dstport 4789 mtu 9000 (was istioin type vxlan id 1000 remote 10.244.22.2 dstport 4789 mtu 9000: has remote 10.244.22.2)",
      "recreate istioout type vxlan id 1001 remote 10.244.22.3 dstport 4789 mtu 9000 (was istioout type vxlan id 1001 remote 10.244.22.2 dstport 4789 mtu 9000: has remote 10.244.22.2)",
    ]);
    assertMatchesPlan(host, restarted.host);
    assert.equal(
      (linkJson(host, "istioout").linkinfo as { info_data: { remote: string } }).info_data.remote,
      "10.244.22.3",
    );
    assert.deepEqual(await hostBackend.reconcile(restarted.host), { changes: [], writes: 0 });
  });

  it("repairs a wrong gateway, a stale route, a duplicate rule and a lost MTU", async () => {
    ip(
      host,
      "route",
      "replace",
      "default",
      "via",
      "10.244.22.9",
      "dev",
      "vethd2a91c4e",
      "table",
      "102",
      "proto",
      "176",
      "onlink",
    );
    ip(
      host,
      "route",
      "add",
      "10.244.22.99",
      "via",
      "192.168.126.2",
      "dev",
      "istioin",
      "table",
      "100",
      "proto",
      "176",
    );
    ip(host, "rule", "add", "priority", "103", "fwmark", "0x1/0x1", "lookup", "100");
    ip(host, "link", "set", "dev", "vethd2a91c4e", "mtu", "1500");
    const result = await hostBackend.reconcile(restarted.host);
    assert.deepEqual(details(result).sort(), [
      "delete 10.244.22.99 via 192.168.126.2 dev istioin table 100 proto 176",
      "delete 103: from all fwmark 0x1/0x1 lookup 100",
      "replace default via 10.244.22.3 dev vethd2a91c4e table 102 proto 176 onlink (was default via 10.244.22.9 dev vethd2a91c4e table 102 proto 176 onlink)",
      "set vethd2a91c4e mtu 9050 (was 1500)",
    ]);
    assertMatchesPlan(host, restarted.host);
    assert.equal(
      ip(host, "rule", "show", "priority", "103")
        .split("\n")
        .filter((l) => l !== "").length,
      1,
    );
  });

  it("makes a tunnel's addresses exact again and restores the routes the kernel dropped with them", async () => {
    ip(host, "addr", "del", "192.168.126.1/30", "dev", "istioin");
    ip(host, "addr", "add", "192.168.126.5/30", "dev", "istioin");
    ip(host, "link", "set", "dev", "istioout", "down");
    const result = await hostBackend.reconcile(restarted.host);
    const changes = details(result);
    for (const c of [
      "delete 192.168.126.5/30 dev istioin",
      "add 192.168.126.1/30 dev istioin",
      "set istioout up",
      "add default via 192.168.127.2 dev istioout table 101 proto 176",
    ]) {
      assert.ok(changes.includes(c), `${c} in ${JSON.stringify(changes)}`);
    }
    assertMatchesPlan(host, restarted.host);
    assert.deepEqual(await hostBackend.reconcile(restarted.host), { changes: [], writes: 0 });
  });

  it("cleanup leaves nothing owned in either namespace; the CNI's routes and links stay", async () => {
    await hostBackend.cleanup();
    await podBackend.cleanup();
    for (const ns of [host, pod]) {
      assert.equal(anyOwnedRoute(ns), "");
      assert.equal(tidy(ip(ns, "rule")), DEFAULT_RULES);
    }
    for (const name of ["istioin", "istioout"]) assert.equal(hasLink(host, name), false, name);
    for (const name of ["pistioin", "pistioout"]) assert.equal(hasLink(pod, name), false, name);
    assert.match(ip(host, "route"), /^10\.244\.22\.2 dev vethd2a91c4e scope link/m);
    assert.match(ip(pod, "route"), /^default via 10\.244\.22\.1 dev eth0/m);
  });
});

describe("ip backend on a single node with a veth tunnel (examples/large edge1)", { ...rootOnly }, () => {
  const plan = examplePlan("large", "edge1");
  let host: TestNetns;
  let pod: TestNetns;
  let hostBackend: IpRouteBackend;
  let podBackend: IpRouteBackend;

  before(() => {
    host = space("edge");
    pod = space("edgezt");
    addNic(host, "eth0", "10.10.0.31/24");
    addZtunnelVeth(host, pod, "veth7f3e0b21", "10.244.31.1", "10.244.31.2");
    hostBackend = new IpRouteBackend(host.runner, { podNetns: pod.path });
    podBackend = new IpRouteBackend(pod.runner);
  });

  it("the pod side fails, naming the missing peers, until the host has created them", async () => {
    assert.ok(plan.ztunnelPod);
    await assert.rejects(podBackend.reconcile(plan.ztunnelPod), (e: unknown) => {
      assert.ok(e instanceof ApplyError);
      assert.match(
        e.message,
        /^link: link pistioin \(the pod end of a veth pair the host creates\) does not exist; link pistioout/,
      );
      return true;
    });
    assert.equal(tidy(ip(pod, "rule")), DEFAULT_RULES, "nothing written");
  });

  it("creates the veth pairs with their peers in the pod; the pod side addresses them", async () => {
    assert.ok(plan.ztunnelPod);
    const h = await hostBackend.reconcile(plan.host);
    assert.deepEqual(details(h, "link"), [
      `create istioin type veth peer name pistioin netns ${pod.path} mtu 9000`,
      `create istioout type veth peer name pistioout netns ${pod.path} mtu 9000`,
    ]);
    const p = await podBackend.reconcile(plan.ztunnelPod);
    assert.deepEqual(details(p, "address"), [
      "add 192.168.126.2/30 dev pistioin",
      "add 192.168.127.2/30 dev pistioout",
    ]);
    assertMatchesPlan(host, plan.host);
    assertMatchesPlan(pod, plan.ztunnelPod);
    assert.equal((linkJson(pod, "pistioin").linkinfo as { info_kind: string }).info_kind, "veth");
    assert.equal(typeof linkJson(host, "istioin").link_netnsid, "number");
    // Both ends are up (a veth has carrier only then), and the host routes to the ztunnel's ends.
    for (const name of ["istioin", "istioout"])
      assert.ok((linkJson(host, name).flags as string[]).includes("LOWER_UP"), name);
    assert.match(ip(host, "route", "get", "192.168.126.2"), /dev istioin/);
    assert.match(ip(pod, "route", "get", "192.168.127.1"), /dev pistioout/);
  });

  it("applying again writes nothing", async () => {
    assert.ok(plan.ztunnelPod);
    assert.deepEqual(await hostBackend.reconcile(plan.host), { changes: [], writes: 0 });
    assert.deepEqual(await podBackend.reconcile(plan.ztunnelPod), { changes: [], writes: 0 });
  });

  it("recreates a pair whose pod end vanished, with the routes that went with it", async () => {
    assert.ok(plan.ztunnelPod);
    ip(pod, "link", "del", "dev", "pistioin");
    assert.equal(hasLink(host, "istioin"), false, "the host end went with it");
    const h = await hostBackend.reconcile(plan.host);
    assert.deepEqual(details(h, "link"), [
      `create istioin type veth peer name pistioin netns ${pod.path} mtu 9000`,
    ]);
    assert.ok(
      details(h, "route").includes(
        "add 10.244.31.6 via 192.168.126.2 dev istioin table 100 proto 176 src 10.244.31.1",
      ),
    );
    const p = await podBackend.reconcile(plan.ztunnelPod);
    assert.ok(details(p).includes("add 192.168.126.2/30 dev pistioin"));
    assertMatchesPlan(host, plan.host);
    assertMatchesPlan(pod, plan.ztunnelPod);
    assert.deepEqual(await hostBackend.reconcile(plan.host), { changes: [], writes: 0 });
    assert.deepEqual(await podBackend.reconcile(plan.ztunnelPod), { changes: [], writes: 0 });
  });

  it("cleanup removes both ends of each pair and every owned rule and route", async () => {
    const h = await hostBackend.cleanup();
    assert.deepEqual(details(h, "link").sort(), [
      "delete istioin type veth mtu 9000",
      "delete istioout type veth mtu 9000",
    ]);
    await podBackend.cleanup();
    for (const ns of [host, pod]) {
      assert.equal(anyOwnedRoute(ns), "");
      assert.equal(tidy(ip(ns, "rule")), DEFAULT_RULES);
    }
    assert.equal(hasLink(pod, "pistioin"), false);
    assert.equal(hasLink(pod, "pistioout"), false);
  });
});

describe("ip backend refuses plans it cannot apply, before writing anything", { ...rootOnly }, () => {
  let ns: TestNetns;
  let backend: IpRouteBackend;
  const rule: IpRule = {
    family: 4,
    priority: 101,
    fwmark: { value: 0x100, mask: 0x100 },
    action: { lookup: 101 },
  };
  const state = (over: Partial<NetState>): NetState => ({
    firewalls: [],
    ipsets: [],
    rules: [rule],
    localRulePriority: 0,
    routes: [],
    links: [],
    linkSettings: [],
    sysctls: [],
    ...over,
  });

  before(() => {
    ns = space("refuse");
    addNic(ns, "nic0", "10.30.0.1/24");
    backend = new IpRouteBackend(ns.runner);
  });

  const assertNothingWritten = (): void => {
    assert.equal(tidy(ip(ns, "rule")), DEFAULT_RULES);
    assert.equal(anyOwnedRoute(ns), "");
  };

  it("a route on a device that does not exist names the route and the device", async () => {
    const routes: Route[] = [
      { family: 4, table: 100, dst: "10.30.5.0/24", via: "10.30.0.2", dev: "nosuchdev0", proto: "offmesh" },
    ];
    await assert.rejects(backend.reconcile(state({ routes })), {
      name: "ApplyError",
      message:
        'route: route "10.30.5.0/24 via 10.30.0.2 dev nosuchdev0 table 100 proto 176" needs device nosuchdev0, which does not exist',
    });
    assertNothingWritten();
  });

  it("a route whose source address no link has (the pod gateway, before the CNI put it on a veth)", async () => {
    const routes: Route[] = [
      {
        family: 4,
        table: 100,
        dst: "10.30.5.0/24",
        via: "10.30.0.2",
        dev: "nic0",
        src: "10.244.22.1",
        proto: "offmesh",
      },
    ];
    await assert.rejects(
      backend.reconcile(state({ routes })),
      /needs source address 10\.244\.22\.1, which no link here has/,
    );
    assertNothingWritten();
  });

  it("a link setting on a missing link names the link", async () => {
    await assert.rejects(
      backend.reconcile(state({ linkSettings: [{ name: "vethgone0", mtu: 9050, why: "test" }] })),
      /link: link vethgone0 does not exist/,
    );
    assertNothingWritten();
  });

  it("a planned route that would displace someone else's route", async () => {
    ip(ns, "route", "add", "10.30.6.0/24", "via", "10.30.0.3", "dev", "nic0", "table", "100");
    const routes: Route[] = [
      { family: 4, table: 100, dst: "10.30.6.0/24", via: "10.30.0.2", dev: "nic0", proto: "offmesh" },
    ];
    await assert.rejects(
      backend.reconcile(state({ routes })),
      /would replace "10\.30\.6\.0\/24 via 10\.30\.0\.3 dev nic0 table 100 proto boot", which offmesh does not own/,
    );
    assertNothingWritten();
    assert.match(ip(ns, "route", "show", "table", "100"), /10\.30\.6\.0\/24 via 10\.30\.0\.3/);
  });

  it("a veth tunnel without the pod's namespace, a rule at a foreign priority", async () => {
    const links = [
      {
        kind: "veth",
        name: "istioin",
        peer: "pistioin",
        peerNetns: "ztunnel-pod",
        addresses: [],
        mtu: 1500,
      } as const,
    ];
    await assert.rejects(backend.reconcile(state({ links })), /no pod namespace was given/);
    await assert.rejects(
      backend.reconcile(state({ rules: [{ ...rule, priority: 5000 }] })),
      /priority 5000 is not owned/,
    );
    assertNothingWritten();
  });

  it("a kernel error mid-batch names the line it failed on", async () => {
    const routes: Route[] = [
      { family: 4, table: 100, dst: "10.30.7.0/24", via: "10.77.0.1", dev: "nic0", proto: "offmesh" },
    ];
    await assert.rejects(backend.reconcile(state({ rules: [], routes })), (e: unknown) => {
      assert.ok(e instanceof ApplyError);
      assert.match(
        e.message,
        /"route replace 10\.30\.7\.0\/24 via 10\.77\.0\.1 dev nic0 table 100 proto 176" failed: .*gateway/i,
      );
      return true;
    });
  });
});

describe("ip backend route delta for pod add and remove", { ...rootOnly }, () => {
  let ns: TestNetns;
  let backend: IpRouteBackend;
  const podRoute = (dst: string, via = "10.40.0.2"): Route => ({
    family: 4,
    table: 100,
    dst,
    via,
    dev: "nic0",
    proto: "offmesh",
  });

  before(() => {
    ns = space("delta");
    addNic(ns, "nic0", "10.40.0.1/24");
    backend = new IpRouteBackend(ns.runner);
  });

  it("adds in one batch; deleting a route that is not there is no error and no change", async () => {
    const result = await backend.applyRouteDelta(
      [podRoute("10.244.0.5"), podRoute("10.244.0.6")],
      [podRoute("10.244.0.9")],
    );
    assert.equal(result.writes, 1);
    assert.deepEqual(details(result), [
      "add 10.244.0.5 via 10.40.0.2 dev nic0 table 100 proto 176",
      "add 10.244.0.6 via 10.40.0.2 dev nic0 table 100 proto 176",
    ]);
    assert.equal(
      ownedRoutes(ns, 100),
      "10.244.0.5 via 10.40.0.2 dev nic0 proto 176\n10.244.0.6 via 10.40.0.2 dev nic0 proto 176\n",
    );
  });

  it("removes a pod and re-adds one with a new next hop", async () => {
    const result = await backend.applyRouteDelta(
      [podRoute("10.244.0.6", "10.40.0.3")],
      [podRoute("10.244.0.5")],
    );
    assert.deepEqual(
      result.changes.map((c: Change) => c.action),
      ["delete", "add"],
    );
    assert.equal(ownedRoutes(ns, 100), "10.244.0.6 via 10.40.0.3 dev nic0 proto 176\n");
  });

  it("any other failure is an ApplyError naming the line", async () => {
    await assert.rejects(
      backend.applyRouteDelta([{ ...podRoute("10.244.0.7"), dev: "nosuchdev0" }], []),
      /route: .*"route replace 10\.244\.0\.7 via 10\.40\.0\.2 dev nosuchdev0 table 100 proto 176" failed: .*nosuchdev0/,
    );
  });
});

describe("ip backend with IPv6 rules and routes", { ...rootOnly }, () => {
  let ns: TestNetns;
  let backend: IpRouteBackend;
  const state: NetState = {
    firewalls: [],
    ipsets: [],
    rules: [
      { family: 6, priority: 100, fwmark: { value: 0x200, mask: 0x200 }, action: { goto: 32766 } },
      { family: 6, priority: 101, fwmark: { value: 0x100, mask: 0x100 }, action: { lookup: 101 } },
    ],
    localRulePriority: 0,
    routes: [
      { family: 6, table: 101, dst: "default", via: "fd00:30::2", dev: "nic6", proto: "offmesh" },
      { family: 6, table: 100, dst: "fd00:244::5", via: "fd00:30::2", dev: "nic6", proto: "offmesh" },
      { family: 6, table: 100, type: "blackhole", dst: "fd00:244::/64", proto: "offmesh" },
      { family: 6, table: 102, type: "local", dst: "default", dev: "lo", scope: "host", proto: "offmesh" },
    ],
    links: [],
    linkSettings: [],
    sysctls: [],
  };

  before(() => {
    ns = space("v6");
    ip(ns, "link", "add", "name", "nic6", "type", "veth", "peer", "name", "nic6-far");
    ip(ns, "addr", "add", "fd00:30::1/64", "dev", "nic6", "nodad");
    ip(ns, "link", "set", "dev", "nic6", "up");
    ip(ns, "link", "set", "dev", "nic6-far", "up");
  });

  it("applies, converges to zero writes, and cleans up", async () => {
    backend = new IpRouteBackend(ns.runner);
    const first = await backend.reconcile(state);
    assert.equal(first.writes, 2);
    assert.equal(tidy(ip(ns, "-6", "rule")), renderIpRules(state.rules, 6, 0));
    // IPv6 listings add the metric and preference render.ts leaves out.
    assert.equal(
      ownedRoutes(ns, 100, 6),
      "fd00:244::5 via fd00:30::2 dev nic6 proto 176 metric 1024 pref medium\n" +
        "blackhole fd00:244::/64 dev lo proto 176 metric 1024 pref medium\n",
    );
    assert.deepEqual(await backend.reconcile(state), { changes: [], writes: 0 });
    ip(
      ns,
      "-6",
      "route",
      "replace",
      "default",
      "via",
      "fd00:30::3",
      "dev",
      "nic6",
      "table",
      "101",
      "proto",
      "176",
    );
    assert.deepEqual(details(await backend.reconcile(state)), [
      "replace default via fd00:30::2 dev nic6 table 101 proto 176 metric 1024 (was default via fd00:30::3 dev nic6 table 101 proto 176 metric 1024)",
    ]);
    await backend.cleanup();
    assert.equal(anyOwnedRoute(ns), "");
    assert.equal(tidy(ip(ns, "-6", "rule")), renderIpRules([], 6, 0));
  });
});
