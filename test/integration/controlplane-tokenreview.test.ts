import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { IncomingMessage, Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import {
  EXTRA_POD_NAME,
  EXTRA_POD_UID,
  KubeconfigError,
  kubernetesTokenReviewer,
} from "../../src/controlplane/auth/tokenreview.js";
import { startControlPlane } from "../../src/controlplane/daemon.js";
import type { RunningControlPlane } from "../../src/controlplane/daemon.js";
import { DeltaAdsClient } from "../../src/xds/client.js";
import { createCaClient, createCertificate } from "../../src/xds/grpc.js";
import { TYPE_URL } from "../../src/xds/types.js";
import { ambient, pod, SEED_NODES, seedTopologyText } from "../support/cluster.js";

// The control plane authenticating node proxies with Kubernetes TokenReview, against an HTTP
// server that answers the TokenReview API the way kube-apiserver does, reached through a real
// kubeconfig file and @kubernetes/client-node.

const dir = mkdtempSync(join(tmpdir(), "offmesh-tr-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const CONTROL_PLANE_CREDENTIAL = "cp-sa-token";
const ZTUNNEL = pod({
  uid: "uid-zt-a",
  name: "ztunnel-a",
  namespace: "istio-system",
  nodeName: "master-dpu",
  ips: ["10.244.1.2"],
  serviceAccount: "ztunnel",
});

/** Tokens the fake API server knows, and what it says about them. */
const KNOWN: Record<string, { username: string; pod?: { name: string; uid: string } }> = {
  "zt-token": {
    username: "system:serviceaccount:istio-system:ztunnel",
    pod: { name: ZTUNNEL.name, uid: ZTUNNEL.uid },
  },
  "app-token": { username: "system:serviceaccount:apps:web", pod: { name: "web-1", uid: "uid-web-1" } },
};

interface Reviewed {
  readonly authorization: string | undefined;
  readonly body: { apiVersion?: string; kind?: string; spec?: { token?: string; audiences?: string[] } };
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function fakeApiServer(reviews: Reviewed[]): Server {
  return createServer((req, res) => {
    void (async () => {
      if (req.method !== "POST" || req.url?.split("?")[0] !== "/apis/authentication.k8s.io/v1/tokenreviews") {
        res.writeHead(404).end();
        return;
      }
      if (req.headers.authorization !== `Bearer ${CONTROL_PLANE_CREDENTIAL}`) {
        res
          .writeHead(401, { "content-type": "application/json" })
          .end(JSON.stringify({ kind: "Status", code: 401 }));
        return;
      }
      const body = (await readJson(req)) as Reviewed["body"];
      reviews.push({ authorization: req.headers.authorization, body });
      const known = KNOWN[body.spec?.token ?? ""];
      const status = known
        ? {
            authenticated: true,
            audiences: body.spec?.audiences ?? [],
            user: {
              username: known.username,
              ...(known.pod
                ? { extra: { [EXTRA_POD_NAME]: [known.pod.name], [EXTRA_POD_UID]: [known.pod.uid] } }
                : {}),
            },
          }
        : { authenticated: false, error: "invalid bearer token" };
      res.writeHead(201, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          apiVersion: "authentication.k8s.io/v1",
          kind: "TokenReview",
          spec: body.spec,
          status,
        }),
      );
    })();
  });
}

describe("control plane with Kubernetes TokenReview authentication", () => {
  const reviews: Reviewed[] = [];
  const api = fakeApiServer(reviews);
  const source = new MemoryClusterSource();
  let cp: RunningControlPlane;
  let kubeconfig: string;

  before(async () => {
    await new Promise<void>((r) => api.listen(0, "127.0.0.1", r));
    const port = (api.address() as { port: number }).port;
    kubeconfig = join(dir, "kubeconfig");
    writeFileSync(
      kubeconfig,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        `- name: test\n  cluster:\n    server: http://127.0.0.1:${port}\n    insecure-skip-tls-verify: true`,
        "users:",
        `- name: cp\n  user:\n    token: ${CONTROL_PLANE_CREDENTIAL}`,
        "contexts:",
        "- name: test\n  context:\n    cluster: test\n    user: cp",
        "current-context: test",
        "",
      ].join("\n"),
    );
    source.setTopology({ text: seedTopologyText(), source: "cluster-conf.yaml" });
    for (const n of SEED_NODES) source.upsertNode(n);
    source.upsertNamespace(ambient("apps"));
    source.upsertNamespace({ name: "istio-system", labels: {} });
    source.upsertPod(ZTUNNEL);
    source.upsertPod(
      pod({
        uid: "uid-web-1",
        name: "web-1",
        namespace: "apps",
        nodeName: "master",
        ips: ["10.244.0.5"],
        serviceAccount: "web",
      }),
    );
    cp = await startControlPlane(
      {
        clusterState: "",
        clusterConf: "",
        stateDir: join(dir, "state"),
        listen: "127.0.0.1:0",
        trustDomain: "cluster.local",
        domain: "cluster.local",
        rootNamespace: "istio-system",
        debounceMs: 5,
        proxyAuth: { kind: "kubernetes", kubeconfig },
        log: pino({ level: "silent" }),
      },
      { source },
    );
  });
  after(async () => {
    await cp?.stop();
    await new Promise<void>((r) => api.close(() => r()));
  });

  const stream = (token: string): Promise<{ ok: true } | { ok: false; code: number; details: string }> =>
    new Promise((resolve) => {
      const c = new DeltaAdsClient({
        target: `127.0.0.1:${cp.grpcPort}`,
        credentials: { kind: "tls", rootCa: cp.root.certPem },
        token,
        node: { id: "ztunnel~10.244.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local" },
        types: [{ typeUrl: TYPE_URL.servedNodes, mode: "wildcard", apply: () => ({ rejected: [] }) }],
        backoff: { initialMs: 1000, maxMs: 1000 },
      });
      c.once("response", () => {
        c.close();
        resolve({ ok: true });
      });
      c.once("disconnected", (info: { code: number; details: string }) => {
        c.close();
        resolve({ ok: false, code: info.code, details: info.details });
      });
    });

  it("accepts a ztunnel whose token the API server vouches for, reviewing it for the istio-ca audience", async () => {
    assert.deepEqual(await stream("zt-token"), { ok: true });
    const review = reviews.find((r) => r.body.spec?.token === "zt-token");
    assert.ok(review, "the control plane sent a TokenReview");
    assert.equal(review.body.kind, "TokenReview");
    assert.deepEqual(review.body.spec?.audiences, ["istio-ca"]);
  });

  it("refuses a token the API server does not authenticate, and a workload's token", async () => {
    const bad = await stream("stolen");
    assert.ok(!bad.ok);
    assert.equal(bad.code, grpc.status.UNAUTHENTICATED);
    assert.match(bad.details, /token rejected by the API server: invalid bearer token/);
    const app = await stream("app-token");
    assert.ok(!app.ok);
    assert.match(app.details, /apps\/web is not a trusted node proxy account/);
  });

  it("authenticates certificate requests the same way", async () => {
    const client = createCaClient(
      `127.0.0.1:${cp.grpcPort}`,
      grpc.credentials.createSsl(Buffer.from(cp.root.certPem)),
    );
    try {
      const md = new grpc.Metadata();
      md.set("authorization", "Bearer stolen");
      await assert.rejects(
        createCertificate(client, { csr: "x", validityDuration: 3600, metadata: {} }, md),
        (e: grpc.ServiceError) =>
          e.code === grpc.status.UNAUTHENTICATED && /invalid bearer token/.test(e.details),
      );
    } finally {
      client.close();
    }
  });

  it("names the kubeconfig when it cannot be used", async () => {
    await assert.rejects(
      () => kubernetesTokenReviewer(join(dir, "missing")),
      (e: unknown) => e instanceof KubeconfigError && /missing: no such file/.test(e.message),
    );
  });
});
