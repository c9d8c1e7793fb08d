import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { ClusterPod, ClusterSnapshot } from "../../src/cluster/types.js";
import { authorizeCsr, DEFAULT_TRUSTED_NODE_PROXY_ACCOUNTS } from "../../src/controlplane/ca/authorize.js";
import type { CsrAuthorizationRequest } from "../../src/controlplane/ca/authorize.js";
import type { ProxyIdentity } from "../../src/controlplane/auth/tokens.js";
import { parseTopology } from "../../src/topology/index.js";
import type { Topology } from "../../src/topology/index.js";
import { pod } from "../support/cluster.js";

// The seed cluster (master/master-dpu, worker1/worker1-dpu) plus a single, edge1.
const TOPOLOGY_TEXT = [
  "pairs:",
  "  - cpuNodeIP: 192.168.50.130",
  "    dpuNodeIP: 192.168.50.131",
  "    cpuNodeName: master",
  "    dpuNodeName: master-dpu",
  "  - cpuNodeIP: 192.168.50.133",
  "    dpuNodeIP: 192.168.50.128",
  "    cpuNodeName: worker1",
  "    dpuNodeName: worker1-dpu",
  "singles:",
  "  - nodeIP: 192.168.50.140",
  "    nodeName: edge1",
  "",
].join("\n");

function topology(): Topology {
  const parsed = parseTopology(TOPOLOGY_TEXT, "cluster-conf.yaml");
  assert.ok(parsed.ok, "the test topology parses");
  return parsed.value;
}

/** A ztunnel pod on `node` and the identity it authenticates as. */
function ztunnelOn(
  node: string,
  serviceAccount = "ztunnel",
  name = `ztunnel-${node}`,
): { pod: ClusterPod; caller: ProxyIdentity } {
  const p = pod({ uid: `uid-${name}`, name, namespace: "istio-system", nodeName: node, serviceAccount });
  return {
    pod: p,
    caller: { namespace: "istio-system", serviceAccount, podName: p.name, podUid: p.uid, node },
  };
}

const ZTUNNELS = ["master-dpu", "worker1-dpu", "edge1", "master"].map((n) => ztunnelOn(n));
// A pod of the proxy's node and namespace, but not of the node proxy's account.
const UNTRUSTED = ztunnelOn("master-dpu", "default", "impostor");

const WORKLOADS: readonly ClusterPod[] = [
  pod({
    uid: "w1",
    name: "productpage-1",
    namespace: "bookinfo",
    nodeName: "master",
    serviceAccount: "productpage",
  }),
  pod({
    uid: "w2",
    name: "reviews-1",
    namespace: "bookinfo",
    nodeName: "worker1",
    serviceAccount: "reviews",
  }),
  pod({ uid: "w3", name: "edge-app", namespace: "edge", nodeName: "edge1", serviceAccount: "edge-app" }),
  pod({
    uid: "w4",
    name: "ratings-1",
    namespace: "bookinfo",
    nodeName: "master",
    serviceAccount: "ratings",
    terminating: true,
  }),
  pod({
    uid: "w5",
    name: "details-1",
    namespace: "bookinfo",
    nodeName: "master",
    serviceAccount: "details",
    phase: "Failed",
  }),
  pod({
    uid: "w6",
    name: "job-1",
    namespace: "bookinfo",
    nodeName: "master",
    serviceAccount: "job",
    phase: "Succeeded",
  }),
  pod({ uid: "w7", name: "dpu-agent", namespace: "dpu", nodeName: "master-dpu", serviceAccount: "agent" }),
  pod({
    uid: "w8",
    name: "pending-1",
    namespace: "bookinfo",
    nodeName: "master",
    serviceAccount: "pending",
    phase: "Pending",
  }),
];

function snapshot(extra: readonly ClusterPod[] = []): ClusterSnapshot {
  const pods = [...ZTUNNELS.map((z) => z.pod), UNTRUSTED.pod, ...WORKLOADS, ...extra];
  return {
    nodes: new Map(),
    pods: new Map(pods.map((p) => [p.uid, p])),
    namespaces: new Map(),
    services: new Map(),
    policies: new Map(),
  };
}

const callerOn = (node: string): ProxyIdentity => {
  const z = ZTUNNELS.find((x) => x.caller.node === node);
  assert.ok(z, `a ztunnel on ${node}`);
  return z.caller;
};

function request(caller: ProxyIdentity, identity: string, over: Partial<CsrAuthorizationRequest> = {}) {
  return authorizeCsr({
    caller,
    identity,
    snapshot: snapshot(),
    topology: topology(),
    trustedAccounts: DEFAULT_TRUSTED_NODE_PROXY_ACCOUNTS,
    trustDomain: "cluster.local",
    ...over,
  });
}

const PRODUCTPAGE = "spiffe://cluster.local/ns/bookinfo/sa/productpage";

describe("authorizeCsr", () => {
  it("grants a CPU pod's identity to the proxy on the paired DPU", () => {
    assert.deepEqual(request(callerOn("master-dpu"), PRODUCTPAGE), { ok: true });
  });

  it("grants the DPU's own pods to its proxy", () => {
    assert.deepEqual(request(callerOn("master-dpu"), "spiffe://cluster.local/ns/dpu/sa/agent"), { ok: true });
  });

  it("grants a pod that is still Pending (proxies fetch certificates before the app runs)", () => {
    assert.deepEqual(request(callerOn("master-dpu"), "spiffe://cluster.local/ns/bookinfo/sa/pending"), {
      ok: true,
    });
  });

  it("refuses the same identity to another pair's DPU", () => {
    assert.deepEqual(request(callerOn("worker1-dpu"), PRODUCTPAGE), {
      ok: false,
      reason:
        "no running pod with service account bookinfo/productpage on the nodes worker1-dpu serves (worker1-dpu, worker1)",
    });
  });

  it("grants worker1-dpu its own CPU's pods", () => {
    assert.deepEqual(request(callerOn("worker1-dpu"), "spiffe://cluster.local/ns/bookinfo/sa/reviews"), {
      ok: true,
    });
  });

  it("grants a single node's proxy its own pods, and nothing of a pair's", () => {
    assert.deepEqual(request(callerOn("edge1"), "spiffe://cluster.local/ns/edge/sa/edge-app"), { ok: true });
    assert.deepEqual(request(callerOn("edge1"), PRODUCTPAGE), {
      ok: false,
      reason: "no running pod with service account bookinfo/productpage on the nodes edge1 serves (edge1)",
    });
  });

  it("refuses a caller whose account is not a trusted node proxy account", () => {
    assert.deepEqual(request(UNTRUSTED.caller, PRODUCTPAGE), {
      ok: false,
      reason:
        "caller istio-system/default is not a trusted node proxy account (trusted: istio-system/ztunnel)",
    });
  });

  it("honours a configured list of trusted accounts", () => {
    const over = { trustedAccounts: ["istio-system/ztunnel", "istio-system/default"] };
    assert.deepEqual(request(UNTRUSTED.caller, PRODUCTPAGE, over), { ok: true });
    assert.deepEqual(request(callerOn("master-dpu"), PRODUCTPAGE, { trustedAccounts: [] }), {
      ok: false,
      reason: "caller istio-system/ztunnel is not a trusted node proxy account (trusted: none)",
    });
  });

  it("refuses an identity that is not a SPIFFE ID", () => {
    const got = request(callerOn("master-dpu"), "bookinfo/productpage");
    assert.equal(got.ok, false);
    assert.match(
      !got.ok ? got.reason : "",
      /^identity "bookinfo\/productpage" is not a SPIFFE ID: .*does not start with "spiffe:\/\/"/,
    );
    const extra = request(callerOn("master-dpu"), `${PRODUCTPAGE}/extra`);
    assert.match(!extra.ok ? extra.reason : "", /is not a SPIFFE ID: .*path must be exactly/);
  });

  it("refuses an identity of a foreign trust domain", () => {
    assert.deepEqual(request(callerOn("master-dpu"), "spiffe://evil.example/ns/bookinfo/sa/productpage"), {
      ok: false,
      reason:
        "trust domain evil.example of identity spiffe://evil.example/ns/bookinfo/sa/productpage is not this mesh's (cluster.local)",
    });
  });

  it("refuses an account with no pod anywhere", () => {
    const got = request(callerOn("master-dpu"), "spiffe://cluster.local/ns/bookinfo/sa/ghost");
    assert.deepEqual(got, {
      ok: false,
      reason:
        "no running pod with service account bookinfo/ghost on the nodes master-dpu serves (master-dpu, master)",
    });
  });

  for (const [sa, state] of [
    ["ratings", "terminating"],
    ["details", "Failed"],
    ["job", "Succeeded"],
  ] as const) {
    it(`refuses an account whose only pod is ${state}`, () => {
      assert.deepEqual(request(callerOn("master-dpu"), `spiffe://cluster.local/ns/bookinfo/sa/${sa}`), {
        ok: false,
        reason: `no running pod with service account bookinfo/${sa} on the nodes master-dpu serves (master-dpu, master)`,
      });
    });
  }

  it("grants an account once one of its pods on a served node is alive", () => {
    const alive = pod({
      uid: "w4b",
      name: "ratings-2",
      namespace: "bookinfo",
      nodeName: "master",
      serviceAccount: "ratings",
    });
    const got = request(callerOn("master-dpu"), "spiffe://cluster.local/ns/bookinfo/sa/ratings", {
      snapshot: snapshot([alive]),
    });
    assert.deepEqual(got, { ok: true });
  });

  it("does not match an unscheduled pod", () => {
    const unscheduled = pod({
      uid: "u1",
      name: "pending-2",
      namespace: "bookinfo",
      serviceAccount: "floating",
    });
    const got = request(callerOn("master-dpu"), "spiffe://cluster.local/ns/bookinfo/sa/floating", {
      snapshot: snapshot([unscheduled]),
    });
    assert.equal(got.ok, false);
  });

  it("matches namespace and account together", () => {
    // bookinfo/productpage exists on master; other/productpage does not.
    const got = request(callerOn("master-dpu"), "spiffe://cluster.local/ns/other/sa/productpage");
    assert.equal(got.ok, false);
  });

  it("gives a proxy on a CPU node nothing, even for that node's own pods", () => {
    assert.deepEqual(request(callerOn("master"), PRODUCTPAGE), {
      ok: false,
      reason:
        "caller's node master is a CPU node, which runs no node proxy; its pods are served by master-dpu",
    });
  });

  it("gives a proxy on an undeclared node nothing", () => {
    const ghost = ztunnelOn("ghost");
    const got = request(ghost.caller, PRODUCTPAGE, { snapshot: snapshot([ghost.pod]) });
    assert.deepEqual(got, {
      ok: false,
      reason:
        'caller\'s node ghost serves no nodes: node "ghost" is not declared in cluster-conf.yaml (neither in pairs nor in singles)',
    });
  });

  it("scopes the grant to the node the cluster has the caller on, not the one it claims", () => {
    const liar = { ...callerOn("worker1-dpu"), node: "master-dpu" };
    assert.deepEqual(request(liar, PRODUCTPAGE), {
      ok: false,
      reason:
        "caller pod istio-system/ztunnel-worker1-dpu (uid uid-ztunnel-worker1-dpu) is on node worker1-dpu, not master-dpu",
    });
  });

  it("refuses a caller whose pod is gone or terminating", () => {
    const gone = { ...callerOn("master-dpu"), podUid: "deleted" };
    assert.deepEqual(request(gone, PRODUCTPAGE), {
      ok: false,
      reason: "caller pod istio-system/ztunnel-master-dpu (uid deleted) does not exist",
    });
    const z = ztunnelOn("master-dpu");
    const dying = { ...z.pod, terminating: true };
    const got = request(z.caller, PRODUCTPAGE, { snapshot: snapshot([dying]) });
    assert.deepEqual(got, {
      ok: false,
      reason: "caller pod istio-system/ztunnel-master-dpu (uid uid-ztunnel-master-dpu) is terminating",
    });
  });
});
