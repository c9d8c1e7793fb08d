import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type {
  ClusterEvent,
  ClusterNamespace,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
  ClusterSnapshot,
} from "../../src/cluster/types.js";
import { AmbientIndex } from "../../src/controlplane/index/index.js";
import type { IndexedResource, ResourceChange } from "../../src/controlplane/index/index.js";
import { decodeAddress, decodeAuthorization } from "../../src/xds/proto.js";
import {
  AuthzAction,
  AuthzScope,
  NetworkMode,
  TunnelProtocol,
  TYPE_URL,
  WorkloadStatus,
  WorkloadType,
} from "../../src/xds/types.js";
import type { Address, Authorization, PortList, Service, Workload } from "../../src/xds/types.js";
import { ambient, namespace, pod } from "../support/cluster.js";

// The ambient index: pod/service/policy → workload API resources, and above all incrementality —
// an event reports (and re-encodes) exactly the resources whose bytes it changed.

const NS = "apps";
const OTHER = "other";

// ---- builders ------------------------------------------------------------------------------------

/** A scheduled, running, ready pod of `apps` with one IP. */
const wpod = (name: string, ip: string, over: Partial<ClusterPod> = {}): ClusterPod =>
  pod({ uid: `uid-${name}`, name, namespace: NS, nodeName: "worker1", ips: [ip], ...over });

function service(
  name: string,
  ip: string,
  selector: Record<string, string> | undefined,
  over: Partial<ClusterService> = {},
): ClusterService {
  return {
    namespace: NS,
    name,
    clusterIPs: [ip],
    ports: [{ name: "http", port: 80, targetPort: 8080, protocol: "TCP" }],
    ...(selector ? { selector } : {}),
    ...over,
  };
}

const policy = (name: string, spec: unknown, ns: string = NS): ClusterPolicy => ({
  namespace: ns,
  name,
  spec,
});

/** An ALLOW policy of one L4 rule, selecting `matchLabels` (namespace-wide without). */
const allowPolicy = (name: string, matchLabels?: Record<string, string>, ns: string = NS): ClusterPolicy =>
  policy(
    name,
    {
      ...(matchLabels ? { selector: { matchLabels } } : {}),
      action: "ALLOW",
      rules: [{ from: [{ source: { namespaces: ["client"] } }] }],
    },
    ns,
  );

interface Parts {
  pods?: readonly ClusterPod[];
  namespaces?: readonly ClusterNamespace[];
  services?: readonly ClusterService[];
  policies?: readonly ClusterPolicy[];
}

function snapshot(o: Parts = {}): ClusterSnapshot {
  return {
    nodes: new Map(),
    pods: new Map((o.pods ?? []).map((p) => [p.uid, p])),
    namespaces: new Map((o.namespaces ?? [ambient(NS), ambient(OTHER)]).map((n) => [n.name, n])),
    services: new Map((o.services ?? []).map((s) => [`${s.namespace}/${s.name}`, s])),
    policies: new Map((o.policies ?? []).map((p) => [`${p.namespace}/${p.name}`, p])),
  };
}

function loaded(o: Parts = {}): AmbientIndex {
  const index = new AmbientIndex();
  index.load(snapshot(o));
  return index;
}

type Op = "upsert" | "delete";
const podEvent = (object: ClusterPod, type: Op = "upsert"): ClusterEvent => ({ kind: "pod", type, object });
const serviceEvent = (object: ClusterService, type: Op = "upsert"): ClusterEvent => ({
  kind: "service",
  type,
  object,
});
const policyEvent = (object: ClusterPolicy, type: Op = "upsert"): ClusterEvent => ({
  kind: "policy",
  type,
  object,
});
const namespaceEvent = (object: ClusterNamespace, type: Op = "upsert"): ClusterEvent => ({
  kind: "namespace",
  type,
  object,
});

// ---- resource names and values ---------------------------------------------------------------------

const uidOf = (name: string, ns: string = NS): string => `Kubernetes//Pod/${ns}/${name}`;
const svcName = (name: string, ns: string = NS): string => `${ns}/${name}.${ns}.svc.cluster.local`;

const v4 = (ip: string): Uint8Array => Uint8Array.from(ip.split(".").map(Number));
/** fd00::<last> as 16 bytes. */
const fd00 = (last: number): Uint8Array => Uint8Array.from([0xfd, 0, ...Array<number>(13).fill(0), last]);

function workloadResource(index: AmbientIndex, name: string, ns: string = NS): IndexedResource {
  const r = index.get(TYPE_URL.address, uidOf(name, ns));
  assert.ok(r, `workload ${ns}/${name} is indexed`);
  return r;
}

/**
 * The stored workload, as the index holds it (only its bytes, decoded on read), with the proto3
 * zero values that are not on the wire filled back in.
 */
function workload(index: AmbientIndex, name: string, ns: string = NS): Workload {
  const r = workloadResource(index, name, ns);
  const w = (r.value as Address).workload;
  assert.ok(w, `${r.name} is a workload`);
  assert.deepEqual(decodeAddress(r.bytes).workload, w, `${r.name}: value = bytes`);
  const { services, ...rest } = w;
  return {
    tunnelProtocol: 0,
    status: 0,
    workloadType: 0,
    ...rest,
    ...(services && Object.keys(services).length > 0 ? { services } : {}),
  };
}

function storedService(index: AmbientIndex, name: string, ns: string = NS): Service {
  const r = index.get(TYPE_URL.address, svcName(name, ns));
  assert.ok(r, `service ${ns}/${name} is indexed`);
  const s = (r.value as Address).service;
  assert.ok(s, `${r.name} is a service`);
  assert.deepEqual(decodeAddress(r.bytes).service, s, `${r.name}: value = bytes`);
  // An empty `network` is the proto3 default: not on the wire, given back here.
  return { ...s, addresses: s.addresses.map((a) => ({ network: "", ...a })) };
}

function storedAuthorization(index: AmbientIndex, key: string): Authorization {
  const r = index.get(TYPE_URL.authorization, key);
  assert.ok(r, `authorization ${key} is indexed`);
  const a = r.value as Authorization;
  assert.deepEqual(decodeAuthorization(r.bytes), a, `${key}: value = bytes`);
  return a;
}

const servicesOf = (w: Workload): Record<string, PortList> => w.services ?? {};

// ---- incrementality check ----------------------------------------------------------------------------

type Captured = Map<string, IndexedResource>;

function capture(index: AmbientIndex): Captured {
  const out: Captured = new Map();
  for (const t of [TYPE_URL.address, TYPE_URL.authorization] as const)
    for (const [name, r] of index.all(t)) out.set(`${t} ${name}`, r);
  return out;
}

const render = (c: ResourceChange): string => `${c.removed ? "-" : "+"}${c.name}`;

/**
 * Apply `event` and check the report is exact: each reported resource did change (appeared,
 * disappeared or got a new version), each unreported one is the very same object as before, and
 * nothing is reported twice. Returns the changes as sorted `+name` / `-name`.
 */
function step(index: AmbientIndex, event: ClusterEvent): string[] {
  const before = capture(index);
  const changes = index.apply(event);
  const after = capture(index);
  const reported = changes.map((c) => `${c.typeUrl} ${c.name}`);
  assert.equal(new Set(reported).size, reported.length, `no resource reported twice: ${reported.join(", ")}`);
  for (const c of changes) {
    const k = `${c.typeUrl} ${c.name}`;
    const b = before.get(k);
    const a = after.get(k);
    assert.equal(c.removed, a === undefined, `${k}: removed flag`);
    assert.ok(b === undefined || a === undefined || a.version !== b.version, `${k}: reported but unchanged`);
    assert.equal(typeof c.at, "number");
  }
  for (const k of new Set([...before.keys(), ...after.keys()]))
    if (!reported.includes(k)) assert.equal(after.get(k), before.get(k), `${k} changed without a report`);
  return changes.map(render).sort();
}

const added = (...names: string[]): string[] => names.map((n) => `+${n}`).sort();

// ---- tests ---------------------------------------------------------------------------------------------

describe("AmbientIndex: workloads from pods", () => {
  it("converts every field of a meshed dual-stack pod", () => {
    const index = loaded({
      pods: [
        wpod("web-1", "10.0.0.5", {
          ips: ["10.0.0.5", "fd00::5"],
          serviceAccount: "web-sa",
          labels: { app: "web", version: "v1" },
        }),
      ],
    });
    const r = workloadResource(index, "web-1");
    assert.equal(r.name, "Kubernetes//Pod/apps/web-1");
    assert.deepEqual(r.aliases, ["/10.0.0.5", "/fd00::5"]);
    assert.deepEqual(workload(index, "web-1"), {
      uid: "Kubernetes//Pod/apps/web-1",
      name: "web-1",
      namespace: NS,
      addresses: [v4("10.0.0.5"), fd00(5)],
      tunnelProtocol: TunnelProtocol.HBONE,
      trustDomain: "cluster.local",
      serviceAccount: "web-sa",
      node: "worker1",
      canonicalName: "web",
      canonicalRevision: "v1",
      workloadType: WorkloadType.POD,
      workloadName: "web",
      status: WorkloadStatus.HEALTHY,
      clusterId: "Kubernetes",
    });
  });

  it("encodes IPv6 pod addresses in every textual form", () => {
    const index = loaded({
      pods: [
        wpod("a", "fd00::1"),
        wpod("b", "::1"),
        wpod("c", "fd00:1:2:3:4:5:6:7"),
        wpod("d", "fd00::"),
        wpod("e", "FD00:0:0:0:0:0:0:A"),
      ],
    });
    assert.deepEqual(workload(index, "a").addresses, [fd00(1)]);
    assert.deepEqual(workload(index, "b").addresses, [Uint8Array.from([...Array<number>(15).fill(0), 1])]);
    assert.deepEqual(workload(index, "c").addresses, [
      Uint8Array.from([0xfd, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7]),
    ]);
    assert.deepEqual(workload(index, "d").addresses, [fd00(0)]);
    assert.deepEqual(workload(index, "e").addresses, [fd00(0x0a)]);
  });

  it("encodes an IPv6 address written with an embedded IPv4 part (::ffff:a.b.c.d) as its 16 bytes", () => {
    // RFC 4291 2.2(3) notation; Go's netip (istiod) reads it as these 16 bytes.
    const index = loaded({ pods: [wpod("mapped", "::ffff:10.0.0.1")] });
    assert.deepEqual(workload(index, "mapped").addresses, [
      Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]),
    ]);
  });

  it("takes the canonical name and revision from labels, by precedence", () => {
    const cases: [Record<string, string>, string, string][] = [
      [{}, "p", "latest"],
      [{ app: "a" }, "a", "latest"],
      [{ app: "a", "app.kubernetes.io/name": "k" }, "k", "latest"],
      [{ app: "a", "app.kubernetes.io/name": "k", "service.istio.io/canonical-name": "c" }, "c", "latest"],
      [{ version: "v" }, "p", "v"],
      [{ version: "v", "app.kubernetes.io/version": "kv" }, "p", "kv"],
      [
        { version: "v", "app.kubernetes.io/version": "kv", "service.istio.io/canonical-revision": "cr" },
        "p",
        "cr",
      ],
    ];
    for (const [labels, name, revision] of cases) {
      const w = workload(loaded({ pods: [wpod("p", "10.0.0.1", { labels })] }), "p");
      assert.deepEqual([w.canonicalName, w.canonicalRevision], [name, revision], JSON.stringify(labels));
    }
  });

  it("uses HBONE only for pods of an ambient namespace that are not opted out nor on the host network", () => {
    const index = loaded({
      namespaces: [ambient(NS), namespace("plain"), namespace("off", { "istio.io/dataplane-mode": "none" })],
      pods: [
        wpod("meshed", "10.0.0.1"),
        wpod("opted-out", "10.0.0.2", { labels: { "istio.io/dataplane-mode": "none" } }),
        wpod("host", "192.168.50.133", { hostNetwork: true }),
        wpod("plain", "10.0.0.3", { namespace: "plain" }),
        wpod("off", "10.0.0.4", { namespace: "off" }),
        wpod("unknown-ns", "10.0.0.5", { namespace: "nowhere" }),
      ],
    });
    assert.equal(workload(index, "meshed").tunnelProtocol, TunnelProtocol.HBONE);
    assert.equal(workload(index, "opted-out").tunnelProtocol, TunnelProtocol.NONE);
    assert.equal(workload(index, "host").tunnelProtocol, TunnelProtocol.NONE);
    assert.equal(workload(index, "plain", "plain").tunnelProtocol, TunnelProtocol.NONE);
    assert.equal(workload(index, "off", "off").tunnelProtocol, TunnelProtocol.NONE);
    assert.equal(workload(index, "unknown-ns", "nowhere").tunnelProtocol, TunnelProtocol.NONE);
  });

  it("reports HEALTHY only for a ready pod that is not terminating", () => {
    const index = loaded({
      pods: [
        wpod("ok", "10.0.0.1"),
        wpod("unready", "10.0.0.2", { ready: false }),
        wpod("terminating", "10.0.0.3", { terminating: true }),
        wpod("pending", "10.0.0.4", { phase: "Pending", ready: false }),
      ],
    });
    assert.equal(workload(index, "ok").status, WorkloadStatus.HEALTHY);
    assert.equal(workload(index, "unready").status, WorkloadStatus.UNHEALTHY);
    assert.equal(workload(index, "terminating").status, WorkloadStatus.UNHEALTHY);
    assert.equal(workload(index, "pending").status, WorkloadStatus.UNHEALTHY);
  });

  it("marks a host-network pod HOST_NETWORK, without aliases", () => {
    const index = loaded({ pods: [wpod("host", "192.168.50.133", { hostNetwork: true })] });
    const w = workload(index, "host");
    assert.equal(w.networkMode, NetworkMode.HOST_NETWORK);
    assert.deepEqual(w.addresses, [v4("192.168.50.133")]);
    assert.deepEqual(workloadResource(index, "host").aliases, []);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/192.168.50.133"), []);
    assert.equal(workload(loaded({ pods: [wpod("std", "10.0.0.1")] }), "std").networkMode, undefined);
  });

  it("does not index pods without IP, unscheduled, Succeeded or Failed", () => {
    const index = loaded({
      pods: [
        wpod("no-ip", "x", { ips: [] }),
        wpod("unscheduled", "10.0.0.2", { nodeName: undefined }),
        wpod("succeeded", "10.0.0.3", { phase: "Succeeded" }),
        wpod("failed", "10.0.0.4", { phase: "Failed" }),
        wpod("running", "10.0.0.5"),
      ],
    });
    assert.deepEqual([...index.all(TYPE_URL.address).keys()], [uidOf("running")]);
    assert.deepEqual(index.stats(), { workloads: 1, services: 0, authorizations: 0 });
  });
});

describe("AmbientIndex: services", () => {
  it("converts a service: name, hostname, VIPs and TCP ports", () => {
    const svc = service(
      "web",
      "10.96.0.10",
      { app: "web" },
      {
        clusterIPs: ["10.96.0.10", "fd00:96::a"],
        ports: [
          { name: "http", port: 80, targetPort: 8080, protocol: "TCP" },
          { name: "alt", port: 81, targetPort: "9090", protocol: "TCP" },
          { name: "named", port: 82, targetPort: "http", protocol: "TCP" },
          { name: "dns", port: 53, targetPort: 53, protocol: "UDP" },
        ],
      },
    );
    const index = loaded({ services: [svc] });
    const r = index.get(TYPE_URL.address, "apps/web.apps.svc.cluster.local");
    assert.ok(r);
    assert.deepEqual(r.aliases, ["/10.96.0.10", "/fd00:96::a"]);
    assert.deepEqual(storedService(index, "web"), {
      name: "web",
      namespace: NS,
      hostname: "web.apps.svc.cluster.local",
      addresses: [
        { network: "", address: v4("10.96.0.10") },
        {
          network: "",
          address: Uint8Array.from([0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]),
        },
      ],
      ports: [
        { servicePort: 80, targetPort: 8080 },
        { servicePort: 81, targetPort: 9090 },
        { servicePort: 82 },
      ],
    });
    assert.deepEqual(index.stats(), { workloads: 0, services: 1, authorizations: 0 });
  });

  it("lists a workload's services with target ports resolved for that pod", () => {
    const svc = service(
      "web",
      "10.96.0.10",
      { app: "web" },
      {
        ports: [
          { name: "num", port: 80, targetPort: 8080, protocol: "TCP" },
          { name: "digits", port: 81, targetPort: "9090", protocol: "TCP" },
          { name: "named", port: 82, targetPort: "http", protocol: "TCP" },
          { name: "undeclared", port: 83, targetPort: "metrics", protocol: "TCP" },
          { name: "udp", port: 53, targetPort: 53, protocol: "UDP" },
        ],
      },
    );
    const index = loaded({
      services: [
        svc,
        service("other-labels", "10.96.0.11", { app: "db" }),
        service("headless-external", "10.96.0.12", undefined),
        service("web", "10.96.1.10", { app: "web" }, { namespace: OTHER }),
      ],
      pods: [
        wpod("declares", "10.0.0.1", {
          labels: { app: "web" },
          containerPorts: [
            { name: "http", containerPort: 8081, protocol: "TCP" },
            { name: "metrics", containerPort: 9100, protocol: "UDP" },
          ],
        }),
        wpod("bare", "10.0.0.2", { labels: { app: "web" } }),
        wpod("udp-named", "10.0.0.3", {
          labels: { app: "web" },
          containerPorts: [{ name: "http", containerPort: 8081, protocol: "UDP" }],
        }),
        wpod("db", "10.0.0.4", { labels: { app: "db" } }),
        wpod("lonely", "10.0.0.5", { labels: { app: "lonely" } }),
      ],
    });
    const common = [
      { servicePort: 80, targetPort: 8080 },
      { servicePort: 81, targetPort: 9090 },
    ];
    assert.deepEqual(servicesOf(workload(index, "declares")), {
      [svcName("web")]: { ports: [...common, { servicePort: 82, targetPort: 8081 }] },
    });
    assert.deepEqual(servicesOf(workload(index, "bare")), { [svcName("web")]: { ports: common } });
    assert.deepEqual(servicesOf(workload(index, "udp-named")), { [svcName("web")]: { ports: common } });
    assert.deepEqual(servicesOf(workload(index, "db")), {
      [svcName("other-labels")]: { ports: [{ servicePort: 80, targetPort: 8080 }] },
    });
    assert.equal(workload(index, "lonely").services, undefined);
  });

  it("lists every service that selects a workload, keyed by service name", () => {
    const index = loaded({
      services: [
        service("b", "10.96.0.2", { app: "web" }),
        service("a", "10.96.0.1", { tier: "front" }),
        service("c", "10.96.0.3", { app: "web", tier: "back" }),
      ],
      pods: [wpod("w", "10.0.0.1", { labels: { app: "web", tier: "front" } })],
    });
    assert.deepEqual(Object.keys(servicesOf(workload(index, "w"))).sort(), [svcName("a"), svcName("b")]);
  });
});

describe("AmbientIndex: authorization policies", () => {
  it("lists a selector policy on the workloads it selects, not a namespace policy", () => {
    const index = loaded({
      policies: [
        allowPolicy("sel", { app: "web" }),
        allowPolicy("sel-2", { tier: "front" }),
        allowPolicy("ns-wide"),
        allowPolicy("elsewhere", { app: "web" }, OTHER),
      ],
      pods: [
        wpod("web", "10.0.0.1", { labels: { app: "web", tier: "front" } }),
        wpod("db", "10.0.0.2", { labels: { app: "db" } }),
        wpod("web", "10.0.1.1", { uid: "uid-other-web", namespace: OTHER, labels: { app: "db" } }),
      ],
    });
    assert.deepEqual(workload(index, "web").authorizationPolicies, ["apps/sel", "apps/sel-2"]);
    assert.equal(workload(index, "db").authorizationPolicies, undefined);
    assert.equal(workload(index, "web", OTHER).authorizationPolicies, undefined);
    assert.deepEqual(storedAuthorization(index, "apps/sel"), {
      name: "sel",
      namespace: NS,
      scope: AuthzScope.WORKLOAD_SELECTOR,
      action: AuthzAction.ALLOW,
      rules: [{ clauses: [{ matches: [{ namespaces: [{ exact: "client" }] }] }] }],
    });
    assert.equal(storedAuthorization(index, "apps/ns-wide").scope, AuthzScope.NAMESPACE);
    assert.deepEqual(index.stats(), { workloads: 3, services: 0, authorizations: 4 });
    assert.deepEqual(index.policyStatus(), []);
  });

  it("applies a selector with empty matchLabels to every workload of its namespace (docs/policy.md)", () => {
    const index = loaded({
      policies: [policy("all", { selector: {}, action: "ALLOW", rules: [{}] })],
      pods: [wpod("a", "10.0.0.1", { labels: { app: "a" } }), wpod("b", "10.0.0.2")],
    });
    assert.equal(storedAuthorization(index, "apps/all").scope, AuthzScope.WORKLOAD_SELECTOR);
    assert.deepEqual(workload(index, "a").authorizationPolicies, ["apps/all"]);
    assert.deepEqual(workload(index, "b").authorizationPolicies, ["apps/all"]);
    // Added later, it changes the policy and every workload of the namespace.
    assert.deepEqual(
      step(
        index,
        policyEvent(policy("all-2", { selector: { matchLabels: {} }, action: "DENY", rules: [{}] })),
      ),
      added("apps/all-2", uidOf("a"), uidOf("b")),
    );
  });

  it("enforces a policy it cannot convert fail-closed and reports it", () => {
    const bad = { to: [{ operation: { ports: ["http"] } }] };
    const index = loaded({
      policies: [
        policy("bad-allow", { selector: { matchLabels: { app: "web" } }, action: "ALLOW", rules: [bad] }),
        policy("bad-deny", { selector: { matchLabels: { app: "web" } }, action: "DENY", rules: [bad] }),
        policy("bad-ns", { action: "DENY", rules: [bad] }),
      ],
      pods: [wpod("web", "10.0.0.1", { labels: { app: "web" } }), wpod("db", "10.0.0.2")],
    });
    assert.deepEqual(storedAuthorization(index, "apps/bad-allow"), {
      name: "bad-allow",
      namespace: NS,
      scope: AuthzScope.WORKLOAD_SELECTOR,
      action: AuthzAction.ALLOW,
      rules: [],
    });
    assert.deepEqual(storedAuthorization(index, "apps/bad-deny"), {
      name: "bad-deny",
      namespace: NS,
      scope: AuthzScope.WORKLOAD_SELECTOR,
      action: AuthzAction.DENY,
      rules: [{ clauses: [] }],
    });
    assert.deepEqual(storedAuthorization(index, "apps/bad-ns"), {
      name: "bad-ns",
      namespace: NS,
      scope: AuthzScope.NAMESPACE,
      action: AuthzAction.DENY,
      rules: [{ clauses: [] }],
    });
    assert.deepEqual(workload(index, "web").authorizationPolicies, ["apps/bad-allow", "apps/bad-deny"]);
    assert.equal(workload(index, "db").authorizationPolicies, undefined);

    const status = new Map(index.policyStatus().map((s) => [s.key, s]));
    assert.deepEqual([...status.keys()].sort(), ["apps/bad-allow", "apps/bad-deny", "apps/bad-ns"]);
    const allow = status.get("apps/bad-allow");
    assert.match(allow?.error ?? "", /^apps\/bad-allow: spec\.rules\[0\]\.to\[0\]\.operation\.ports\[0\]: /);
    assert.deepEqual(allow?.warnings, ["not understood, enforced as an ALLOW of nothing"]);
    assert.deepEqual(status.get("apps/bad-deny")?.warnings, [
      "not understood, enforced as a DENY of every connection",
    ]);
  });

  it("reports conversion warnings in policyStatus and drops policies not for ztunnel", () => {
    const index = loaded({
      policies: [policy("waypoint", { targetRefs: [{ kind: "Service", name: "web" }], action: "ALLOW" })],
    });
    assert.equal(index.get(TYPE_URL.authorization, "apps/waypoint"), undefined);
    const [s] = index.policyStatus();
    assert.equal(s?.key, "apps/waypoint");
    assert.equal(s?.error, undefined);
    assert.equal(s?.warnings.length, 1);
  });
});

describe("AmbientIndex: incremental updates", () => {
  const base = (): AmbientIndex =>
    loaded({
      services: [service("web", "10.96.0.10", { app: "web" }), service("db", "10.96.0.20", { app: "db" })],
      policies: [allowPolicy("web-only", { app: "web" })],
      pods: [
        wpod("web-1", "10.0.0.1", { labels: { app: "web" } }),
        wpod("web-2", "10.0.0.2", { labels: { app: "web" } }),
        wpod("db-1", "10.0.0.3", { labels: { app: "db" } }),
        wpod("web-1", "10.0.1.1", { uid: "uid-o-web-1", namespace: OTHER, labels: { app: "web" } }),
      ],
    });

  it("load reports every resource", () => {
    const index = new AmbientIndex();
    const changes = index.load(
      snapshot({ pods: [wpod("a", "10.0.0.1")], services: [service("s", "10.96.0.1", {})] }),
    );
    assert.deepEqual(changes.map(render).sort(), added(uidOf("a"), svcName("s")));
    assert.ok(changes.every((c) => c.typeUrl === TYPE_URL.address));
  });

  it("a pod add, update and delete each change that workload only", () => {
    const index = base();
    const p = wpod("web-3", "10.0.0.4", { labels: { app: "web" } });
    assert.deepEqual(step(index, podEvent(p)), added(uidOf("web-3")));
    assert.deepEqual(Object.keys(servicesOf(workload(index, "web-3"))), [svcName("web")]);
    assert.deepEqual(workload(index, "web-3").authorizationPolicies, ["apps/web-only"]);

    assert.deepEqual(step(index, podEvent({ ...p, ready: false })), added(uidOf("web-3")));
    assert.equal(workload(index, "web-3").status, WorkloadStatus.UNHEALTHY);
    assert.deepEqual(step(index, podEvent({ ...p, ips: ["10.0.0.40"] })), added(uidOf("web-3")));

    assert.deepEqual(step(index, podEvent({ ...p, ips: ["10.0.0.40"] }, "delete")), [`-${uidOf("web-3")}`]);
    assert.equal(index.get(TYPE_URL.address, uidOf("web-3")), undefined);
    assert.deepEqual(step(index, podEvent(p, "delete")), []);
  });

  it("re-applying an identical object changes nothing", () => {
    const index = base();
    const p = wpod("web-1", "10.0.0.1", { labels: { app: "web" } });
    assert.deepEqual(step(index, podEvent(p)), []);
    assert.deepEqual(step(index, podEvent({ ...p, labels: { ...p.labels } })), []);
    assert.deepEqual(step(index, serviceEvent(service("web", "10.96.0.10", { app: "web" }))), []);
    assert.deepEqual(step(index, policyEvent(allowPolicy("web-only", { app: "web" }))), []);
    assert.deepEqual(step(index, namespaceEvent(ambient(NS))), []);
    // A pod change the workload does not show (an annotation) changes nothing either.
    assert.deepEqual(step(index, podEvent({ ...p, annotations: { note: "x" } })), []);
  });

  it("a pod that gains or loses an IP, or finishes, appears and disappears", () => {
    const index = base();
    const p = wpod("late", "x", { ips: [] });
    assert.deepEqual(step(index, podEvent(p)), []);
    assert.deepEqual(step(index, podEvent({ ...p, ips: ["10.0.0.9"] })), added(uidOf("late")));
    assert.deepEqual(step(index, podEvent({ ...p, ips: ["10.0.0.9"], phase: "Succeeded" })), [
      `-${uidOf("late")}`,
    ]);
  });

  it("a pod label change that makes a service select it changes only that workload", () => {
    const index = base();
    const before = index.get(TYPE_URL.address, svcName("web"));
    const p = wpod("db-1", "10.0.0.3", { labels: { app: "web" } });
    assert.deepEqual(step(index, podEvent(p)), added(uidOf("db-1")));
    assert.deepEqual(Object.keys(servicesOf(workload(index, "db-1"))), [svcName("web")]);
    assert.deepEqual(workload(index, "db-1").authorizationPolicies, ["apps/web-only"]);
    assert.equal(index.get(TYPE_URL.address, svcName("web")), before, "the service resource is untouched");
  });

  it("a service add changes the service and exactly the workloads it selects", () => {
    const index = base();
    const svc = service("web-v2", "10.96.0.30", { app: "web" });
    assert.deepEqual(
      step(index, serviceEvent(svc)),
      added(svcName("web-v2"), uidOf("web-1"), uidOf("web-2")),
    );
    assert.deepEqual(
      Object.keys(servicesOf(workload(index, "web-1"))).sort(),
      [svcName("web"), svcName("web-v2")].sort(),
    );
    assert.equal(servicesOf(workload(index, "web-1", OTHER))[svcName("web-v2")], undefined);
  });

  it("a service without selector or selecting nothing changes only itself", () => {
    const index = base();
    assert.deepEqual(
      step(index, serviceEvent(service("ext", "10.96.0.40", undefined))),
      added(svcName("ext")),
    );
    assert.deepEqual(
      step(index, serviceEvent(service("none", "10.96.0.41", { app: "x" }))),
      added(svcName("none")),
    );
  });

  it("a service selector change changes the workloads selected before and after", () => {
    const index = base();
    // db now selects app=web: db-1 loses it, web-1 and web-2 gain it; the service bytes do not change.
    assert.deepEqual(
      step(index, serviceEvent(service("db", "10.96.0.20", { app: "web" }))),
      added(uidOf("db-1"), uidOf("web-1"), uidOf("web-2")),
    );
    assert.equal(workload(index, "db-1").services, undefined);
    assert.deepEqual(Object.keys(servicesOf(workload(index, "web-2"))).sort(), [
      svcName("db"),
      svcName("web"),
    ]);
  });

  it("a service port change changes the service and its workloads; a VIP change only the service", () => {
    const index = base();
    const ports = [{ name: "http", port: 80, targetPort: 8081, protocol: "TCP" as const }];
    assert.deepEqual(
      step(index, serviceEvent(service("web", "10.96.0.10", { app: "web" }, { ports }))),
      added(svcName("web"), uidOf("web-1"), uidOf("web-2")),
    );
    assert.deepEqual(servicesOf(workload(index, "web-1"))[svcName("web")], {
      ports: [{ servicePort: 80, targetPort: 8081 }],
    });
    assert.deepEqual(
      step(index, serviceEvent(service("web", "10.96.0.11", { app: "web" }, { ports }))),
      added(svcName("web")),
    );
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.96.0.11"), [svcName("web")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.96.0.10"), []);
  });

  it("a service delete removes it and updates the workloads it selected", () => {
    const index = base();
    assert.deepEqual(
      step(index, serviceEvent(service("web", "10.96.0.10", { app: "web" }), "delete")),
      [`-${svcName("web")}`, `+${uidOf("web-1")}`, `+${uidOf("web-2")}`].sort(),
    );
    assert.equal(workload(index, "web-1").services, undefined);
    assert.deepEqual(index.stats(), { workloads: 4, services: 1, authorizations: 1 });
  });

  it("a selector policy changes the policy and exactly the workloads it selects", () => {
    const index = base();
    const changes = index.apply(policyEvent(allowPolicy("db-only", { app: "db" })));
    assert.deepEqual(changes.map(render).sort(), added("apps/db-only", uidOf("db-1")));
    assert.equal(changes.find((c) => c.name === "apps/db-only")?.typeUrl, TYPE_URL.authorization);
    assert.equal(changes.find((c) => c.name === uidOf("db-1"))?.typeUrl, TYPE_URL.address);
    assert.deepEqual(workload(index, "db-1").authorizationPolicies, ["apps/db-only"]);

    // New rules, same selector: the workloads only name the policy, so only the policy changes.
    const stricter = policy("db-only", {
      selector: { matchLabels: { app: "db" } },
      rules: [{ from: [{ source: { namespaces: ["admin"] } }] }],
    });
    assert.deepEqual(step(index, policyEvent(stricter)), added("apps/db-only"));

    // Selector moved from db to web: db-1 loses it, web-1 and web-2 gain it.
    const moved = allowPolicy("db-only", { app: "web" });
    assert.deepEqual(
      step(index, policyEvent(moved)),
      added("apps/db-only", uidOf("db-1"), uidOf("web-1"), uidOf("web-2")),
    );
    assert.deepEqual(workload(index, "web-1").authorizationPolicies, ["apps/db-only", "apps/web-only"]);

    assert.deepEqual(
      step(index, policyEvent(moved, "delete")),
      ["-apps/db-only", `+${uidOf("web-1")}`, `+${uidOf("web-2")}`].sort(),
    );
    assert.deepEqual(workload(index, "web-1").authorizationPolicies, ["apps/web-only"]);
  });

  it("a namespace policy changes only the policy", () => {
    const index = base();
    assert.deepEqual(step(index, policyEvent(allowPolicy("ns-wide"))), added("apps/ns-wide"));
    assert.deepEqual(step(index, policyEvent(allowPolicy("ns-wide"), "delete")), ["-apps/ns-wide"]);
  });

  it("a policy that turns unconvertible stays applied, fail-closed, to the same workloads", () => {
    const index = base();
    const bad = policy("web-only", {
      selector: { matchLabels: { app: "web" } },
      rules: [{ to: [{ operation: { ports: ["http"] } }] }],
    });
    assert.deepEqual(step(index, policyEvent(bad)), added("apps/web-only"));
    assert.deepEqual(storedAuthorization(index, "apps/web-only").rules, []);
    assert.deepEqual(workload(index, "web-2").authorizationPolicies, ["apps/web-only"]);
    assert.equal(index.policyStatus().length, 1);
    assert.deepEqual(
      step(index, policyEvent(allowPolicy("web-only", { app: "web" }))),
      added("apps/web-only"),
    );
    assert.deepEqual(index.policyStatus(), []);
  });

  it("a namespace label change changes exactly that namespace's workloads whose bytes change", () => {
    const index = loaded({
      namespaces: [namespace(NS), namespace(OTHER)],
      pods: [
        wpod("a", "10.0.0.1"),
        wpod("b", "10.0.0.2"),
        wpod("opted-out", "10.0.0.3", { labels: { "istio.io/dataplane-mode": "none" } }),
        wpod("host", "192.168.50.133", { hostNetwork: true }),
        wpod("c", "10.0.1.1", { namespace: OTHER }),
      ],
    });
    assert.deepEqual(step(index, namespaceEvent(ambient(NS))), added(uidOf("a"), uidOf("b")));
    assert.equal(workload(index, "a").tunnelProtocol, TunnelProtocol.HBONE);
    assert.equal(workload(index, "c", OTHER).tunnelProtocol, TunnelProtocol.NONE);
    assert.deepEqual(step(index, namespaceEvent(ambient(NS))), []);
    assert.deepEqual(step(index, namespaceEvent(ambient(NS), "delete")), added(uidOf("a"), uidOf("b")));
    assert.equal(workload(index, "a").tunnelProtocol, TunnelProtocol.NONE);
  });

  it("a pod recreated under the same name before the old one's delete keeps its workload", () => {
    const index = base();
    const old = wpod("web-1", "10.0.0.1", { labels: { app: "web" } });
    const fresh = wpod("web-1", "10.0.0.11", { uid: "uid-web-1-new", labels: { app: "web" } });
    assert.deepEqual(step(index, podEvent(fresh)), added(uidOf("web-1")));
    assert.deepEqual(workload(index, "web-1").addresses, [v4("10.0.0.11")]);
    assert.deepEqual(step(index, podEvent(old, "delete")), []);
    assert.deepEqual(workload(index, "web-1").addresses, [v4("10.0.0.11")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.11"), [uidOf("web-1")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.1"), []);
    assert.equal(index.stats().workloads, 4);
    // The replacement's own delete removes the workload.
    assert.deepEqual(step(index, podEvent(fresh, "delete")), [`-${uidOf("web-1")}`]);
    assert.equal(index.stats().workloads, 3);
  });

  it("the old pod's late update and delete leave the replacement's workload", () => {
    // Two sources merged (or a relist) can deliver the old pod's last status after the new pod.
    const index = base();
    const old = wpod("web-1", "10.0.0.1", { labels: { app: "web" } });
    const fresh = wpod("web-1", "10.0.0.11", { uid: "uid-web-1-new", labels: { app: "web" } });
    step(index, podEvent(fresh));
    step(index, podEvent({ ...old, terminating: true, ready: false }));
    step(index, podEvent({ ...old, terminating: true, ready: false }, "delete"));
    // Only the replacement is left: the workload is its.
    assert.deepEqual(workload(index, "web-1").addresses, [v4("10.0.0.11")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.11"), [uidOf("web-1")]);
    assert.equal(index.stats().workloads, 4);
  });

  it("resolve finds a workload by IP alias and follows IP changes", () => {
    const index = base();
    assert.deepEqual(index.resolve(TYPE_URL.address, uidOf("web-2")), [uidOf("web-2")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.2"), [uidOf("web-2")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.96.0.10"), [svcName("web")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.99"), []);
    assert.deepEqual(index.resolve(TYPE_URL.authorization, "apps/web-only"), ["apps/web-only"]);
    assert.deepEqual(index.resolve(TYPE_URL.authorization, "/10.0.0.2"), []);

    const moved = wpod("web-2", "10.0.0.5", { labels: { app: "web" } });
    step(index, podEvent(moved));
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.5"), [uidOf("web-2")]);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.2"), []);
    step(index, podEvent({ ...moved, ips: ["10.0.0.5", "fd00::5"] }));
    assert.deepEqual(index.resolve(TYPE_URL.address, "/fd00::5"), [uidOf("web-2")]);
    step(index, podEvent(moved, "delete"));
    assert.deepEqual(index.resolve(TYPE_URL.address, "/10.0.0.5"), []);
    assert.deepEqual(index.resolve(TYPE_URL.address, "/fd00::5"), []);
  });

  it("stats count workloads, services and authorizations as they come and go", () => {
    const index = base();
    assert.deepEqual(index.stats(), { workloads: 4, services: 2, authorizations: 1 });
    index.apply(podEvent(wpod("x", "10.0.0.50")));
    index.apply(podEvent(wpod("x", "10.0.0.51")));
    index.apply(serviceEvent(service("s", "10.96.0.50", undefined)));
    index.apply(policyEvent(allowPolicy("p")));
    assert.deepEqual(index.stats(), { workloads: 5, services: 3, authorizations: 2 });
    index.apply(podEvent(wpod("web-1", "10.0.0.1"), "delete"));
    index.apply(podEvent(wpod("x", "10.0.0.51"), "delete"));
    index.apply(serviceEvent(service("db", "10.96.0.20", { app: "db" }), "delete"));
    index.apply(policyEvent(allowPolicy("web-only", { app: "web" }), "delete"));
    assert.deepEqual(index.stats(), { workloads: 3, services: 2, authorizations: 1 });
    assert.equal(index.all(TYPE_URL.address).size, 5);
  });

  it("tells subscribers the same changes, and only non-empty ones", () => {
    const index = base();
    const seen: string[][] = [];
    const unsubscribe = index.subscribe((changes) => seen.push(changes.map(render)));
    const returned = index.apply(podEvent(wpod("n", "10.0.0.60")));
    index.apply(podEvent(wpod("n", "10.0.0.60")));
    assert.deepEqual(seen, [returned.map(render)]);
    unsubscribe();
    index.apply(podEvent(wpod("n", "10.0.0.60"), "delete"));
    assert.equal(seen.length, 1);
  });

  it("ignores node and topology events", () => {
    const index = base();
    const node = { name: "worker1", internalIPs: ["192.168.50.133"], podCIDRs: [], labels: {} };
    assert.deepEqual(step(index, { kind: "node", type: "upsert", object: node }), []);
    assert.deepEqual(
      step(index, { kind: "topology", type: "upsert", object: { text: "", source: "t" } }),
      [],
    );
  });
});

describe("AmbientIndex: versions", () => {
  const parts: Parts = {
    services: [service("web", "10.96.0.10", { app: "web" })],
    policies: [allowPolicy("p", { app: "web" })],
    pods: [wpod("a", "10.0.0.1", { labels: { app: "web" } }), wpod("b", "10.0.0.2")],
  };
  const versions = (index: AmbientIndex): Map<string, string> =>
    new Map([...capture(index)].map(([k, r]) => [k, r.version]));

  it("same content has the same version, in any index and whatever the load order", () => {
    const one = loaded(parts);
    const reversed: Parts = {
      services: [...(parts.services ?? [])].reverse(),
      policies: [...(parts.policies ?? [])].reverse(),
      pods: [...(parts.pods ?? [])].reverse(),
    };
    assert.deepEqual(versions(loaded(reversed)), versions(one));
    const v = versions(one);
    assert.equal(v.size, 4);
    for (const version of v.values()) assert.match(version, /^[0-9a-f]{16}$/);

    // Built incrementally instead of loaded: same versions.
    const incremental = loaded({});
    for (const s of parts.services ?? []) incremental.apply(serviceEvent(s));
    for (const p of parts.pods ?? []) incremental.apply(podEvent(p));
    for (const p of parts.policies ?? []) incremental.apply(policyEvent(p));
    assert.deepEqual(versions(incremental), v);
  });

  it("different content has a different version, and reverting restores it", () => {
    const index = loaded(parts);
    const original = workloadResource(index, "b").version;
    assert.notEqual(workloadResource(index, "a").version, original);
    index.apply(podEvent(wpod("b", "10.0.0.2", { ready: false })));
    const unready = workloadResource(index, "b").version;
    assert.notEqual(unready, original);
    index.apply(podEvent(wpod("b", "10.0.0.2", { labels: { version: "v2" } })));
    const relabelled = workloadResource(index, "b").version;
    assert.notEqual(relabelled, original);
    assert.notEqual(relabelled, unready);
    index.apply(podEvent(wpod("b", "10.0.0.2")));
    assert.equal(workloadResource(index, "b").version, original);
  });
});
