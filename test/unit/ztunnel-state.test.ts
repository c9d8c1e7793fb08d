import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { Resource } from "../../src/xds/messages.js";
import { encodeAddress, encodeAuthorization, encodeServedNodes, packAny } from "../../src/xds/proto.js";
import {
  AuthzAction,
  AuthzScope,
  NetworkMode,
  TunnelProtocol,
  TYPE_URL,
  WorkloadStatus,
  WorkloadType,
} from "../../src/xds/types.js";
import type { Authorization, Service, Workload } from "../../src/xds/types.js";
import { ZtunnelState } from "../../src/ztunnel/state/state.js";
import type { StateChange } from "../../src/ztunnel/state/state.js";
import { canonicalizeIpText, formatIp, parseIp } from "../../src/ztunnel/state/ip.js";

// ---- builders ---------------------------------------------------------------------------------

const ip = (text: string): Uint8Array => {
  const b = parseIp(text);
  if (b === undefined) throw new Error(`bad test IP ${text}`);
  return b;
};

let versionCounter = 0;
const resource = (name: string, typeUrl: string, bytes: Uint8Array): Resource => ({
  name,
  version: String(++versionCounter),
  resource: packAny(typeUrl, bytes),
});

function workload(name: string, over: Partial<Workload> = {}): Workload {
  return {
    uid: `Kubernetes//Pod/default/${name}`,
    name,
    namespace: "default",
    addresses: [],
    tunnelProtocol: TunnelProtocol.HBONE,
    trustDomain: "cluster.local",
    serviceAccount: name,
    canonicalName: name.replace(/-\d+$/, ""),
    canonicalRevision: "v1",
    workloadType: WorkloadType.POD,
    workloadName: name.replace(/-\d+$/, ""),
    status: WorkloadStatus.HEALTHY,
    clusterId: "Kubernetes",
    node: "node-a",
    ...over,
  };
}

function service(name: string, vip: string, over: Partial<Service> = {}): Service {
  return {
    name,
    namespace: "default",
    hostname: `${name}.default.svc.cluster.local`,
    addresses: [{ network: "", address: ip(vip) }],
    ports: [{ servicePort: 80, targetPort: 8080 }],
    ...over,
  };
}

const SVC_KEY = "default/web.default.svc.cluster.local";

function policy(name: string, over: Partial<Authorization> = {}): Authorization {
  return {
    name,
    namespace: "default",
    scope: AuthzScope.NAMESPACE,
    action: AuthzAction.ALLOW,
    rules: [{ clauses: [] }],
    ...over,
  };
}

const wres = (w: Workload, name = w.uid): Resource =>
  resource(name, TYPE_URL.address, encodeAddress({ workload: w }));
const sres = (s: Service, name = `${s.namespace}/${s.hostname}`): Resource =>
  resource(name, TYPE_URL.address, encodeAddress({ service: s }));
const pres = (p: Authorization, name = `${p.namespace}/${p.name}`): Resource =>
  resource(name, TYPE_URL.authorization, encodeAuthorization(p));
const served = (node: string, nodes: string[], name = node): Resource =>
  resource(name, TYPE_URL.servedNodes, encodeServedNodes({ node, nodes }));

function addAddresses(state: ZtunnelState, ...added: Resource[]) {
  return state.applyAddresses({ added, removed: [] });
}

// ---- tests ------------------------------------------------------------------------------------

describe("ip helpers", () => {
  it("canonicalizes IPv6 text and IPv4-mapped addresses", () => {
    assert.equal(canonicalizeIpText("2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
    assert.equal(canonicalizeIpText("::ffff:10.0.0.1"), "10.0.0.1");
    assert.equal(canonicalizeIpText("::ffff:a00:1"), "10.0.0.1");
    assert.equal(canonicalizeIpText("fe80::1%eth0"), undefined);
    assert.equal(canonicalizeIpText("1:2:3:4:5:6:7:8:9"), undefined);
    assert.equal(canonicalizeIpText("1::2::3"), undefined);
    assert.equal(canonicalizeIpText("10.0.0.01"), undefined);
    assert.equal(formatIp(ip("2001:db8:0:1:0:0:0:1")), "2001:db8:0:1::1");
    assert.equal(formatIp(ip("1:0:0:2:0:0:0:3")), "1:0:0:2::3");
    assert.equal(formatIp(ip("::")), "::");
    assert.equal(formatIp(ip("1:2:3:4:5:6:7:8")), "1:2:3:4:5:6:7:8");
    assert.equal(formatIp(ip("::1.2.3.4")), "::102:304");
  });
});

describe("ZtunnelState: workloads", () => {
  it("declares the three wildcard types", () => {
    const types = new ZtunnelState().watchedTypes();
    assert.deepEqual(
      types.map((t) => [t.typeUrl, t.mode]),
      [
        [TYPE_URL.address, "wildcard"],
        [TYPE_URL.authorization, "wildcard"],
        [TYPE_URL.servedNodes, "wildcard"],
      ],
    );
  });

  it("indexes workloads by uid and by network-aware IP, and removes them by name", () => {
    const state = new ZtunnelState();
    const a = workload("a-1", { addresses: [ip("10.0.0.1"), ip("fd00::1")] });
    const b = workload("b-1", { addresses: [ip("10.0.0.1")], network: "net2" });
    const [address] = state.watchedTypes();
    assert.deepEqual(address?.apply({ added: [wres(a), wres(b)], removed: [] }), { rejected: [] });

    assert.equal(state.workload(a.uid)?.name, "a-1");
    assert.equal(state.workloadByIp("10.0.0.1")?.uid, a.uid);
    assert.equal(state.workloadByIp("10.0.0.1", "net2")?.uid, b.uid);
    assert.equal(state.workloadByIp("fd00:0:0::1")?.uid, a.uid);
    assert.equal(state.workloadByIp("::ffff:10.0.0.1")?.uid, a.uid, "IPv4-mapped text is the IPv4 address");
    assert.equal(state.workloadByIp("10.0.0.2"), undefined);
    assert.equal(state.workloadByIp("not an ip"), undefined);

    state.applyAddresses({ added: [], removed: [a.uid] });
    assert.equal(state.workload(a.uid), undefined);
    assert.equal(state.workloadByIp("10.0.0.1"), undefined);
    assert.equal(state.workloadByIp("fd00::1"), undefined);
    assert.equal(state.workloadByIp("10.0.0.1", "net2")?.uid, b.uid);
  });

  it("moves the IP index when a workload's addresses change", () => {
    const state = new ZtunnelState();
    addAddresses(state, wres(workload("a-1", { addresses: [ip("10.0.0.1")] })));
    addAddresses(state, wres(workload("a-1", { addresses: [ip("10.0.0.9")] })));
    assert.equal(state.workloadByIp("10.0.0.1"), undefined);
    assert.equal(state.workloadByIp("10.0.0.9")?.name, "a-1");
    assert.equal(state.counts().workloads, 1);
  });

  it("rejects invalid resources one by one and keeps the valid ones", () => {
    const state = new ZtunnelState();
    const good = workload("good-1", { addresses: [ip("10.0.0.1")] });
    const result = addAddresses(
      state,
      resource("garbage", TYPE_URL.address, new Uint8Array([0x0a, 0xff, 0xff])),
      wres(workload("short-1", { addresses: [new Uint8Array([10, 0, 0])] })),
      wres(workload("named-1"), "someone-else"),
      wres(workload("nons-1", { namespace: "" })),
      wres(workload("badport-1", { services: { [SVC_KEY]: { ports: [{ servicePort: 70000 }] } } })),
      resource("empty", TYPE_URL.address, encodeAddress({})),
      { name: "nobody", version: "1" },
      wres(good),
      sres(service("web", "10.96.0.1"), "default/other"),
    );
    const reasons = Object.fromEntries(result.rejected.map((r) => [r.name, r.reason]));
    assert.deepEqual(Object.keys(reasons).sort(), [
      "Kubernetes//Pod/default/badport-1",
      "Kubernetes//Pod/default/nons-1",
      "Kubernetes//Pod/default/short-1",
      "default/other",
      "empty",
      "garbage",
      "nobody",
      "someone-else",
    ]);
    assert.match(reasons["garbage"] ?? "", /^cannot decode/);
    assert.equal(
      reasons["Kubernetes//Pod/default/short-1"],
      "addresses[0] has 3 bytes; an IP address has 4 or 16",
    );
    assert.match(reasons["someone-else"] ?? "", /resource name is not the workload's uid/);
    assert.equal(reasons["Kubernetes//Pod/default/nons-1"], "workload without a namespace");
    assert.match(reasons["Kubernetes//Pod/default/badport-1"] ?? "", /servicePort 70000 is not a port/);
    assert.equal(reasons["empty"], "address with neither a workload nor a service");
    assert.equal(reasons["nobody"], "resource without a body");
    assert.match(reasons["default/other"] ?? "", /resource name is not the service's/);
    assert.equal(state.workload(good.uid)?.name, "good-1");
    assert.equal(state.counts().workloads, 1);
    assert.equal(state.counts().services, 0);
  });

  it("keeps the last good version of a resource whose update is rejected", () => {
    const state = new ZtunnelState();
    const v1 = workload("a-1", { addresses: [ip("10.0.0.1")] });
    addAddresses(state, wres(v1));
    const result = addAddresses(state, wres({ ...v1, addresses: [new Uint8Array(5)] }));
    assert.equal(result.rejected.length, 1);
    assert.equal(state.workloadByIp("10.0.0.1")?.uid, v1.uid);
  });

  it("resolves an IP claimed twice: pod network over host network, healthy over unhealthy, else the latest", () => {
    const state = new ZtunnelState();
    const hostA = workload("host-a", {
      addresses: [ip("192.168.1.10")],
      networkMode: NetworkMode.HOST_NETWORK,
    });
    const hostB = workload("host-b", {
      addresses: [ip("192.168.1.10")],
      networkMode: NetworkMode.HOST_NETWORK,
    });
    addAddresses(state, wres(hostA), wres(hostB));
    assert.equal(state.workloadByIp("192.168.1.10")?.name, "host-b", "the latest claim of equal rank wins");
    // An update of host-a keeps its place: it does not win the address back.
    addAddresses(state, wres({ ...hostA, canonicalRevision: "v2" }));
    assert.equal(state.workloadByIp("192.168.1.10")?.name, "host-b");

    const pod = workload("pod-1", { addresses: [ip("192.168.1.10")] });
    addAddresses(state, wres(pod));
    addAddresses(
      state,
      wres(workload("host-c", { addresses: [ip("192.168.1.10")], networkMode: NetworkMode.HOST_NETWORK })),
    );
    assert.equal(
      state.workloadByIp("192.168.1.10")?.name,
      "pod-1",
      "a pod-network workload beats host-network ones",
    );

    const old = workload("old-1", { addresses: [ip("10.0.0.5")], status: WorkloadStatus.UNHEALTHY });
    const fresh = workload("new-1", { addresses: [ip("10.0.0.5")] });
    addAddresses(state, wres(fresh), wres(old));
    assert.equal(state.workloadByIp("10.0.0.5")?.name, "new-1", "healthy beats unhealthy even when earlier");

    state.applyAddresses({ added: [], removed: [pod.uid] });
    assert.equal(state.workloadByIp("192.168.1.10")?.name, "host-c", "removal hands the address on");
    state.applyAddresses({ added: [], removed: [fresh.uid] });
    assert.equal(state.workloadByIp("10.0.0.5")?.name, "old-1");

    const dump = state.configDump();
    assert.deepEqual(dump.addressConflicts, [
      {
        address: "/192.168.1.10",
        workloads: [
          "Kubernetes//Pod/default/host-c",
          "Kubernetes//Pod/default/host-a",
          "Kubernetes//Pod/default/host-b",
        ],
      },
    ]);
  });

  it("removes services by name, and replaces a name that switches between workload and service", () => {
    const state = new ZtunnelState();
    const s = service("web", "10.96.0.1");
    addAddresses(state, sres(s));
    assert.equal(state.serviceByVip("10.96.0.1")?.name, "web");
    state.applyAddresses({ added: [], removed: [SVC_KEY] });
    assert.equal(state.serviceByVip("10.96.0.1"), undefined);
    assert.equal(state.serviceByKey(SVC_KEY), undefined);

    // A (strange) workload whose uid is the service's name, then the service under that name.
    addAddresses(state, wres(workload("odd", { uid: SVC_KEY, addresses: [ip("10.0.0.7")] })));
    assert.equal(state.workloadByIp("10.0.0.7")?.uid, SVC_KEY);
    addAddresses(state, sres(s));
    assert.equal(state.workload(SVC_KEY), undefined);
    assert.equal(state.workloadByIp("10.0.0.7"), undefined);
    assert.equal(state.serviceByKey(SVC_KEY)?.name, "web");

    // Removing an unknown name changes nothing.
    const before = state.version;
    state.applyAddresses({ added: [], removed: ["nothing/here"] });
    assert.equal(state.version, before);
  });
});

describe("ZtunnelState: services and endpoints", () => {
  function webState() {
    const state = new ZtunnelState();
    const web = service("web", "10.96.0.1", {
      addresses: [
        { network: "", address: ip("10.96.0.1") },
        { network: "", address: ip("fd00:96::1") },
      ],
      ports: [
        { servicePort: 80, targetPort: 8080 },
        { servicePort: 443, targetPort: 0 },
      ],
    });
    const ports = { ports: [{ servicePort: 80, targetPort: 8080 }, { servicePort: 443 }] };
    const w1 = workload("web-1", {
      addresses: [ip("10.0.0.1"), ip("fd00::1")],
      services: { [SVC_KEY]: ports },
    });
    const w2 = workload("web-2", { addresses: [ip("10.0.0.2")], services: { [SVC_KEY]: ports } });
    const sick = workload("web-3", {
      addresses: [ip("10.0.0.3")],
      status: WorkloadStatus.UNHEALTHY,
      services: { [SVC_KEY]: ports },
    });
    const other = workload("other-1", {
      addresses: [ip("10.0.0.4")],
      services: { "default/other.default.svc.cluster.local": ports },
    });
    assert.deepEqual(
      addAddresses(state, sres(web), wres(w1), wres(w2), wres(sick), wres(other)).rejected,
      [],
    );
    return { state, web, w1, w2, sick };
  }

  it("finds services by VIP (either family) and by namespace/hostname", () => {
    const { state } = webState();
    assert.equal(state.serviceByVip("10.96.0.1")?.name, "web");
    assert.equal(state.serviceByVip("fd00:96:0::1")?.name, "web");
    assert.equal(state.serviceByVip("10.96.0.1", "other-net"), undefined);
    assert.equal(state.service("default", "web.default.svc.cluster.local")?.name, "web");
    assert.equal(state.serviceByKey(SVC_KEY)?.name, "web");
  });

  it("picks healthy endpoints round-robin with their target port", () => {
    const { state } = webState();
    const picks = [0, 1, 2, 3].map(() => {
      const r = state.resolveService("10.96.0.1", 80);
      assert.ok(r.endpoint, r.reason);
      assert.equal(r.endpoint.targetPort, 8080);
      return r.endpoint.workload.name;
    });
    assert.deepEqual(new Set(picks), new Set(["web-1", "web-2"]), "the unhealthy web-3 is never picked");
    assert.notEqual(picks[0], picks[1], "consecutive picks rotate");
    assert.equal(picks[0], picks[2]);
  });

  it("uses the service port when the target port is 0 or absent", () => {
    const { state } = webState();
    const r = state.resolveService("10.96.0.1", 443);
    assert.equal(r.endpoint?.targetPort, 443);
  });

  it("dials the endpoint address of the VIP's family", () => {
    const { state } = webState();
    const seen = new Map<string, string>();
    for (let i = 0; i < 2; i++) {
      const r = state.resolveService("fd00:96::1", 80);
      assert.ok(r.endpoint);
      seen.set(r.endpoint.workload.name, r.endpoint.address);
    }
    assert.equal(seen.get("web-1"), "fd00::1");
    assert.equal(seen.get("web-2"), "10.0.0.2", "no address of the family: the first one");
  });

  it("explains why nothing was picked", () => {
    const { state, w1, w2 } = webState();
    assert.deepEqual(state.resolveService("10.96.0.99", 80), {
      service: undefined,
      endpoint: undefined,
      reason: "no service has VIP /10.96.0.99",
    });
    const noPort = state.resolveService("10.96.0.1", 81);
    assert.equal(noPort.endpoint, undefined);
    assert.equal(noPort.reason, `service ${SVC_KEY} has no port 81`);

    state.applyAddresses({ added: [], removed: [w1.uid, w2.uid] });
    const unhealthy = state.resolveService("10.96.0.1", 80);
    assert.equal(unhealthy.reason, `service ${SVC_KEY} has no healthy endpoint for port 80 (1 unhealthy)`);
  });

  it("uses unhealthy endpoints only when the health policy is ALLOW_ALL and none is healthy", () => {
    const { state, web, w1, w2 } = webState();
    addAddresses(state, sres({ ...web, loadBalancing: { healthPolicy: 1 } }));
    assert.notEqual(state.resolveService("10.96.0.1", 80).endpoint?.workload.name, "web-3");
    state.applyAddresses({ added: [], removed: [w1.uid, w2.uid] });
    assert.equal(state.resolveService("10.96.0.1", 80).endpoint?.workload.name, "web-3");
  });

  it("keeps endpoint sets current as workloads change", () => {
    const { state, w1, w2, sick } = webState();
    // web-2 leaves the service, web-3 becomes healthy.
    addAddresses(state, wres({ ...w2, services: {} }), wres({ ...sick, status: WorkloadStatus.HEALTHY }));
    const names = new Set(
      [0, 1, 2, 3].map(() => state.resolveService("10.96.0.1", 80).endpoint?.workload.name),
    );
    assert.deepEqual(names, new Set(["web-1", "web-3"]));
    state.applyAddresses({ added: [], removed: [w1.uid, sick.uid] });
    assert.equal(
      state.resolveService("10.96.0.1", 80).reason,
      `service ${SVC_KEY} has no endpoint for port 80`,
    );
    // A workload whose PortList lacks the port is no endpoint of that port.
    addAddresses(state, wres({ ...w1, services: { [SVC_KEY]: { ports: [{ servicePort: 443 }] } } }));
    assert.equal(state.resolveService("10.96.0.1", 80).endpoint, undefined);
    assert.equal(state.resolveService("10.96.0.1", 443).endpoint?.workload.name, "web-1");
  });
});

describe("ZtunnelState: served nodes", () => {
  it("serves nothing until told, then the nodes listed; removal serves nothing again", () => {
    const state = new ZtunnelState({ node: "dpu-1" });
    const onA = workload("a-1", { addresses: [ip("10.0.0.1")], node: "cpu-1" });
    const onB = workload("b-1", { addresses: [ip("10.0.0.2")], node: "cpu-2" });
    addAddresses(state, wres(onA), wres(onB));
    assert.equal(state.isServedHere(onA), false);
    assert.deepEqual(state.servedWorkloads(), []);

    assert.deepEqual(state.applyServedNodes({ added: [served("dpu-1", ["dpu-1", "cpu-1"])], removed: [] }), {
      rejected: [],
    });
    assert.equal(state.isServedHere(onA), true);
    assert.equal(state.isServedHere(onB), false);
    assert.equal(state.servedWorkloadByIp("10.0.0.1")?.name, "a-1");
    assert.equal(state.servedWorkloadByIp("10.0.0.2"), undefined);
    assert.deepEqual(
      state.servedWorkloads().map((w) => w.name),
      ["a-1"],
    );
    assert.equal(state.isServedHere(workload("nonode", { node: undefined })), false);

    state.applyServedNodes({ added: [], removed: ["dpu-1"] });
    assert.equal(state.isServedHere(onA), false);
    assert.equal(state.servedNodes().nodes.size, 0);
  });

  it("rejects served nodes of another node or under another name", () => {
    const state = new ZtunnelState({ node: "dpu-1" });
    const result = state.applyServedNodes({
      added: [served("dpu-2", ["cpu-2"]), served("dpu-1", ["cpu-1"], "dpu-x")],
      removed: [],
    });
    assert.deepEqual(
      result.rejected.map((r) => r.name),
      ["dpu-2", "dpu-x"],
    );
    assert.match(result.rejected[0]?.reason ?? "", /this proxy runs on dpu-1/);
    assert.equal(state.servedNodes().nodes.size, 0);
  });
});

describe("ZtunnelState: policies", () => {
  function policyState() {
    const state = new ZtunnelState();
    const global = policy("mesh", { namespace: "istio-system", scope: AuthzScope.GLOBAL });
    const ns = policy("ns-wide");
    const otherNs = policy("elsewhere", { namespace: "other" });
    const selected = policy("for-web", { scope: AuthzScope.WORKLOAD_SELECTOR });
    const notSelected = policy("for-db", { scope: AuthzScope.WORKLOAD_SELECTOR });
    const result = state.applyAuthorizations({
      added: [pres(global), pres(ns), pres(otherNs), pres(selected), pres(notSelected)],
      removed: [],
    });
    assert.deepEqual(result.rejected, []);
    return state;
  }

  const keys = (list: readonly Authorization[]) => list.map((p) => `${p.namespace}/${p.name}`).sort();

  it("applies global, own-namespace and selected policies, skipping unknown names", () => {
    const state = policyState();
    const web = workload("web-1", {
      authorizationPolicies: ["default/for-web", "default/missing", "default/ns-wide"],
    });
    assert.deepEqual(keys(state.policiesFor(web)), [
      "default/for-web",
      "default/ns-wide",
      "istio-system/mesh",
    ]);
    const plain = workload("db-1");
    assert.deepEqual(keys(state.policiesFor(plain)), ["default/ns-wide", "istio-system/mesh"]);
    const elsewhere = workload("x-1", { namespace: "other" });
    assert.deepEqual(keys(state.policiesFor(elsewhere)), ["istio-system/mesh", "other/elsewhere"]);
  });

  it("recomputes the applicable policies when policies change", () => {
    const state = policyState();
    const web = workload("web-1", { authorizationPolicies: ["default/for-web"] });
    const first = state.policiesFor(web);
    assert.equal(state.policiesFor(web), first, "cached while nothing changes");
    state.applyAuthorizations({ added: [], removed: ["default/for-web"] });
    assert.deepEqual(keys(state.policiesFor(web)), ["default/ns-wide", "istio-system/mesh"]);
    // A policy changing scope moves between the indexes.
    state.applyAuthorizations({
      added: [pres(policy("ns-wide", { scope: AuthzScope.WORKLOAD_SELECTOR }))],
      removed: [],
    });
    assert.deepEqual(keys(state.policiesFor(web)), ["istio-system/mesh"]);
    assert.equal(state.policy("default/ns-wide")?.scope, AuthzScope.WORKLOAD_SELECTOR);
  });

  it("rejects policies that cannot be enforced", () => {
    const state = new ZtunnelState();
    const result = state.applyAuthorizations({
      added: [
        pres(policy("bad-string", { rules: [{ clauses: [{ matches: [{ principals: [{}] }] }] }] })),
        pres(
          policy("bad-cidr", {
            rules: [{ clauses: [{ matches: [{ sourceIps: [{ address: ip("10.0.0.0"), length: 33 }] }] }] }],
          }),
        ),
        pres(policy("misnamed"), "default/another"),
        pres(policy("bad-action", { action: 7 })),
      ],
      removed: [],
    });
    const reasons = Object.fromEntries(result.rejected.map((r) => [r.name, r.reason]));
    assert.match(reasons["default/bad-string"] ?? "", /principals\[0\]: string match with no exact/);
    assert.match(reasons["default/bad-cidr"] ?? "", /sourceIps\[0\]: prefix length 33/);
    assert.match(reasons["default/another"] ?? "", /resource name is not the policy's/);
    assert.equal(reasons["default/bad-action"], "unknown action 7");
    assert.equal(state.counts().policies, 0);
  });
});

describe("ZtunnelState: change events and config dump", () => {
  it("counts versions and emits one change per apply that changed something", () => {
    const state = new ZtunnelState();
    const events: StateChange[] = [];
    state.on("changed", (c) => events.push(c));
    addAddresses(state, wres(workload("a-1")));
    state.applyAuthorizations({ added: [pres(policy("p"))], removed: [] });
    state.applyAuthorizations({ added: [], removed: ["default/unknown"] });
    state.applyServedNodes({ added: [served("n", ["n"])], removed: [] });
    assert.deepEqual(events, [
      { version: 1, workloads: true, services: false, policies: false, servedNodes: false },
      { version: 2, workloads: false, services: false, policies: true, servedNodes: false },
      { version: 3, workloads: false, services: false, policies: false, servedNodes: true },
    ]);
    assert.equal(state.version, 3);
  });

  it("dumps workloads, services, policies and served nodes with IPs as text and enums by name", () => {
    const state = new ZtunnelState();
    state.applyServedNodes({ added: [served("dpu-1", ["dpu-1", "cpu-1"])], removed: [] });
    addAddresses(
      state,
      wres(
        workload("web-1", {
          addresses: [ip("10.0.0.1"), ip("fd00::1")],
          node: "cpu-1",
          services: { [SVC_KEY]: { ports: [{ servicePort: 80, targetPort: 8080 }] } },
          authorizationPolicies: ["default/p"],
        }),
      ),
      sres(service("web", "10.96.0.1")),
    );
    state.applyAuthorizations({
      added: [
        pres(
          policy("p", {
            action: AuthzAction.DENY,
            rules: [
              {
                clauses: [
                  {
                    matches: [
                      {
                        principals: [{ prefix: "cluster.local/ns/dev/" }],
                        notPrincipals: [{ presence: {} }],
                        sourceIps: [{ address: ip("10.1.0.0"), length: 16 }],
                        destinationPorts: [8080],
                      },
                    ],
                  },
                ],
              },
            ],
          }),
        ),
      ],
      removed: [],
    });
    const dump = state.configDump();
    assert.deepEqual(dump.servedNodes, { node: "dpu-1", nodes: ["cpu-1", "dpu-1"] });
    assert.deepEqual(dump.workloads, [
      {
        uid: "Kubernetes//Pod/default/web-1",
        workloadIps: ["10.0.0.1", "fd00::1"],
        protocol: "HBONE",
        name: "web-1",
        namespace: "default",
        serviceAccount: "web-1",
        workloadName: "web",
        workloadType: "pod",
        canonicalName: "web",
        canonicalRevision: "v1",
        clusterId: "Kubernetes",
        trustDomain: "cluster.local",
        node: "cpu-1",
        network: "",
        status: "Healthy",
        networkMode: "Standard",
        services: { [SVC_KEY]: { "80": 8080 } },
        authorizationPolicies: ["default/p"],
        identity: "spiffe://cluster.local/ns/default/sa/web-1",
        servedHere: true,
      },
    ]);
    assert.deepEqual(dump.services, [
      {
        name: "web",
        namespace: "default",
        hostname: "web.default.svc.cluster.local",
        vips: ["/10.96.0.1"],
        ports: { "80": 8080 },
        endpoints: {
          "Kubernetes//Pod/default/web-1": {
            workloadUid: "Kubernetes//Pod/default/web-1",
            service: SVC_KEY,
            status: "Healthy",
            port: { "80": 8080 },
          },
        },
        subjectAltNames: [],
      },
    ]);
    assert.deepEqual(dump.policies, [
      {
        name: "p",
        namespace: "default",
        scope: "Namespace",
        action: "Deny",
        dryRun: false,
        rules: [
          [
            [
              {
                principals: [{ prefix: "cluster.local/ns/dev/" }],
                notPrincipals: [{ presence: "*" }],
                sourceIps: ["10.1.0.0/16"],
                destinationPorts: [8080],
              },
            ],
          ],
        ],
      },
    ]);
    assert.deepEqual(JSON.parse(JSON.stringify(dump)), dump, "the dump is plain JSON");
  });

  it("identifies workloads by SPIFFE id with Istio's defaults", () => {
    const state = new ZtunnelState();
    assert.equal(
      state.identityOf(workload("a", { trustDomain: "example.org", serviceAccount: "sa-a" })),
      "spiffe://example.org/ns/default/sa/sa-a",
    );
    assert.equal(
      state.identityOf(workload("a", { trustDomain: undefined, serviceAccount: undefined })),
      "spiffe://cluster.local/ns/default/sa/default",
    );
  });
});
