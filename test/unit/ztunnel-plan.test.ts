import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Resource } from "../../src/xds/messages.js";
import { encodeAddress, encodeAuthorization, encodeServedNodes, packAny } from "../../src/xds/proto.js";
import { AuthzAction, AuthzScope, TunnelProtocol, TYPE_URL, WorkloadStatus } from "../../src/xds/types.js";
import type { Authorization, Service, Workload } from "../../src/xds/types.js";
import { planInbound, planOutbound } from "../../src/ztunnel/proxy/plan.js";
import { parseIp } from "../../src/ztunnel/state/ip.js";
import { ZtunnelState } from "../../src/ztunnel/state/state.js";

// The ztunnel's decisions, from state alone: which path a captured connection takes, and whether
// an inbound one is taken. The effects are tested in test/integration/ztunnel.test.ts.

const ip = (text: string): Uint8Array => parseIp(text) ?? assert.fail(`bad IP ${text}`);
let version = 0;
const res = (name: string, typeUrl: string, bytes: Uint8Array): Resource => ({
  name,
  version: String(++version),
  resource: packAny(typeUrl, bytes),
});

function workload(name: string, node: string, addr: string, over: Partial<Workload> = {}): Workload {
  return {
    uid: `Kubernetes//Pod/apps/${name}`,
    name,
    namespace: "apps",
    addresses: [ip(addr)],
    tunnelProtocol: TunnelProtocol.HBONE,
    trustDomain: "cluster.local",
    serviceAccount: name,
    status: WorkloadStatus.HEALTHY,
    node,
    ...over,
  };
}

const WEB: Service = {
  name: "web",
  namespace: "apps",
  hostname: "web.apps.svc.cluster.local",
  addresses: [{ network: "", address: ip("10.96.0.10") }],
  ports: [{ servicePort: 80, targetPort: 8080 }],
  subjectAltNames: ["spiffe://cluster.local/ns/apps/sa/web-canary"],
};

/** master-dpu's view: it serves master-dpu and master; worker1's pods are someone else's. */
function dpuState(...extra: Workload[]): ZtunnelState {
  const state = new ZtunnelState({ node: "master-dpu" });
  const added = [
    workload("client", "master", "10.244.0.5"),
    workload("neighbour", "master", "10.244.0.6"),
    workload("legacy", "master", "10.244.0.7", { tunnelProtocol: TunnelProtocol.NONE }),
    workload("web", "worker1", "10.244.3.7", {
      services: { "apps/web.apps.svc.cluster.local": { ports: [{ servicePort: 80, targetPort: 8080 }] } },
    }),
    workload("db", "worker1", "10.244.3.8"),
    ...extra,
  ].map((w) => res(w.uid, TYPE_URL.address, encodeAddress({ workload: w })));
  added.push(res("apps/web.apps.svc.cluster.local", TYPE_URL.address, encodeAddress({ service: WEB })));
  assert.deepEqual(state.applyAddresses({ added, removed: [] }).rejected, []);
  assert.deepEqual(
    state.applyServedNodes({
      added: [
        res(
          "master-dpu",
          TYPE_URL.servedNodes,
          encodeServedNodes({ node: "master-dpu", nodes: ["master-dpu", "master"] }),
        ),
      ],
      removed: [],
    }).rejected,
    [],
  );
  return state;
}

function withPolicy(state: ZtunnelState, p: Authorization): ZtunnelState {
  assert.deepEqual(
    state.applyAuthorizations({
      added: [res(`${p.namespace}/${p.name}`, TYPE_URL.authorization, encodeAuthorization(p))],
      removed: [],
    }).rejected,
    [],
  );
  return state;
}

const conn = (sourceIp: string, destinationIp: string, destinationPort = 8080) => ({
  sourceIp,
  destinationIp,
  destinationPort,
});

describe("planOutbound", () => {
  it("tunnels to a meshed pod another proxy serves, expecting its identity", () => {
    const plan = planOutbound(dpuState(), conn("10.244.0.5", "10.244.3.8"));
    assert.equal(plan.kind, "hbone");
    assert.ok(plan.kind === "hbone");
    assert.equal(plan.sourceIdentity, "spiffe://cluster.local/ns/apps/sa/client");
    assert.deepEqual(plan.expectedIdentities, ["spiffe://cluster.local/ns/apps/sa/db"]);
    assert.deepEqual([plan.target.ip, plan.target.port], ["10.244.3.8", 8080]);
  });

  it("resolves a service VIP to an endpoint and its target port, accepting the service's SANs", () => {
    const plan = planOutbound(dpuState(), conn("10.244.0.5", "10.96.0.10", 80));
    assert.ok(plan.kind === "hbone", plan.kind);
    assert.deepEqual(
      [plan.target.ip, plan.target.port, plan.target.service?.name],
      ["10.244.3.7", 8080, "web"],
    );
    assert.deepEqual(plan.expectedIdentities, [
      "spiffe://cluster.local/ns/apps/sa/web",
      "spiffe://cluster.local/ns/apps/sa/web-canary",
    ]);
  });

  it("refuses a service port nobody serves, naming it", () => {
    const plan = planOutbound(dpuState(), conn("10.244.0.5", "10.96.0.10", 443));
    assert.ok(plan.kind === "refuse");
    assert.match(plan.reason, /^no healthy upstream/);
  });

  it("passes through to non-mesh and unknown destinations", () => {
    assert.equal(planOutbound(dpuState(), conn("10.244.0.5", "10.244.0.7")).kind, "passthrough");
    const outside = planOutbound(dpuState(), conn("10.244.0.5", "203.0.113.9", 443));
    assert.ok(outside.kind === "passthrough");
    assert.equal(outside.target.workload, undefined);
  });

  it("keeps a pair of pods it serves both ends of in-process", () => {
    const plan = planOutbound(dpuState(), conn("10.244.0.5", "10.244.0.6"));
    assert.ok(plan.kind === "local", plan.kind);
    assert.equal(plan.destinationIdentity, "spiffe://cluster.local/ns/apps/sa/neighbour");
  });

  it("refuses unknown sources, sources it does not serve, and its own ports (fail closed, no loops)", () => {
    const state = dpuState();
    const unknown = planOutbound(state, conn("10.244.0.99", "10.244.3.8"));
    assert.ok(unknown.kind === "refuse");
    assert.match(unknown.reason, /10\.244\.0\.99 is not a known workload/);
    const foreign = planOutbound(state, conn("10.244.3.8", "10.244.0.5"));
    assert.ok(foreign.kind === "refuse");
    assert.match(foreign.reason, /on node worker1, which this proxy does not serve/);
    for (const port of [15001, 15006, 15008]) {
      assert.equal(planOutbound(state, conn("10.244.0.5", "10.244.3.8", port)).kind, "refuse", String(port));
    }
  });

  it("sends an opted-out source's traffic as it is", () => {
    assert.equal(planOutbound(dpuState(), conn("10.244.0.7", "10.244.3.8")).kind, "passthrough");
  });
});

describe("planInbound", () => {
  const req = (targetIp: string, sourceIdentity?: string) => ({
    targetIp,
    targetPort: 8080,
    sourceIp: "10.244.3.8",
    ...(sourceIdentity ? { sourceIdentity } : {}),
  });

  it("forwards to a served workload when no policy applies", () => {
    const plan = planInbound(dpuState(), req("10.244.0.5", "spiffe://cluster.local/ns/apps/sa/db"));
    assert.ok(plan.kind === "forward");
    assert.equal(plan.identity, "spiffe://cluster.local/ns/apps/sa/client");
  });

  it("answers 400 for addresses it does not serve, or does not know", () => {
    const foreign = planInbound(dpuState(), req("10.244.3.7"));
    assert.ok(foreign.kind === "reject");
    assert.equal(foreign.status, 400);
    const unknown = planInbound(dpuState(), req("10.244.0.200"));
    assert.ok(unknown.kind === "reject");
    assert.equal(unknown.status, 400);
  });

  it("answers 401 when policy denies: DENY by principal, and ALLOW without identity", () => {
    const deny: Authorization = {
      name: "deny-db",
      namespace: "apps",
      scope: AuthzScope.NAMESPACE,
      action: AuthzAction.DENY,
      rules: [{ clauses: [{ matches: [{ principals: [{ exact: "cluster.local/ns/apps/sa/db" }] }] }] }],
    };
    const state = withPolicy(dpuState(), deny);
    const denied = planInbound(state, req("10.244.0.5", "spiffe://cluster.local/ns/apps/sa/db"));
    assert.ok(denied.kind === "reject");
    assert.equal(denied.status, 401);
    assert.equal(
      planInbound(state, req("10.244.0.5", "spiffe://cluster.local/ns/apps/sa/web")).kind,
      "forward",
    );

    const allow: Authorization = {
      ...deny,
      name: "allow-web",
      action: AuthzAction.ALLOW,
      rules: [{ clauses: [{ matches: [{ principals: [{ exact: "cluster.local/ns/apps/sa/web" }] }] }] }],
    };
    const allowing = withPolicy(dpuState(), allow);
    assert.equal(
      planInbound(allowing, req("10.244.0.5", "spiffe://cluster.local/ns/apps/sa/web")).kind,
      "forward",
    );
    const plaintext = planInbound(allowing, req("10.244.0.5"));
    assert.ok(plaintext.kind === "reject");
    assert.equal(plaintext.status, 401);
  });
});
