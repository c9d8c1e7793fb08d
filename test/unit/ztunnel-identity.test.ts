import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, webcrypto, X509Certificate } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PeerCertificate } from "node:tls";
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import * as grpc from "@grpc/grpc-js";
import type * as X509 from "@peculiar/x509";
import { CsrRejectedError, loadOrCreateRoot } from "../../src/controlplane/ca/root.js";
import { IMPERSONATED_IDENTITY } from "../../src/controlplane/grpc-server.js";
import { x509 } from "../../src/identity/x509.js";
import { IMPERSONATED_IDENTITY_KEY } from "../../src/ztunnel/identity/ca-client.js";
import type { CertificateSigningRequest } from "../../src/ztunnel/identity/ca-client.js";
import { uriSubjectAltNames } from "../../src/ztunnel/identity/cert-parse.js";
import { CertificateManager } from "../../src/ztunnel/identity/certificates.js";
import type { FetchReason, WorkloadCertificate } from "../../src/ztunnel/identity/certificates.js";
import { createKeyAndCsr } from "../../src/ztunnel/identity/csr.js";
import {
  CertificateIdentityError,
  CertificateManagerClosedError,
  CertificateRequestError,
  CertificateResponseError,
} from "../../src/ztunnel/identity/errors.js";
import type { CertificateError } from "../../src/ztunnel/identity/errors.js";
import {
  checkServerIdentity,
  checkTrustDomain,
  PeerIdentityError,
  peerSpiffeIdentity,
} from "../../src/ztunnel/identity/peer.js";
import {
  backoffDelayMs,
  backoffPolicy,
  MIN_REFRESH_DELAY_MS,
  refreshAtMs,
} from "../../src/ztunnel/identity/schedule.js";

// Real timers, captured before any test mocks them: the waits below must end even when the code
// under test never schedules what a test waits for.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

const TD = "cluster.local";
const WEB = "spiffe://cluster.local/ns/apps/sa/web";
const DB = "spiffe://cluster.local/ns/apps/sa/db";
const START = Date.UTC(2030, 0, 1, 0, 0, 0);
const HOUR_S = 3600;
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;
const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;

/** `p`, or a failure naming `what` after `ms` of real time. */
async function within<T>(p: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = realSetTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    realClearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// A test CA built with @peculiar/x509, so answers can be made wrong in every way that matters.

interface TestCa {
  readonly certPem: string;
  readonly cert: X509.X509Certificate;
  readonly keys: webcrypto.CryptoKeyPair;
}

async function makeCa(name: string, signer?: TestCa): Promise<TestCa> {
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
  const now = Date.now();
  const extensions = [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
  ];
  const validity = { notBefore: new Date(now - 3600_000), notAfter: new Date(now + 3650 * 86400_000) };
  const cert = signer
    ? await x509.X509CertificateGenerator.create({
        serialNumber: "01",
        subject: name,
        issuer: signer.cert.subjectName,
        publicKey: keys.publicKey,
        signingKey: signer.keys.privateKey,
        signingAlgorithm: ECDSA_SHA256,
        extensions,
        ...validity,
      })
    : await x509.X509CertificateGenerator.createSelfSigned({
        serialNumber: "01",
        name,
        keys,
        signingAlgorithm: ECDSA_SHA256,
        extensions,
        ...validity,
      });
  return { certPem: cert.toString("pem") + "\n", cert, keys };
}

let serialCounter = 0x1000;

async function issueLeaf(
  ca: TestCa,
  opts: {
    publicKey: X509.PublicKey | webcrypto.CryptoKey;
    sans: readonly { type: "url" | "dns"; value: string }[];
    notBefore?: Date;
    notAfter?: Date;
    lifetimeSeconds?: number;
  },
): Promise<string> {
  const notBefore = opts.notBefore ?? new Date(Date.now());
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + (opts.lifetimeSeconds ?? HOUR_S) * 1000);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: (serialCounter++).toString(16),
    subject: "",
    issuer: ca.cert.subjectName,
    notBefore,
    notAfter,
    publicKey: opts.publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.SubjectAlternativeNameExtension([...opts.sans], true),
    ],
  });
  return cert.toString("pem") + "\n";
}

/** A correct CA answer to `req`: the leaf for the CSR's key and identity, then the root. */
async function signCorrectly(ca: TestCa, req: CertificateSigningRequest): Promise<string[]> {
  const csr = new x509.Pkcs10CertificateRequest(req.csrPem);
  const leaf = await issueLeaf(ca, {
    publicKey: csr.publicKey,
    sans: [{ type: "url", value: req.identity }],
    lifetimeSeconds: req.lifetimeSeconds,
  });
  return [leaf, ca.certPem];
}

type Responder = (req: CertificateSigningRequest) => Promise<string[]>;

/** A signer whose answers the test chooses; records every request. */
class FakeSigner {
  readonly calls: CertificateSigningRequest[] = [];
  private waiters: Array<() => void> = [];
  constructor(public respond: Responder) {}

  readonly sign = (req: CertificateSigningRequest): Promise<string[]> => {
    this.calls.push(req);
    for (const w of this.waiters.splice(0)) w();
    return this.respond(req);
  };

  /** Resolves once `n` requests have arrived in total. */
  async calledTimes(n: number): Promise<void> {
    while (this.calls.length < n) {
      await within(new Promise<void>((r) => this.waiters.push(r)), `signer call ${n}`);
    }
  }
}

/** A responder that holds each request until the test releases it. */
function manualResponder(): {
  respond: Responder;
  release: (answer: (req: CertificateSigningRequest) => Promise<string[]>) => void;
} {
  const pending: Array<{ req: CertificateSigningRequest; resolve: (v: Promise<string[]>) => void }> = [];
  return {
    respond: (req) => new Promise<string[]>((resolve) => pending.push({ req, resolve })),
    release: (answer) => {
      const next = pending.shift();
      assert.ok(next, "a request is pending");
      next.resolve(answer(next.req));
    },
  };
}

const refused = (reason: string, code = grpc.status.PERMISSION_DENIED): Responder => {
  return async (req) => {
    throw new CertificateRequestError(req.identity, code, reason);
  };
};

function spkiOf(keyPem: string): Buffer {
  return createPublicKey(createPrivateKey(keyPem)).export({ type: "spki", format: "der" });
}

// ---------------------------------------------------------------------------------------------

describe("createKeyAndCsr", () => {
  it("makes a P-256 key and a SHA-256-signed CSR whose only SAN is the SPIFFE ID, with an empty subject", async () => {
    const { keyPem, csrPem } = await createKeyAndCsr(WEB);
    assert.match(keyPem, /^-----BEGIN PRIVATE KEY-----\n/, "PKCS#8 PEM, as node:tls takes it");
    const key = createPrivateKey(keyPem);
    assert.equal(key.asymmetricKeyType, "ec");
    assert.equal(key.asymmetricKeyDetails?.namedCurve, "prime256v1");

    const csr = new x509.Pkcs10CertificateRequest(csrPem);
    assert.equal(csr.subject, "");
    const alg = csr.signatureAlgorithm as { name?: string; hash?: { name?: string } };
    assert.equal(alg.name, "ECDSA");
    assert.equal(alg.hash?.name, "SHA-256");
    assert.equal(await csr.verify(), true, "signed by its own key");
    assert.ok(Buffer.from(csr.publicKey.rawData).equals(spkiOf(keyPem)), "for the returned key");

    const sans = csr.extensions.filter((e) => e.type === "2.5.29.17");
    assert.equal(sans.length, 1);
    assert.equal(sans[0]!.critical, true, "critical, the subject being empty");
    assert.equal(csr.extensions.length, 1, "no other extension");
    const names = new x509.SubjectAlternativeNameExtension(sans[0]!.rawData).names.items;
    assert.deepEqual(
      names.map((n) => [n.type, n.value]),
      [["url", WEB]],
    );
    assert.equal(csr.attributes.length, 1, "the extensionRequest only");
    assert.equal(csr.attributes[0]!.type, "1.2.840.113549.1.9.14");

    // ecdsa-with-SHA256 with its parameters absent (RFC 5758 §3.2), then the signature BIT STRING.
    const der = Buffer.from(csr.rawData);
    assert.ok(der.includes(Buffer.from("300a06082a8648ce3d04030203", "hex")), "no NULL parameters");
    assert.equal(csrPem, csr.toString("pem") + "\n", "PEM as @peculiar/x509 writes it, 64-column lines");
  });

  it("makes a CSR the control plane's CA signs, for the returned key", async () => {
    const dir = await mkdtemp(join(tmpdir(), "offmesh-csr-"));
    try {
      const root = await loadOrCreateRoot(dir, { trustDomain: TD });
      const { keyPem, csrPem } = await createKeyAndCsr(WEB);
      const leafPem = await root.signWorkload(csrPem, WEB, HOUR_S);
      const leaf = new X509Certificate(leafPem);
      assert.ok(leaf.verify(new X509Certificate(root.certPem).publicKey), "signed by the root");
      assert.ok(leaf.publicKey.export({ type: "spki", format: "der" }).equals(spkiOf(keyPem)));
      assert.ok(leaf.checkPrivateKey(createPrivateKey(keyPem)));
      assert.deepEqual(uriSubjectAltNames(leaf.raw), { uris: [WEB] });
      await assert.rejects(
        root.signWorkload(csrPem, DB, HOUR_S),
        CsrRejectedError,
        "for its own identity only",
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("makes a new key every time", async () => {
    const [a, b] = await Promise.all([createKeyAndCsr(WEB), createKeyAndCsr(WEB)]);
    assert.ok(!spkiOf(a.keyPem).equals(spkiOf(b.keyPem)));
  });

  it("refuses what is not a SPIFFE ID", async () => {
    await assert.rejects(createKeyAndCsr("spiffe://cluster.local/ns/apps"), TypeError);
    await assert.rejects(createKeyAndCsr("https://example.com/"), TypeError);
  });

  it("uses the metadata key the control plane reads", () => {
    assert.equal(IMPERSONATED_IDENTITY_KEY, IMPERSONATED_IDENTITY);
  });
});

describe("peer identity", () => {
  let ca: TestCa;
  let leafKeys: webcrypto.CryptoKeyPair;
  beforeEach(async () => {
    ca ??= await makeCa("O=peer-test");
    leafKeys ??= await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
  });
  const certWith = async (
    sans: readonly { type: "url" | "dns"; value: string }[],
  ): Promise<X509Certificate> =>
    new X509Certificate(await issueLeaf(ca, { publicKey: leafKeys.publicKey, sans }));

  it("reads the one SPIFFE URI SAN, from node's X509Certificate and from a TLS peer certificate", async () => {
    const cert = await certWith([
      { type: "dns", value: "web.apps.svc" },
      { type: "url", value: WEB },
    ]);
    assert.deepEqual(peerSpiffeIdentity(cert), { identity: WEB });
    // What getPeerCertificate() returns carries the DER as `raw`.
    assert.deepEqual(peerSpiffeIdentity({ raw: cert.raw } as PeerCertificate), { identity: WEB });
  });

  it("is not fooled by commas and quotes inside names", async () => {
    // Printed as a string these read like a second, forged URI SAN.
    const forged = `x", URI:spiffe://cluster.local/ns/evil/sa/evil, DNS:"y`;
    const cert = await certWith([
      { type: "dns", value: forged },
      { type: "url", value: WEB },
    ]);
    assert.deepEqual(peerSpiffeIdentity(cert), { identity: WEB });

    const commaUri = `${WEB},URI:spiffe://cluster.local/ns/evil/sa/evil`;
    const one = peerSpiffeIdentity(await certWith([{ type: "url", value: commaUri }]));
    assert.ok("error" in one, "one URI that is not a SPIFFE ID, not two identities");
    assert.match(one.error, /not a SPIFFE ID/);
  });

  it("refuses two URI SANs, none, a non-SPIFFE URI and a missing certificate", async () => {
    const two = peerSpiffeIdentity(
      await certWith([
        { type: "url", value: WEB },
        { type: "url", value: DB },
      ]),
    );
    assert.ok("error" in two);
    assert.match(two.error, /2 URI subjectAltNames/);

    const none = peerSpiffeIdentity(await certWith([{ type: "dns", value: "web.apps.svc" }]));
    assert.deepEqual(none, { error: "the peer's certificate has no URI subjectAltName" });

    const https = peerSpiffeIdentity(await certWith([{ type: "url", value: "https://web.apps.svc/" }]));
    assert.ok("error" in https);
    assert.match(https.error, /not a SPIFFE ID/);

    assert.deepEqual(peerSpiffeIdentity({} as PeerCertificate), {
      error: "the peer presented no certificate",
    });
  });

  it("checks the trust domain", () => {
    assert.equal(checkTrustDomain(WEB, TD), undefined);
    assert.match(checkTrustDomain("spiffe://other.example/ns/apps/sa/web", TD) ?? "", /not this mesh's/);
    assert.match(checkTrustDomain("spiffe://cluster.local/ns/apps", TD) ?? "", /not a SPIFFE ID/);
  });

  it("checkServerIdentity accepts only an expected URI SAN and ignores host names", async () => {
    const cert = await certWith([
      { type: "dns", value: "localhost" },
      { type: "url", value: WEB },
    ]);
    const peer = { raw: cert.raw } as PeerCertificate;
    assert.equal(checkServerIdentity([DB, WEB])("some.other.host", peer), undefined);
    const wrong = checkServerIdentity([DB])("localhost", peer);
    assert.ok(wrong instanceof PeerIdentityError, "a matching DNS name does not help");
    assert.equal(wrong.found, WEB);
    assert.deepEqual(wrong.expected, [DB]);
    assert.equal(wrong.code, "ERR_TLS_CERT_ALTNAME_INVALID");
    const noSpiffe = checkServerIdentity([WEB])("localhost", {
      raw: (await certWith([{ type: "dns", value: "localhost" }])).raw,
    } as PeerCertificate);
    assert.ok(noSpiffe instanceof PeerIdentityError);
    assert.equal(noSpiffe.found, undefined);
  });
});

describe("renewal schedule", () => {
  it("backs off exponentially with equal jitter, capped", () => {
    const policy = backoffPolicy({ initialMs: 1000, maxMs: 4000 });
    assert.deepEqual(
      [1, 2, 3, 4, 10].map((n) => backoffDelayMs(n, policy, () => 0)),
      [500, 1000, 2000, 2000, 2000],
    );
    assert.deepEqual(
      [1, 2, 3, 4, 10].map((n) => backoffDelayMs(n, policy, () => 1)),
      [1000, 2000, 4000, 4000, 4000],
    );
    assert.equal(
      backoffDelayMs(10_000, policy, () => 1),
      4000,
      "no overflow for long outages",
    );
    assert.throws(() => backoffPolicy({ initialMs: 0 }), RangeError);
    assert.deepEqual(backoffPolicy({ initialMs: 5000, maxMs: 10 }), { initialMs: 5000, maxMs: 5000 });
  });

  it("renews halfway through the life still ahead, even when notBefore is backdated", () => {
    const t = START;
    assert.equal(refreshAtMs(new Date(t), new Date(t + 86400_000), t), t + 43200_000);
    // The control plane's CA backdates notBefore by 2 min; a 4 s certificate is renewed after 2 s.
    assert.equal(refreshAtMs(new Date(t - 120_000), new Date(t + 4000), t), t + 2000);
    assert.equal(
      refreshAtMs(new Date(t - 120_000), new Date(t + 100), t),
      t + MIN_REFRESH_DELAY_MS,
      "never in a loop, however little life a certificate has",
    );
  });
});

describe("CertificateManager", () => {
  let ca: TestCa;
  let managers: CertificateManager[] = [];

  beforeEach(async () => {
    ca ??= await makeCa("O=manager-test");
    mock.timers.enable({ apis: ["setTimeout", "Date"], now: START });
  });
  afterEach(() => {
    for (const m of managers) m.close();
    managers = [];
    mock.timers.reset();
  });

  function setup(
    respond?: Responder,
    opts: { lifetimeSeconds?: number; backoff?: { initialMs?: number; maxMs?: number } } = {},
  ): { manager: CertificateManager; signer: FakeSigner; fetches: Array<[string, FetchReason]> } {
    const signer = new FakeSigner(respond ?? ((req) => signCorrectly(ca, req)));
    const manager = new CertificateManager({
      signer: signer.sign,
      trustDomain: TD,
      roots: ca.certPem,
      lifetimeSeconds: opts.lifetimeSeconds ?? HOUR_S,
      now: () => Date.now(),
      ...(opts.backoff ? { backoff: opts.backoff } : {}),
    });
    managers.push(manager);
    const fetches: Array<[string, FetchReason]> = [];
    manager.on("fetching", (identity, reason) => fetches.push([identity, reason]));
    return { manager, signer, fetches };
  }

  const nextFailure = (m: CertificateManager): Promise<[string, CertificateError, number | undefined]> =>
    within(once(m, "fetchFailed") as Promise<[string, CertificateError, number | undefined]>, "fetchFailed");
  const nextRenewal = (m: CertificateManager): Promise<[string, WorkloadCertificate]> =>
    within(once(m, "renewed") as Promise<[string, WorkloadCertificate]>, "renewed");

  it("asks the CA once for concurrent gets and serves later gets from the cache", async () => {
    const { manager, signer } = setup();
    const got = await Promise.all([1, 2, 3, 4, 5].map(() => manager.get(WEB)));
    assert.equal(signer.calls.length, 1);
    assert.ok(got.every((c) => c === got[0]));
    assert.equal(signer.calls[0]?.identity, WEB);
    assert.equal(signer.calls[0]?.lifetimeSeconds, HOUR_S);

    const cert = got[0]!;
    assert.equal(cert.identity, WEB);
    assert.equal(cert.rootsPem, ca.certPem);
    assert.equal(cert.certChainPem.match(/BEGIN CERTIFICATE/g)?.length, 1, "leaf only, root left out");
    const leaf = new X509Certificate(cert.certChainPem);
    assert.ok(leaf.publicKey.export({ type: "spki", format: "der" }).equals(spkiOf(cert.keyPem)));
    assert.equal(cert.serial, leaf.serialNumber.toUpperCase());
    assert.equal(cert.notBefore.getTime(), START);
    assert.equal(cert.notAfter.getTime(), START + HOUR_S * 1000);

    mock.timers.tick(60_000);
    assert.equal(await manager.get(WEB), cert);
    assert.equal(signer.calls.length, 1);
  });

  it("renews at half life in the background, serving the old certificate until the new one arrives", async () => {
    const manual = manualResponder();
    const { manager, signer, fetches } = setup((req) => signCorrectly(ca, req));
    const first = await manager.get(WEB);
    signer.respond = manual.respond;

    mock.timers.tick((HOUR_S / 2) * 1000 - 1);
    assert.deepEqual(fetches, [[WEB, "initial"]], "not renewed before half life");
    mock.timers.tick(1);
    assert.deepEqual(fetches.at(-1), [WEB, "renewal"]);
    await signer.calledTimes(2);

    assert.equal(await manager.get(WEB), first, "the old certificate serves while the renewal is out");
    assert.equal(manager.dump()[0]?.state, "Available");
    assert.equal(signer.calls.length, 2, "a get does not start a second request");

    const renewed = nextRenewal(manager);
    manual.release((req) => signCorrectly(ca, req));
    const [identity, second] = await renewed;
    assert.equal(identity, WEB);
    assert.notEqual(second.serial, first.serial);
    assert.notEqual(second.keyPem, first.keyPem, "a new key with every certificate");
    assert.equal(await manager.get(WEB), second);

    // The next renewal is scheduled from the new certificate.
    signer.respond = (req) => signCorrectly(ca, req);
    mock.timers.tick((HOUR_S / 2) * 1000 - 1);
    assert.equal(fetches.length, 2);
    mock.timers.tick(1);
    assert.deepEqual(fetches.at(-1), [WEB, "renewal"]);
    await nextRenewal(manager);
  });

  it("retries a failed renewal with jittered, capped exponential backoff, then starts over", async () => {
    const { manager, signer, fetches } = setup(undefined, { backoff: { initialMs: 1000, maxMs: 4000 } });
    const first = await manager.get(WEB);
    signer.respond = refused("CA restarting", grpc.status.UNAVAILABLE);

    let failed = nextFailure(manager);
    mock.timers.tick((HOUR_S / 2) * 1000);
    for (const [lo, hi] of [
      [500, 1000],
      [1000, 2000],
      [2000, 4000],
      [2000, 4000],
    ] as const) {
      const [identity, error, retryInMs] = await failed;
      assert.equal(identity, WEB);
      assert.ok(error instanceof CertificateRequestError);
      assert.equal(error.code, grpc.status.UNAVAILABLE);
      assert.ok(
        retryInMs !== undefined && retryInMs >= lo && retryInMs <= hi,
        `${retryInMs} in [${lo}, ${hi}]`,
      );
      assert.equal(await manager.get(WEB), first, "the current certificate keeps serving");
      const before = fetches.length;
      failed = nextFailure(manager);
      mock.timers.tick(retryInMs - 1);
      assert.equal(fetches.length, before, "no retry before the backoff");
      mock.timers.tick(1);
      assert.deepEqual(fetches.at(-1), [WEB, "retry"]);
    }
    // The fifth attempt fails too; then the CA recovers.
    const [, , retryInMs] = await failed;
    assert.ok(retryInMs !== undefined);
    signer.respond = (req) => signCorrectly(ca, req);
    const renewed = nextRenewal(manager);
    mock.timers.tick(retryInMs);
    const [, second] = await renewed;
    assert.notEqual(second.serial, first.serial);

    // Backoff starts over after a success.
    signer.respond = refused("again", grpc.status.UNAVAILABLE);
    failed = nextFailure(manager);
    mock.timers.tick((HOUR_S / 2) * 1000);
    const [, , again] = await failed;
    assert.ok(again !== undefined && again >= 500 && again <= 1000, `${again} in [500, 1000]`);
  });

  it("rejects get with the CA's typed error when there is no certificate, and asks again on the next get", async () => {
    const reason = "no running pod with service account apps/web on the nodes master-dpu serves";
    const { manager, signer, fetches } = setup(refused(reason));
    const failed = nextFailure(manager);
    await assert.rejects(manager.get(WEB), (e: unknown) => {
      assert.ok(e instanceof CertificateRequestError);
      assert.equal(e.identity, WEB);
      assert.equal(e.code, grpc.status.PERMISSION_DENIED);
      assert.equal(e.reason, reason);
      return true;
    });
    assert.equal((await failed)[2], undefined, "no background retry without a certificate");
    const dumped = manager.dump();
    assert.equal(dumped[0]?.state, "Unavailable");
    assert.match(dumped[0]?.error ?? "", /PERMISSION_DENIED: no running pod/);

    mock.timers.tick(24 * HOUR_S * 1000);
    assert.equal(fetches.length, 1, "nothing asked in the background");

    signer.respond = async () => {
      throw new Error("socket hang up");
    };
    await assert.rejects(manager.get(WEB), (e: unknown) => {
      assert.ok(e instanceof CertificateRequestError, "any signer failure becomes the typed error");
      assert.equal(e.code, grpc.status.UNKNOWN);
      assert.equal(e.reason, "socket hang up");
      return true;
    });

    signer.respond = (req) => signCorrectly(ca, req);
    const cert = await manager.get(WEB);
    assert.equal(cert.identity, WEB);
    assert.equal(signer.calls.length, 3);
    assert.equal(manager.dump()[0]?.state, "Available");
  });

  it("does not serve an expired certificate while renewal keeps failing", async () => {
    const { manager, signer, fetches } = setup(undefined, { backoff: { initialMs: 1000, maxMs: 1000 } });
    const first = await manager.get(WEB);
    signer.respond = refused("CA down", grpc.status.UNAVAILABLE);
    let failed = nextFailure(manager);
    mock.timers.tick((HOUR_S / 2) * 1000);
    await failed;
    // Past expiry: the pending retry fires, fails, and schedules the next.
    failed = nextFailure(manager);
    mock.timers.tick(first.notAfter.getTime() - Date.now());
    await failed;
    assert.equal(manager.dump()[0]?.state, "Unavailable");

    await assert.rejects(manager.get(WEB), CertificateRequestError);
    assert.deepEqual(fetches.at(-1), [WEB, "expired"], "a get asks at once instead of serving it");
    signer.respond = (req) => signCorrectly(ca, req);
    const second = await manager.get(WEB);
    assert.notEqual(second.serial, first.serial);
  });

  it("refuses identities outside the trust domain without asking the CA", async () => {
    const { manager, signer } = setup();
    for (const identity of [
      "spiffe://other.example/ns/apps/sa/web",
      "spiffe://cluster.local/ns/apps",
      "web.apps.svc.cluster.local",
    ]) {
      await assert.rejects(manager.get(identity), (e: unknown) => {
        assert.ok(e instanceof CertificateIdentityError);
        assert.equal(e.identity, identity);
        return true;
      });
    }
    assert.equal(signer.calls.length, 0);
    assert.deepEqual(manager.dump(), []);
  });

  it("refuses unusable CA answers and caches none of them", async () => {
    const otherCa = await makeCa("O=someone-else");
    const otherKey = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
    const csrKey = (req: CertificateSigningRequest): X509.PublicKey =>
      new x509.Pkcs10CertificateRequest(req.csrPem).publicKey;
    const cases: Array<[string, Responder, RegExp]> = [
      ["an empty chain", async () => [], /chain is empty/],
      ["no certificate at all", async () => ["not a certificate", ca.certPem], /no PEM CERTIFICATE/],
      [
        "a leaf for another identity",
        async (req) => [
          await issueLeaf(ca, { publicKey: csrKey(req), sans: [{ type: "url", value: DB }] }),
          ca.certPem,
        ],
        /names spiffe:\/\/cluster.local\/ns\/apps\/sa\/db, not exactly/,
      ],
      [
        "a leaf with a second URI",
        async (req) => [
          await issueLeaf(ca, {
            publicKey: csrKey(req),
            sans: [
              { type: "url", value: req.identity },
              { type: "url", value: DB },
            ],
          }),
          ca.certPem,
        ],
        /not exactly/,
      ],
      [
        "a leaf for another key",
        async (req) => [
          await issueLeaf(ca, {
            publicKey: otherKey.publicKey,
            sans: [{ type: "url", value: req.identity }],
          }),
          ca.certPem,
        ],
        /another key/,
      ],
      [
        "an expired leaf",
        async (req) => [
          await issueLeaf(ca, {
            publicKey: csrKey(req),
            sans: [{ type: "url", value: req.identity }],
            notBefore: new Date(START - 7200_000),
            notAfter: new Date(START - 1000),
          }),
          ca.certPem,
        ],
        /expired at/,
      ],
      [
        "a leaf from an untrusted CA, root included",
        (req) => signCorrectly(otherCa, req),
        /does not lead to a trusted root/,
      ],
    ];
    const { manager, signer } = setup();
    for (const [label, respond, reason] of cases) {
      signer.respond = respond;
      await assert.rejects(
        manager.get(WEB),
        (e: unknown) => {
          assert.ok(e instanceof CertificateResponseError, `${label}: ${String(e)}`);
          assert.equal(e.identity, WEB);
          assert.match(e.reason, reason, label);
          return true;
        },
        label,
      );
      assert.equal(manager.dump()[0]?.state, "Unavailable", label);
    }
    assert.equal(signer.calls.length, cases.length, "every get asked again: nothing was cached");
  });

  it("accepts a chain through an intermediate and keeps the intermediate in the served chain", async () => {
    const intermediate = await makeCa("O=intermediate", ca);
    const { manager } = setup(async (req) => {
      const [leaf] = await signCorrectly(intermediate, req);
      return [leaf!, intermediate.certPem, ca.certPem];
    });
    const cert = await manager.get(WEB);
    const pems = cert.certChainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
    assert.equal(pems?.length, 2);
    assert.equal(new X509Certificate(pems![1]!).subject, "O=intermediate");
    assert.equal(manager.dump()[0]?.certChain.length, 2);

    // Without the intermediate the leaf does not chain to the root.
    const { manager: other } = setup(async (req) => [
      (await signCorrectly(intermediate, req))[0]!,
      ca.certPem,
    ]);
    await assert.rejects(other.get(WEB), /does not lead to a trusted root/);
  });

  it("forget stops an identity's renewal; close stops all and refuses further gets", async () => {
    const { manager, signer, fetches } = setup();
    await manager.get(WEB);
    await manager.get(DB);
    assert.equal(manager.forget(WEB), true);
    assert.equal(manager.forget(WEB), false);
    assert.deepEqual(manager.identities(), [DB]);

    const renewed = nextRenewal(manager);
    mock.timers.tick((HOUR_S / 2) * 1000);
    assert.deepEqual(fetches.slice(2), [[DB, "renewal"]], "only the identity still held is renewed");
    await renewed;

    // Forgotten while its request is out: the waiting caller still gets it, nothing is kept.
    const manual = manualResponder();
    signer.respond = manual.respond;
    const pending = manager.get(WEB);
    await signer.calledTimes(4);
    manager.forget(WEB);
    manual.release((req) => signCorrectly(ca, req));
    assert.equal((await pending).identity, WEB);
    assert.deepEqual(manager.identities(), [DB]);

    manager.close();
    const count = fetches.length;
    mock.timers.tick(10 * HOUR_S * 1000);
    assert.equal(fetches.length, count, "no timer survives close");
    await assert.rejects(manager.get(DB), CertificateManagerClosedError);
  });

  it("dumps Pending, Available and Unavailable in upstream's shape", async () => {
    const manual = manualResponder();
    const { manager, signer } = setup(manual.respond);
    const pending = manager.get(WEB);
    await signer.calledTimes(1);
    assert.deepEqual(manager.dump(), [{ identity: WEB, state: "Pending", certChain: [], rootCerts: [] }]);
    manual.release((req) => signCorrectly(ca, req));
    const cert = await pending;

    signer.respond = refused("denied");
    await assert.rejects(manager.get(DB));
    const [db, web] = manager.dump();
    assert.equal(db?.identity, DB, "sorted by identity");
    assert.equal(db?.state, "Unavailable");
    assert.deepEqual(db?.certChain, []);

    assert.equal(web?.state, "Available");
    const leaf = web?.certChain[0];
    assert.ok(leaf);
    assert.equal(Buffer.from(leaf.pem, "base64").toString("utf8"), cert.certChainPem);
    assert.equal(leaf.serialNumber, BigInt(`0x${cert.serial}`).toString(10));
    assert.equal(leaf.validFrom, "2030-01-01T00:00:00Z");
    assert.equal(leaf.expirationTime, "2030-01-01T01:00:00Z");
    assert.equal(web?.rootCerts.length, 1);
    assert.equal(Buffer.from(web?.rootCerts[0]?.pem ?? "", "base64").toString("utf8"), ca.certPem);
  });

  it("refuses a configuration it cannot work with", () => {
    const signer = new FakeSigner(async () => []);
    assert.throws(
      () => new CertificateManager({ signer: signer.sign, trustDomain: TD, roots: "no pem here" }),
      /roots holds no PEM CERTIFICATE block/,
    );
    assert.throws(
      () =>
        new CertificateManager({
          signer: signer.sign,
          trustDomain: TD,
          roots: ca.certPem,
          lifetimeSeconds: 0,
        }),
      RangeError,
    );
    assert.throws(
      () => new CertificateManager({ signer: signer.sign, trustDomain: "Bad Domain", roots: ca.certPem }),
      RangeError,
    );
  });
});
