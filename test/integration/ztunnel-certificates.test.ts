import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import type { ClusterPod } from "../../src/cluster/types.js";
import {
  issueProxyToken,
  loadOrCreateTokenKey,
  serviceAccountSubject,
} from "../../src/controlplane/auth/tokens.js";
import { loadOrCreateRoot } from "../../src/controlplane/ca/root.js";
import { startControlPlane } from "../../src/controlplane/daemon.js";
import type { RunningControlPlane } from "../../src/controlplane/daemon.js";
import { x509 } from "../../src/identity/x509.js";
import { caServiceDefinition } from "../../src/xds/grpc.js";
import type { IstioCertificateRequest, IstioCertificateResponse } from "../../src/xds/messages.js";
import { createGrpcCertificateSigner } from "../../src/ztunnel/identity/ca-client.js";
import type { GrpcCertificateSigner } from "../../src/ztunnel/identity/ca-client.js";
import { CertificateManager } from "../../src/ztunnel/identity/certificates.js";
import type { WorkloadCertificate } from "../../src/ztunnel/identity/certificates.js";
import { createKeyAndCsr } from "../../src/ztunnel/identity/csr.js";
import { CertificateRequestError } from "../../src/ztunnel/identity/errors.js";
import {
  checkServerIdentity,
  PeerIdentityError,
  peerSpiffeIdentity,
} from "../../src/ztunnel/identity/peer.js";
import { ambient, pod, SEED_NODES, seedTopologyText } from "../support/cluster.js";

// The ztunnel's certificate manager against the real control plane CA on loopback: TLS gRPC,
// a DPU proxy authenticated by its token, asking for the identities of its CPU node's pods.

const WEB = "spiffe://cluster.local/ns/apps/sa/web";
const SLEEP = "spiffe://cluster.local/ns/apps/sa/sleep";
const DB = "spiffe://cluster.local/ns/apps/sa/db";

const ztunnelA = pod({
  uid: "uid-ztunnel-a",
  name: "ztunnel-a",
  namespace: "istio-system",
  nodeName: "master-dpu",
  ips: ["10.244.1.2"],
  labels: { app: "ztunnel" },
  serviceAccount: "ztunnel",
});

/** `p`, or a failure naming `what` after `ms`. */
async function within<T>(p: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The leaf of `cert` is signed by `rootPem` and names exactly `identity`. */
function assertChainsTo(cert: WorkloadCertificate, rootPem: string, identity: string): void {
  const root = new X509Certificate(rootPem);
  const leaf = new X509Certificate(cert.certChainPem);
  assert.ok(leaf.checkIssued(root), "issued by the root");
  assert.ok(leaf.verify(root.publicKey), "signature verifies with the root's key");
  assert.deepEqual(peerSpiffeIdentity(leaf), { identity });
  assert.equal(cert.certChainPem.match(/BEGIN CERTIFICATE/g)?.length, 1, "the root is not in the chain");
}

describe("ztunnel certificates from the control plane CA", () => {
  const stateDir = mkdtempSync(join(tmpdir(), "offmesh-ztunnel-certs-"));
  const source = new MemoryClusterSource();
  let cp: RunningControlPlane;
  let tokenFor: (p: ClusterPod) => string;
  const signers: GrpcCertificateSigner[] = [];
  const managers: CertificateManager[] = [];

  const signerFor = (token: () => string, serverName?: string): GrpcCertificateSigner => {
    const s = createGrpcCertificateSigner({
      target: `127.0.0.1:${cp.grpcPort}`,
      rootCaPem: cp.root.certPem,
      ...(serverName ? { serverName } : {}),
      token,
    });
    signers.push(s);
    return s;
  };
  const managerWith = (signer: GrpcCertificateSigner, lifetimeSeconds?: number): CertificateManager => {
    const m = new CertificateManager({
      signer: signer.sign,
      trustDomain: "cluster.local",
      roots: cp.root.certPem,
      ...(lifetimeSeconds ? { lifetimeSeconds } : {}),
    });
    managers.push(m);
    return m;
  };

  before(async () => {
    source.setTopology({ text: seedTopologyText(), source: "cluster-conf.yaml" });
    for (const n of SEED_NODES) source.upsertNode(n);
    source.upsertNamespace(ambient("apps"));
    source.upsertNamespace({ name: "istio-system", labels: {} });
    source.upsertPod(ztunnelA);
    const app = (name: string, node: string, ip: string, serviceAccount: string): ClusterPod =>
      pod({ uid: `uid-${name}`, name, namespace: "apps", nodeName: node, ips: [ip], serviceAccount });
    // web and sleep run on the CPU node master, which master-dpu serves; db on worker1, which it does not.
    source.upsertPod(app("web", "master", "10.244.0.5", "web"));
    source.upsertPod(app("sleep", "master", "10.244.0.6", "sleep"));
    source.upsertPod(app("db", "worker1", "10.244.3.7", "db"));
    cp = await startControlPlane(
      {
        clusterState: "",
        clusterConf: "",
        stateDir,
        listen: "127.0.0.1:0",
        trustDomain: "cluster.local",
        domain: "cluster.local",
        rootNamespace: "istio-system",
        debounceMs: 5,
        log: pino({ level: "silent" }),
      },
      { source },
    );
    const key = await loadOrCreateTokenKey(stateDir);
    tokenFor = (p) =>
      issueProxyToken(
        key,
        {
          sub: serviceAccountSubject(p.namespace, p.serviceAccount),
          pod: { name: p.name, uid: p.uid },
          node: p.nodeName ?? "",
        },
        3600,
      );
  });
  after(async () => {
    for (const m of managers) m.close();
    for (const s of signers) s.close();
    await cp?.stop();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it("gives a DPU proxy certificates for its CPU node's pods that chain to the CA root and carry mTLS", async () => {
    // The serving certificate names offmesh-controlplane; the override checks against that name.
    const manager = managerWith(signerFor(() => tokenFor(ztunnelA), "offmesh-controlplane"));
    const [web, sleep] = await Promise.all([manager.get(WEB), manager.get(SLEEP)]);
    assertChainsTo(web, cp.root.certPem, WEB);
    assertChainsTo(sleep, cp.root.certPem, SLEEP);
    assert.equal(web.rootsPem, cp.root.certPem);
    assert.ok(web.notAfter.getTime() - Date.now() > 23 * 3600_000, "the default 24 h lifetime");

    // An mTLS handshake between the two, checked the way HBONE checks its peers.
    const server = tls.createServer({
      key: web.keyPem,
      cert: web.certChainPem,
      ca: web.rootsPem,
      requestCert: true,
      rejectUnauthorized: true,
    });
    // TLS 1.3: the server sees the client's certificate after the client's handshake is done, so it
    // answers with what it saw and the client reads that.
    server.on("secureConnection", (socket: tls.TLSSocket) => {
      socket.end(JSON.stringify(peerSpiffeIdentity(socket.getPeerCertificate())));
    });
    server.on("tlsClientError", () => undefined);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const port = (server.address() as AddressInfo).port;
    const dial = (expected: readonly string[]): Promise<{ server: unknown; saw: string }> =>
      new Promise((resolve, reject) => {
        const socket = tls.connect({
          host: "127.0.0.1",
          port,
          key: sleep.keyPem,
          cert: sleep.certChainPem,
          ca: sleep.rootsPem,
          checkServerIdentity: checkServerIdentity(expected),
        });
        let saw = "";
        socket.setEncoding("utf8");
        socket.on("data", (chunk: string) => (saw += chunk));
        socket.once("end", () => {
          resolve({ server: peerSpiffeIdentity(socket.getPeerCertificate()), saw });
          socket.destroy();
        });
        socket.once("error", reject);
      });
    try {
      const { server: serverIdentity, saw } = await within(dial([WEB]), "the mTLS exchange");
      assert.deepEqual(serverIdentity, { identity: WEB }, "the client saw the server's identity");
      assert.deepEqual(JSON.parse(saw), { identity: SLEEP }, "the server saw the client's identity");

      await assert.rejects(within(dial([DB]), "the refused handshake"), (e: unknown) => {
        assert.ok(e instanceof PeerIdentityError, String(e));
        assert.equal(e.found, WEB);
        return true;
      });
    } finally {
      server.close();
    }
  });

  it("reports the CA's refusal of an identity the proxy does not serve as a typed error", async () => {
    const manager = managerWith(signerFor(() => tokenFor(ztunnelA)));
    await assert.rejects(manager.get(DB), (e: unknown) => {
      assert.ok(e instanceof CertificateRequestError, String(e));
      assert.equal(e.identity, DB);
      assert.equal(e.code, grpc.status.PERMISSION_DENIED);
      assert.match(e.reason, /no running pod with service account apps\/db on the nodes master-dpu serves/);
      return true;
    });
    assert.equal(manager.dump()[0]?.state, "Unavailable");

    const stranger = managerWith(signerFor(() => "not-a-token"));
    await assert.rejects(stranger.get(WEB), (e: unknown) => {
      assert.ok(e instanceof CertificateRequestError);
      assert.equal(e.code, grpc.status.UNAUTHENTICATED);
      assert.match(e.reason, /^unauthenticated: /);
      return true;
    });
  });

  it("renews a short-lived certificate in the background against the real CA", async () => {
    // The CA grants any positive lifetime up to 90 days (leafTtlSeconds); it backdates notBefore by
    // 2 min, so the manager renews halfway through the remaining 4 s, about 2 s from now.
    const manager = managerWith(
      signerFor(() => tokenFor(ztunnelA)),
      4,
    );
    const first = await manager.get(WEB);
    assert.ok(first.notAfter.getTime() - Date.now() <= 4000);
    const [identity, second] = await within(
      once(manager, "renewed") as Promise<[string, WorkloadCertificate]>,
      "the background renewal",
    );
    assert.equal(identity, WEB);
    assert.notEqual(second.serial, first.serial);
    assert.notEqual(second.keyPem, first.keyPem);
    assert.ok(second.notAfter.getTime() >= first.notAfter.getTime());
    assertChainsTo(second, cp.root.certPem, WEB);
    assert.equal(await manager.get(WEB), second);
  });
});

describe("gRPC certificate signer: what goes on the wire", () => {
  const stateDir = mkdtempSync(join(tmpdir(), "offmesh-ztunnel-signer-"));
  let server: grpc.Server;
  let port: number;
  let rootPem: string;
  const seen: Array<{ request: IstioCertificateRequest; authorization: unknown[] }> = [];
  let answer: (
    call: IstioCertificateRequest,
  ) => IstioCertificateResponse | { code: grpc.status; details: string };

  before(async () => {
    const root = await loadOrCreateRoot(stateDir, { trustDomain: "cluster.local" });
    rootPem = root.certPem;
    const serving = await root.issueServingCert({
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"],
      ttlSeconds: 3600,
    });
    server = new grpc.Server();
    server.addService(caServiceDefinition, {
      CreateCertificate: (
        call: grpc.ServerUnaryCall<IstioCertificateRequest, IstioCertificateResponse>,
        callback: grpc.sendUnaryData<IstioCertificateResponse>,
      ) => {
        seen.push({ request: call.request, authorization: call.metadata.get("authorization") });
        const res = answer(call.request);
        if ("certChain" in res) callback(null, res);
        else if (res.code !== grpc.status.DEADLINE_EXCEEDED) callback(res);
        // DEADLINE_EXCEEDED: never answer, the client's deadline ends the call.
      },
    });
    port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(
        "127.0.0.1:0",
        grpc.ServerCredentials.createSsl(null, [
          { cert_chain: Buffer.from(serving.certPem), private_key: Buffer.from(serving.keyPem) },
        ]),
        (err, p) => (err ? reject(err) : resolve(p)),
      ),
    );
  });
  after(() => {
    server?.forceShutdown();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it("sends the CSR, lifetime, ImpersonatedIdentity and a fresh bearer token on every request", async () => {
    let n = 0;
    const signer = createGrpcCertificateSigner({
      target: `127.0.0.1:${port}`,
      rootCaPem: rootPem,
      token: async () => `token-${++n}`,
    });
    try {
      answer = () => ({ certChain: ["leaf", "root"] });
      const { csrPem } = await createKeyAndCsr(WEB);
      assert.deepEqual(await signer.sign({ csrPem, identity: WEB, lifetimeSeconds: 600 }), ["leaf", "root"]);
      await signer.sign({ csrPem, identity: WEB, lifetimeSeconds: 600 });
      assert.deepEqual(seen[0]?.request, {
        csr: csrPem,
        validityDuration: 600,
        metadata: { ImpersonatedIdentity: WEB },
      });
      assert.deepEqual(seen[0]?.authorization, ["Bearer token-1"]);
      assert.deepEqual(seen[1]?.authorization, ["Bearer token-2"], "the token is read again");
      assert.ok(new x509.Pkcs10CertificateRequest(seen[0]?.request.csr ?? "").subject === "");

      answer = () => ({
        code: grpc.status.INVALID_ARGUMENT,
        details: "certificate request rejected: bad CSR",
      });
      await assert.rejects(signer.sign({ csrPem, identity: WEB, lifetimeSeconds: 600 }), (e: unknown) => {
        assert.ok(e instanceof CertificateRequestError);
        assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
        assert.equal(e.reason, "certificate request rejected: bad CSR");
        assert.equal(e.identity, WEB);
        return true;
      });
    } finally {
      signer.close();
    }
  });

  it("gives up at its deadline, and fails typed when the token cannot be read", async () => {
    const slow = createGrpcCertificateSigner({
      target: `127.0.0.1:${port}`,
      rootCaPem: rootPem,
      token: () => "t",
      timeoutMs: 300,
    });
    const broken = createGrpcCertificateSigner({
      target: `127.0.0.1:${port}`,
      rootCaPem: rootPem,
      token: () => {
        throw new Error("ENOENT: /var/run/secrets/tokens/istio-token");
      },
    });
    try {
      answer = () => ({ code: grpc.status.DEADLINE_EXCEEDED, details: "" });
      const { csrPem } = await createKeyAndCsr(WEB);
      await assert.rejects(
        within(slow.sign({ csrPem, identity: WEB, lifetimeSeconds: 60 }), "the deadline"),
        (e: unknown) => e instanceof CertificateRequestError && e.code === grpc.status.DEADLINE_EXCEEDED,
      );
      await assert.rejects(broken.sign({ csrPem, identity: WEB, lifetimeSeconds: 60 }), (e: unknown) => {
        assert.ok(e instanceof CertificateRequestError);
        assert.equal(e.code, grpc.status.UNAUTHENTICATED);
        assert.match(e.reason, /token cannot be read: ENOENT/);
        return true;
      });
    } finally {
      slow.close();
      broken.close();
    }
  });
});
