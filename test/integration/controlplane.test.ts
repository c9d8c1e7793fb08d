import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import type { ClusterPod } from "../../src/cluster/types.js";
import {
  issueProxyToken,
  loadOrCreateTokenKey,
  serviceAccountSubject,
} from "../../src/controlplane/auth/tokens.js";
import { startControlPlane } from "../../src/controlplane/daemon.js";
import type { RunningControlPlane } from "../../src/controlplane/daemon.js";
import { x509 } from "../../src/identity/x509.js";
import { DeltaAdsClient } from "../../src/xds/client.js";
import type { DeltaDiscoveryResponse, Resource } from "../../src/xds/messages.js";
import { createAdsClient, createCaClient, createCertificate } from "../../src/xds/grpc.js";
import { decodeAddress, decodeAuthorization, decodeServedNodes } from "../../src/xds/proto.js";
import type { ServedNodes } from "../../src/xds/types.js";
import { TunnelProtocol, TYPE_URL } from "../../src/xds/types.js";
import { ambient, pod, SEED_NODES, seedTopologyText } from "../support/cluster.js";
import { until } from "../support/wait.js";

// The control plane over its real transport: TLS gRPC on loopback, proxies authenticated by
// tokens, clients built from this project's protos — the same client a ztunnel uses.

const dir = mkdtempSync(join(tmpdir(), "offmesh-cp-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const ztunnel = (name: string, node: string, ip: string): ClusterPod =>
  pod({
    uid: `uid-${name}`,
    name,
    namespace: "istio-system",
    nodeName: node,
    ips: [ip],
    labels: { app: "ztunnel" },
    serviceAccount: "ztunnel",
  });

/** A control plane on loopback for `source`, with a function issuing proxy tokens for its pods. */
async function startTestControlPlane(
  source: MemoryClusterSource,
  stateDir: string,
  httpAddr?: string,
): Promise<{ cp: RunningControlPlane; tokenFor: (p: ClusterPod) => string }> {
  const cp = await startControlPlane(
    {
      clusterState: "",
      clusterConf: "",
      stateDir,
      listen: "127.0.0.1:0",
      ...(httpAddr ? { httpAddr } : {}),
      trustDomain: "cluster.local",
      domain: "cluster.local",
      rootNamespace: "istio-system",
      debounceMs: 5,
      log: pino({ level: "silent" }),
    },
    { source },
  );
  const key = await loadOrCreateTokenKey(stateDir);
  const tokenFor = (p: ClusterPod): string =>
    issueProxyToken(
      key,
      {
        sub: serviceAccountSubject(p.namespace, p.serviceAccount),
        pod: { name: p.name, uid: p.uid },
        node: p.nodeName ?? "",
      },
      3600,
    );
  return { cp, tokenFor };
}

/** The seed cluster's nodes, an ambient namespace and the two DPUs' ztunnel pods. */
function seedWithProxies(source: MemoryClusterSource): void {
  source.setTopology({ text: seedTopologyText(), source: "cluster-conf.yaml" });
  for (const n of SEED_NODES) source.upsertNode(n);
  source.upsertNamespace(ambient("apps"));
  source.upsertNamespace({ name: "istio-system", labels: {} });
  source.upsertPod(ztunnel("ztunnel-a", "master-dpu", "10.244.1.2"));
  source.upsertPod(ztunnel("ztunnel-b", "worker1-dpu", "10.244.2.2"));
}

interface Seen {
  readonly added: string[];
  readonly removed: string[];
}

class TestProxy {
  readonly responses = new Map<string, Seen[]>();
  readonly resources = new Map<string, Map<string, Resource>>();
  client: DeltaAdsClient;
  rejectNames = new Set<string>();

  constructor(
    readonly cp: RunningControlPlane,
    token: string,
  ) {
    this.client = this.connect(token);
  }

  connect(token: string): DeltaAdsClient {
    const track = (typeUrl: string) => ({
      typeUrl,
      mode: "wildcard" as const,
      apply: (changes: { added: Resource[]; removed: string[] }) => {
        const list = this.responses.get(typeUrl) ?? [];
        list.push({ added: changes.added.map((r) => r.name), removed: [...changes.removed] });
        this.responses.set(typeUrl, list);
        const held = this.resources.get(typeUrl) ?? new Map<string, Resource>();
        this.resources.set(typeUrl, held);
        const rejected = changes.added
          .filter((r) => this.rejectNames.has(r.name))
          .map((r) => ({ name: r.name, reason: "rejected by the test" }));
        for (const r of changes.added) if (!this.rejectNames.has(r.name)) held.set(r.name, r);
        for (const n of changes.removed) held.delete(n);
        return { rejected };
      },
    });
    return new DeltaAdsClient({
      target: `127.0.0.1:${this.cp.grpcPort}`,
      credentials: { kind: "tls", rootCa: this.cp.root.certPem },
      token,
      node: { id: "ztunnel~10.244.1.2~ztunnel.istio-system~istio-system.svc.cluster.local" },
      types: [track(TYPE_URL.address), track(TYPE_URL.authorization), track(TYPE_URL.servedNodes)],
      backoff: { initialMs: 10, maxMs: 200 },
    });
  }

  served(): ServedNodes | undefined {
    const r = [...(this.resources.get(TYPE_URL.servedNodes)?.values() ?? [])][0];
    return r?.resource ? decodeServedNodes(r.resource.value) : undefined;
  }

  names(typeUrl: string): string[] {
    return [...(this.resources.get(typeUrl)?.keys() ?? [])].sort();
  }

  /** Responses of a type received after `mark` responses. */
  since(typeUrl: string, mark: number): Seen[] {
    return (this.responses.get(typeUrl) ?? []).slice(mark);
  }

  count(typeUrl: string): number {
    return this.responses.get(typeUrl)?.length ?? 0;
  }
}

const settle = (ms = 120): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("control plane: delta ADS over TLS with authenticated proxies", () => {
  const source = new MemoryClusterSource();
  let cp: RunningControlPlane;
  let tokenFor: (p: ClusterPod) => string;
  let dpuA: TestProxy;
  let dpuB: TestProxy;

  before(async () => {
    seedWithProxies(source);
    source.upsertPod(
      pod({
        uid: "uid-x",
        name: "x",
        namespace: "apps",
        nodeName: "master",
        ips: ["10.244.0.5"],
        labels: { app: "web" },
        serviceAccount: "web",
      }),
    );
    source.upsertPod(
      pod({
        uid: "uid-y",
        name: "y",
        namespace: "apps",
        nodeName: "worker1",
        ips: ["10.244.3.7"],
        labels: { app: "db" },
        serviceAccount: "db",
      }),
    );
    source.upsertService({
      namespace: "apps",
      name: "web",
      clusterIPs: ["10.96.0.10"],
      ports: [{ port: 80, targetPort: 8080, protocol: "TCP" }],
      selector: { app: "web" },
    });
    source.upsertPolicy({
      namespace: "apps",
      name: "allow-web",
      spec: {
        selector: { matchLabels: { app: "web" } },
        action: "ALLOW",
        rules: [{ from: [{ source: { principals: ["cluster.local/ns/apps/sa/db"] } }] }],
      },
    });
    ({ cp, tokenFor } = await startTestControlPlane(source, dir, "127.0.0.1:0"));
    dpuA = new TestProxy(cp, tokenFor(ztunnel("ztunnel-a", "master-dpu", "10.244.1.2")));
    dpuB = new TestProxy(cp, tokenFor(ztunnel("ztunnel-b", "worker1-dpu", "10.244.2.2")));
    await Promise.all([dpuA.client.ready, dpuB.client.ready]);
  });
  after(async () => {
    dpuA?.client.close();
    dpuB?.client.close();
    await cp?.stop();
  });

  it("gives a DPU proxy every address, its served nodes and the policies", () => {
    const addresses = dpuA.names(TYPE_URL.address);
    assert.ok(addresses.includes("Kubernetes//Pod/apps/x"));
    assert.ok(
      addresses.includes("Kubernetes//Pod/apps/y"),
      "workloads of other nodes too (routing needs them)",
    );
    assert.ok(addresses.includes("apps/web.apps.svc.cluster.local"));
    assert.deepEqual(dpuA.names(TYPE_URL.authorization), ["apps/allow-web"]);
    assert.deepEqual(dpuA.served(), { node: "master-dpu", nodes: ["master-dpu", "master"] });
    assert.deepEqual(dpuB.served(), { node: "worker1-dpu", nodes: ["worker1-dpu", "worker1"] });
    const x = dpuA.resources.get(TYPE_URL.address)?.get("Kubernetes//Pod/apps/x");
    assert.ok(x?.resource);
    const w = decodeAddress(x.resource.value).workload;
    assert.equal(w?.tunnelProtocol, TunnelProtocol.HBONE);
    assert.equal(w?.node, "master");
    assert.deepEqual(w?.services?.["apps/web.apps.svc.cluster.local"]?.ports, [
      { servicePort: 80, targetPort: 8080 },
    ]);
    assert.deepEqual(w?.authorizationPolicies, ["apps/allow-web"]);
    assert.deepEqual(x.aliases, ["/10.244.0.5"]);
    const policy = dpuA.resources.get(TYPE_URL.authorization)?.get("apps/allow-web");
    assert.ok(policy?.resource);
    assert.equal(
      decodeAuthorization(policy.resource.value).rules[0]?.clauses[0]?.matches[0]?.principals?.[0]?.exact,
      "cluster.local/ns/apps/sa/db",
    );
  });

  it("sends a pod add, change and delete as exactly one delta per proxy, carrying only that workload", async () => {
    for (const step of ["add", "change", "delete"] as const) {
      const marks = [dpuA.count(TYPE_URL.address), dpuB.count(TYPE_URL.address)];
      const z = pod({
        uid: "uid-z",
        name: "z",
        namespace: "apps",
        nodeName: "master",
        ips: ["10.244.0.9"],
        ready: step !== "change",
      });
      if (step === "delete") source.deletePod("uid-z");
      else source.upsertPod(z);
      await until(
        `the ${step} to reach both proxies`,
        () =>
          dpuA.count(TYPE_URL.address) > (marks[0] ?? 0) && dpuB.count(TYPE_URL.address) > (marks[1] ?? 0),
      );
      await settle();
      for (const [i, proxy] of [dpuA, dpuB].entries()) {
        const got = proxy.since(TYPE_URL.address, marks[i] ?? 0);
        const expected =
          step === "delete"
            ? [{ added: [], removed: ["Kubernetes//Pod/apps/z"] }]
            : [{ added: ["Kubernetes//Pod/apps/z"], removed: [] }];
        assert.deepEqual(got, expected, `${step} seen by proxy ${i}`);
      }
    }
  });

  it("records a NACK and does not send the rejected version again", async () => {
    const metricsBefore = await (await fetch(`${cp.httpUrl}/metrics`)).text();
    const nacksBefore = Number(
      /offmesh_xds_nacks_total\{type="[^"]*Address"\} (\d+)/.exec(metricsBefore)?.[1] ?? 0,
    );
    dpuA.rejectNames.add("Kubernetes//Pod/apps/n");
    const mark = dpuA.count(TYPE_URL.address);
    source.upsertPod(
      pod({ uid: "uid-n", name: "n", namespace: "apps", nodeName: "master", ips: ["10.244.0.11"] }),
    );
    await until("the NACKed response", () => dpuA.count(TYPE_URL.address) > mark);
    await settle(300);
    assert.equal(dpuA.count(TYPE_URL.address), mark + 1, "no re-send loop");
    const metrics = await (await fetch(`${cp.httpUrl}/metrics`)).text();
    assert.equal(
      Number(/offmesh_xds_nacks_total\{type="[^"]*Address"\} (\d+)/.exec(metrics)?.[1]),
      nacksBefore + 1,
    );
    const proxies = (await (await fetch(`${cp.httpUrl}/debug/proxies`)).json()) as {
      node: string;
      types: Record<string, { nacks: number; lastNack?: string }>;
    }[];
    const a = proxies.find((p) => p.node === "master-dpu");
    assert.equal(a?.types[TYPE_URL.address]?.nacks, 1);
    assert.match(a?.types[TYPE_URL.address]?.lastNack ?? "", /rejected by the test/);
    dpuA.rejectNames.clear();
  });

  it("on reconnect sends only what changed while the proxy was away", async () => {
    const held = dpuA.client.versions(TYPE_URL.address);
    dpuA.client.close();
    await until(
      "the server to forget the proxy",
      () => cp.cp.proxies().filter((p) => p.peer.node === "master-dpu").length === 0,
    );
    source.upsertPod(
      pod({ uid: "uid-r", name: "r", namespace: "apps", nodeName: "master", ips: ["10.244.0.12"] }),
    );
    source.deletePod("uid-y");
    await settle(50);
    // The reconnecting proxy's first request, as the client sends it: what it held, by version.
    const client = createAdsClient(
      `127.0.0.1:${cp.grpcPort}`,
      grpc.credentials.createSsl(Buffer.from(cp.root.certPem)),
    );
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${tokenFor(ztunnel("ztunnel-a", "master-dpu", "10.244.1.2"))}`);
    const stream = client.DeltaAggregatedResources(md);
    const first = new Promise<DeltaDiscoveryResponse>((resolve, reject) => {
      stream.once("data", resolve);
      stream.once("error", reject);
    });
    stream.write({
      node: { id: "ztunnel~10.244.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local" },
      typeUrl: TYPE_URL.address,
      initialResourceVersions: Object.fromEntries(held),
    });
    const res = await first;
    stream.cancel();
    client.close();
    assert.deepEqual(
      res.resources.map((r) => r.name).sort(),
      // r was added while away; n was rejected by the proxy earlier, so it does not hold it.
      ["Kubernetes//Pod/apps/n", "Kubernetes//Pod/apps/r"],
      "only what the proxy does not hold",
    );
    assert.deepEqual(res.removedResources, ["Kubernetes//Pod/apps/y"], "and the one deleted while away");
    dpuA = new TestProxy(cp, tokenFor(ztunnel("ztunnel-a", "master-dpu", "10.244.1.2")));
    await dpuA.client.ready;
  });

  it("moves a CPU's workloads to another DPU's scope when the topology changes, without reconnects", async () => {
    const swapped = seedTopologyText()
      .replace("dpuNodeName: master-dpu", "dpuNodeName: TMP")
      .replace("dpuNodeName: worker1-dpu", "dpuNodeName: master-dpu")
      .replace("dpuNodeName: TMP", "dpuNodeName: worker1-dpu")
      .replace("dpuNodeIP: 192.168.50.131", "dpuNodeIP: TMPIP")
      .replace("dpuNodeIP: 192.168.50.128", "dpuNodeIP: 192.168.50.131")
      .replace("dpuNodeIP: TMPIP", "dpuNodeIP: 192.168.50.128");
    source.setTopology({ text: swapped, source: "cluster-conf.yaml" });
    await until(
      "served nodes to follow",
      () =>
        dpuB.served()?.nodes.includes("master") === true && dpuA.served()?.nodes.includes("worker1") === true,
    );
    assert.deepEqual(dpuB.served(), { node: "worker1-dpu", nodes: ["worker1-dpu", "master"] });
    assert.deepEqual(dpuA.served(), { node: "master-dpu", nodes: ["master-dpu", "worker1"] });
  });

  it("keeps the topology when a change is invalid", async () => {
    source.setTopology({ text: "pairs: [oops", source: "cluster-conf.yaml" });
    await settle(50);
    assert.deepEqual(dpuB.served(), { node: "worker1-dpu", nodes: ["worker1-dpu", "master"] });
    const topo = (await (await fetch(`${cp.httpUrl}/debug/topology`)).json()) as { error?: string };
    assert.match(topo.error ?? "", /rejected, keeping the previous topology/);
    source.setTopology({ text: seedTopologyText(), source: "cluster-conf.yaml" });
    await until(
      "the seed topology back",
      () =>
        dpuA.served()?.nodes.includes("master") === true && dpuB.served()?.nodes.includes("worker1") === true,
    );
  });

  it("answers on-demand lookups by alias and pushes only what was asked for", async () => {
    const got: string[] = [];
    const client = new DeltaAdsClient({
      target: `127.0.0.1:${cp.grpcPort}`,
      credentials: { kind: "tls", rootCa: cp.root.certPem },
      token: tokenFor(ztunnel("ztunnel-a", "master-dpu", "10.244.1.2")),
      node: { id: "ztunnel~10.244.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local" },
      types: [
        {
          typeUrl: TYPE_URL.address,
          mode: "on-demand",
          apply: (c: { added: Resource[]; removed: string[] }) => {
            got.push(...c.added.map((r) => r.name), ...c.removed.map((n) => `-${n}`));
            return { rejected: [] };
          },
        },
      ],
    });
    try {
      await client.lookup(TYPE_URL.address, "/10.244.0.5");
      assert.deepEqual(got, ["Kubernetes//Pod/apps/x"], "the workload holding that address, nothing else");
      await client.lookup(TYPE_URL.address, "/10.9.9.9");
      assert.deepEqual(got.slice(1), ["-/10.9.9.9"], "an unknown key is answered by its removal");
      // A change to the looked-up workload follows; others do not.
      source.upsertPod(
        pod({
          uid: "uid-x",
          name: "x",
          namespace: "apps",
          nodeName: "master",
          ips: ["10.244.0.5"],
          labels: { app: "web", version: "v2" },
          serviceAccount: "web",
        }),
      );
      source.upsertPod(
        pod({ uid: "uid-o", name: "other", namespace: "apps", nodeName: "master", ips: ["10.244.0.40"] }),
      );
      await until("the change of x", () => got.filter((n) => n === "Kubernetes//Pod/apps/x").length === 2);
      await settle(60);
      assert.ok(!got.includes("Kubernetes//Pod/apps/other"));
    } finally {
      client.close();
    }
  });

  it("refuses an unauthenticated stream and an untrusted account", async () => {
    for (const token of [
      "",
      "not-a-token",
      tokenFor(
        pod({ uid: "uid-x", name: "x", namespace: "apps", nodeName: "master", serviceAccount: "web" }),
      ),
    ]) {
      const code = await new Promise<number>((resolve) => {
        const c = new DeltaAdsClient({
          target: `127.0.0.1:${cp.grpcPort}`,
          credentials: { kind: "tls", rootCa: cp.root.certPem },
          token,
          node: { id: "intruder" },
          types: [{ typeUrl: TYPE_URL.address, mode: "wildcard", apply: () => ({ rejected: [] }) }],
          backoff: { initialMs: 1000, maxMs: 1000 },
        });
        c.once("disconnected", (info: { code: number }) => {
          c.close();
          resolve(info.code);
        });
      });
      assert.equal(code, grpc.status.UNAUTHENTICATED);
    }
  });

  it("serves readiness, metrics and per-proxy config dumps", async () => {
    assert.equal((await fetch(`${cp.httpUrl}/ready`)).status, 200);
    const metrics = await (await fetch(`${cp.httpUrl}/metrics`)).text();
    assert.match(metrics, /^offmesh_xds_connected_proxies 2$/m);
    assert.match(metrics, /offmesh_xds_push_latency_seconds_bucket/);
    assert.match(
      metrics,
      /offmesh_xds_pushes_total\{type="type.googleapis.com\/istio.workload.Address"\} \d+/,
    );
    const proxies = (await (await fetch(`${cp.httpUrl}/debug/proxies`)).json()) as {
      id: string;
      node: string;
      servedNodes: string[];
    }[];
    const a = proxies.find((p) => p.node === "master-dpu");
    assert.deepEqual(a?.servedNodes, ["master-dpu", "master"]);
    const dump = (await (
      await fetch(`${cp.httpUrl}/debug/config_dump?proxy=${encodeURIComponent(a?.id ?? "")}`)
    ).json()) as Record<string, { name: string; value: { workload?: { addresses: string[] } } }[]>;
    const x = dump[TYPE_URL.address]?.find((r) => r.name === "Kubernetes//Pod/apps/x");
    assert.deepEqual(x?.value.workload?.addresses, ["10.244.0.5"]);
  });
});

describe("control plane: the CA signs only what a ztunnel serves", () => {
  const source = new MemoryClusterSource();
  let cp: RunningControlPlane;
  let tokenFor: (p: ClusterPod) => string;
  const caDir = mkdtempSync(join(tmpdir(), "offmesh-ca-"));
  after(() => rmSync(caDir, { recursive: true, force: true }));

  before(async () => {
    seedWithProxies(source);
    source.upsertPod(
      pod({
        uid: "uid-x",
        name: "x",
        namespace: "apps",
        nodeName: "master",
        ips: ["10.244.0.5"],
        serviceAccount: "web",
      }),
    );
    ({ cp, tokenFor } = await startTestControlPlane(source, caDir));
  });
  after(async () => cp?.stop());

  async function csr(identity: string): Promise<string> {
    const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
      "sign",
      "verify",
    ]);
    const req = await x509.Pkcs10CertificateRequestGenerator.create({
      keys,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: identity }])],
    });
    return req.toString("pem");
  }

  async function ask(
    caller: ClusterPod | undefined,
    identity: string,
  ): Promise<string[] | { code: number; details: string }> {
    const client = createCaClient(
      `127.0.0.1:${cp.grpcPort}`,
      grpc.credentials.createSsl(Buffer.from(cp.root.certPem)),
    );
    const md = new grpc.Metadata();
    if (caller) md.set("authorization", `Bearer ${tokenFor(caller)}`);
    try {
      const res = await createCertificate(
        client,
        { csr: await csr(identity), validityDuration: 3600, metadata: { ImpersonatedIdentity: identity } },
        md,
      );
      return res.certChain;
    } catch (err) {
      const e = err as { code: number; details: string };
      return { code: e.code, details: e.details };
    } finally {
      client.close();
    }
  }

  const web = "spiffe://cluster.local/ns/apps/sa/web";

  it("grants a CPU pod's identity to its DPU's proxy: leaf first, root last", async () => {
    const chain = await ask(ztunnel("ztunnel-a", "master-dpu", "10.244.1.2"), web);
    assert.ok(Array.isArray(chain), JSON.stringify(chain));
    assert.equal(chain.length, 2);
    assert.equal(chain[1], cp.root.certPem);
    const leaf = new x509.X509Certificate(chain[0] ?? "");
    const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
    assert.deepEqual(
      san?.names.items.map((n) => n.value),
      [web],
    );
  });

  for (const [label, caller, identity, code, reason] of [
    [
      "to another DPU's proxy",
      ztunnel("ztunnel-b", "worker1-dpu", "10.244.2.2"),
      web,
      grpc.status.PERMISSION_DENIED,
      /no running pod with service account apps\/web on the nodes worker1-dpu serves/,
    ],
    [
      "to an untrusted caller",
      pod({ uid: "uid-x", name: "x", namespace: "apps", nodeName: "master", serviceAccount: "web" }),
      web,
      grpc.status.PERMISSION_DENIED,
      /not a trusted node proxy account/,
    ],
    ["to an unauthenticated caller", undefined, web, grpc.status.UNAUTHENTICATED, /unauthenticated/],
    [
      "for a non-SPIFFE identity",
      ztunnel("ztunnel-a", "master-dpu", "10.244.1.2"),
      "web.apps",
      grpc.status.PERMISSION_DENIED,
      /not a SPIFFE ID/,
    ],
    [
      "for an identity with no pod on the served nodes",
      ztunnel("ztunnel-a", "master-dpu", "10.244.1.2"),
      "spiffe://cluster.local/ns/apps/sa/ghost",
      grpc.status.PERMISSION_DENIED,
      /no running pod/,
    ],
  ] as const) {
    it(`refuses ${label}`, async () => {
      const res = await ask(caller, identity);
      assert.ok(!Array.isArray(res), "refused");
      assert.equal(res.code, code, res.details);
      assert.match(res.details, reason);
    });
  }

  it("counts granted and denied requests", async () => {
    const metrics = await cp.cp.metrics.registry.metrics();
    assert.match(metrics, /^offmesh_ca_csr_total\{result="granted"\} 1$/m);
    assert.match(metrics, /^offmesh_ca_csr_total\{result="denied"\} 5$/m);
  });
});
