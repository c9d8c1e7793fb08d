import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate } from "node:crypto";
import type { webcrypto } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, unlink, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, createServer } from "node:tls";
import type { AddressInfo } from "node:net";
import {
  CsrRejectedError,
  DEFAULT_LEAF_TTL_SECONDS,
  leafTtlSeconds,
  loadOrCreateRoot,
  MAX_LEAF_TTL_SECONDS,
  ROOT_CERT_FILE,
  ROOT_KEY_FILE,
  RootStoreError,
  x509,
} from "../../src/controlplane/ca/root.js";
import type { CsrRejectionCode, RootCa } from "../../src/controlplane/ca/root.js";

const TD = "cluster.local";
const IDENTITY = "spiffe://cluster.local/ns/bookinfo/sa/productpage";
const T0 = new Date("2026-03-01T12:00:00Z");
const DAY = 24 * 60 * 60 * 1000;

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "offmesh-ca-"));
  dirs.push(d);
  return d;
}
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

/** A root whose clock the test moves. */
async function rootAt(clock: { now: Date }, dir?: string): Promise<RootCa> {
  return loadOrCreateRoot(dir ?? (await tempDir()), { trustDomain: TD, now: () => clock.now });
}

type KeyKind = "P-256" | "P-384" | "RSA";
type San = { type: "url" | "dns" | "ip"; value: string };

async function keyPair(kind: KeyKind): Promise<webcrypto.CryptoKeyPair> {
  const alg =
    kind === "RSA"
      ? {
          name: "RSASSA-PKCS1-v1_5",
          modulusLength: 2048,
          publicExponent: new Uint8Array([1, 0, 1]),
          hash: "SHA-256",
        }
      : { name: "ECDSA", namedCurve: kind };
  return (await crypto.subtle.generateKey(alg, false, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
}

/** A PEM CSR as a node proxy would send it, with the variations the tests need. */
async function makeCsr(
  opts: { key?: KeyKind; sans?: readonly San[][]; hash?: "SHA-256" | "SHA-384" } = {},
): Promise<string> {
  const kind = opts.key ?? "P-256";
  const keys = await keyPair(kind);
  const signingAlgorithm =
    kind === "RSA" ? { name: "RSASSA-PKCS1-v1_5" } : { name: "ECDSA", hash: opts.hash ?? "SHA-256" };
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: "O=workload",
    keys,
    signingAlgorithm,
    extensions: (opts.sans ?? [[{ type: "url", value: IDENTITY }]]).map(
      (names) => new x509.SubjectAlternativeNameExtension(names),
    ),
  });
  return csr.toString("pem");
}

function rejects(code: CsrRejectionCode, reason: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof CsrRejectedError, `expected CsrRejectedError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.match(e.reason, reason);
    assert.equal(e.message, `certificate request rejected: ${e.reason}`);
    return true;
  };
}

function storeError(file: string, reason: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof RootStoreError, `expected RootStoreError, got ${String(e)}`);
    assert.equal(e.file, file);
    assert.match(e.message, reason);
    return true;
  };
}

describe("root CA: creation and persistence", () => {
  it("creates a P-256 self-signed root with CA constraints, 10-year validity and subject O=offmesh", async () => {
    const dir = join(await tempDir(), "ca");
    const root = await loadOrCreateRoot(dir, { trustDomain: TD, now: () => T0 });
    assert.equal(root.created, true);
    const cert = new X509Certificate(await readFile(join(dir, ROOT_CERT_FILE), "utf8"));
    assert.equal(cert.subject, "O=offmesh");
    assert.equal(cert.issuer, "O=offmesh");
    assert.ok(cert.ca);
    assert.ok(cert.verify(cert.publicKey), "self-signed");
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
    assert.equal(new Date(cert.validTo).toISOString(), "2036-03-01T12:00:00.000Z");
    assert.ok(new Date(cert.validFrom) < T0);
    const parsed = new x509.X509Certificate(cert.raw);
    const usage = parsed.getExtension(x509.KeyUsagesExtension);
    assert.equal(usage?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    assert.equal(usage?.critical, true);
    assert.equal(parsed.getExtension(x509.BasicConstraintsExtension)?.critical, true);
    assert.equal(cert.subjectAltName, "URI:spiffe://cluster.local");
    assert.equal(root.certPem, await readFile(join(dir, ROOT_CERT_FILE), "utf8"));
  });

  it("writes both files with mode 0600 and no temporary files left", async () => {
    const dir = await tempDir();
    await rootAt({ now: T0 }, dir);
    for (const f of [ROOT_CERT_FILE, ROOT_KEY_FILE]) {
      assert.equal((await stat(join(dir, f))).mode & 0o777, 0o600, f);
    }
    assert.deepEqual((await readdir(dir)).sort(), [ROOT_CERT_FILE, ROOT_KEY_FILE]);
    const key = createPrivateKey(await readFile(join(dir, ROOT_KEY_FILE), "utf8"));
    assert.equal(key.asymmetricKeyDetails?.namedCurve, "prime256v1");
  });

  it("reloads the same root on the next start", async () => {
    const dir = await tempDir();
    const first = await rootAt({ now: T0 }, dir);
    const keyBefore = await readFile(join(dir, ROOT_KEY_FILE), "utf8");
    const second = await rootAt({ now: new Date(T0.getTime() + 30 * DAY) }, dir);
    assert.equal(second.created, false);
    assert.equal(second.certPem, first.certPem);
    assert.equal(await readFile(join(dir, ROOT_KEY_FILE), "utf8"), keyBefore);
    // The reloaded root signs leaves that chain to the first one.
    const leaf = new X509Certificate(await second.signWorkload(await makeCsr(), IDENTITY, 3600));
    assert.ok(leaf.verify(new X509Certificate(first.certPem).publicKey));
  });

  it("refuses a corrupt certificate without replacing it", async () => {
    const dir = await tempDir();
    await rootAt({ now: T0 }, dir);
    const certPath = join(dir, ROOT_CERT_FILE);
    const cases: ReadonlyArray<[string, RegExp]> = [
      ["garbage\n", /root-cert\.pem: must hold exactly one PEM block "CERTIFICATE", found 0 block/],
      ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", /is not a valid X\.509 certificate/],
      ["-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", /whose body is not base64/],
      ["-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", /found "PRIVATE KEY"/],
    ];
    for (const [text, reason] of cases) {
      await writeFile(certPath, text);
      await assert.rejects(rootAt({ now: T0 }, dir), storeError(certPath, reason));
      assert.equal(await readFile(certPath, "utf8"), text, "left as it was");
    }
  });

  it("refuses a corrupt key", async () => {
    const dir = await tempDir();
    await rootAt({ now: T0 }, dir);
    const keyPath = join(dir, ROOT_KEY_FILE);
    await writeFile(keyPath, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    await assert.rejects(rootAt({ now: T0 }, dir), storeError(keyPath, /is not a valid PKCS#8 private key/));
    await writeFile(keyPath, "");
    await assert.rejects(
      rootAt({ now: T0 }, dir),
      storeError(keyPath, /must hold exactly one PEM block "PRIVATE KEY"/),
    );
  });

  it("refuses a root key that is not EC P-256", async () => {
    const dir = await tempDir();
    await rootAt({ now: T0 }, dir);
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
    await writeFile(join(dir, ROOT_KEY_FILE), rsa.export({ type: "pkcs8", format: "pem" }));
    await assert.rejects(
      rootAt({ now: T0 }, dir),
      storeError(join(dir, ROOT_KEY_FILE), /holds a RSA 2048-bit key; the root key must be EC P-256/),
    );
  });

  it("refuses a key that does not belong to the certificate", async () => {
    const [a, b] = [await tempDir(), await tempDir()];
    await rootAt({ now: T0 }, a);
    await rootAt({ now: T0 }, b);
    await writeFile(join(a, ROOT_KEY_FILE), await readFile(join(b, ROOT_KEY_FILE)));
    await assert.rejects(
      rootAt({ now: T0 }, a),
      storeError(
        join(a, ROOT_KEY_FILE),
        /is not the private key of .*root-cert\.pem; the pair does not match/,
      ),
    );
  });

  it("refuses half a pair, naming the missing file", async () => {
    const dir = await tempDir();
    await rootAt({ now: T0 }, dir);
    const certText = await readFile(join(dir, ROOT_CERT_FILE), "utf8");
    await unlink(join(dir, ROOT_KEY_FILE));
    await assert.rejects(
      rootAt({ now: T0 }, dir),
      storeError(join(dir, ROOT_KEY_FILE), /is missing but .* exists/),
    );
    assert.equal(await readFile(join(dir, ROOT_CERT_FILE), "utf8"), certText);

    const other = await tempDir();
    await rootAt({ now: T0 }, other);
    await unlink(join(other, ROOT_CERT_FILE));
    await assert.rejects(
      rootAt({ now: T0 }, other),
      storeError(join(other, ROOT_CERT_FILE), /is missing but/),
    );
  });

  it("refuses a certificate that is not a CA", async () => {
    const dir = await tempDir();
    const root = await rootAt({ now: T0 }, dir);
    const serving = await root.issueServingCert({ dnsNames: ["istiod"], ipAddresses: [], ttlSeconds: 3600 });
    await writeFile(join(dir, ROOT_CERT_FILE), serving.certPem);
    await writeFile(join(dir, ROOT_KEY_FILE), serving.keyPem);
    await assert.rejects(
      rootAt({ now: T0 }, dir),
      storeError(join(dir, ROOT_CERT_FILE), /is not a CA certificate/),
    );
  });

  it("refuses a root of another trust domain, and an expired root", async () => {
    const dir = await tempDir();
    await rootAt({ now: T0 }, dir);
    await assert.rejects(
      loadOrCreateRoot(dir, { trustDomain: "other.example", now: () => T0 }),
      storeError(
        join(dir, ROOT_CERT_FILE),
        /was created for trust domain cluster\.local, but this mesh's is other\.example/,
      ),
    );
    await assert.rejects(
      rootAt({ now: new Date("2036-03-02T00:00:00Z") }, dir),
      storeError(join(dir, ROOT_CERT_FILE), /expired at 2036-03-01T12:00:00\.000Z/),
    );
  });

  it("refuses an invalid trust domain before touching the directory", async () => {
    await assert.rejects(
      loadOrCreateRoot(await tempDir(), { trustDomain: "Cluster.Local" }),
      /CA: trust domain/,
    );
  });
});

describe("root CA: serving certificate", () => {
  it("issues a serverAuth certificate for the requested names that verifies against the root", async () => {
    const root = await rootAt({ now: T0 });
    const issued = await root.issueServingCert({
      dnsNames: ["offmesh-cp.istio-system.svc", "localhost"],
      ipAddresses: ["127.0.0.1", "::1"],
      ttlSeconds: 7 * 24 * 3600,
    });
    const cert = new X509Certificate(issued.certPem);
    const rootCert = new X509Certificate(root.certPem);
    assert.ok(cert.checkIssued(rootCert));
    assert.ok(cert.verify(rootCert.publicKey));
    assert.equal(cert.ca, false);
    assert.equal(cert.subject, "CN=offmesh-cp.istio-system.svc\nO=offmesh");
    assert.equal(cert.checkHost("offmesh-cp.istio-system.svc"), "offmesh-cp.istio-system.svc");
    assert.equal(cert.checkIP("127.0.0.1"), "127.0.0.1");
    assert.equal(cert.checkIP("::1"), "::1");
    assert.equal(cert.checkHost("elsewhere.example"), undefined);
    assert.deepEqual(cert.keyUsage, ["1.3.6.1.5.5.7.3.1"]);
    assert.equal(new Date(cert.validTo).getTime(), T0.getTime() + 7 * DAY);
    const keyPublic = createPublicKey(createPrivateKey(issued.keyPem)).export({
      type: "spki",
      format: "der",
    });
    assert.ok(keyPublic.equals(cert.publicKey.export({ type: "spki", format: "der" })));
  });

  it("serves TLS that a client trusting only the root accepts", async () => {
    const root = await loadOrCreateRoot(await tempDir(), { trustDomain: TD });
    const issued = await root.issueServingCert({
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"],
      ttlSeconds: 600,
    });
    const server = createServer({ cert: issued.certPem, key: issued.keyPem }, (s) => s.end("ok"));
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    try {
      const { port } = server.address() as AddressInfo;
      const socket = connect({ host: "127.0.0.1", port, servername: "localhost", ca: root.certPem });
      await once(socket, "secureConnect");
      assert.equal(socket.authorized, true);
      socket.destroy();
    } finally {
      server.close();
    }
  });

  it("refuses requests it cannot honour", async () => {
    const root = await rootAt({ now: T0 });
    await assert.rejects(
      root.issueServingCert({ dnsNames: [], ipAddresses: [], ttlSeconds: 60 }),
      /at least one/,
    );
    await assert.rejects(
      root.issueServingCert({ dnsNames: ["a"], ipAddresses: ["300.1.1.1"], ttlSeconds: 60 }),
      /"300\.1\.1\.1" is not an IP address/,
    );
    await assert.rejects(
      root.issueServingCert({ dnsNames: ["bad name"], ipAddresses: [], ttlSeconds: 60 }),
      /"bad name" is not a DNS name/,
    );
    await assert.rejects(
      root.issueServingCert({ dnsNames: ["a"], ipAddresses: [], ttlSeconds: 0 }),
      /ttlSeconds/,
    );
  });
});

describe("root CA: workload leaves", () => {
  it("signs a valid CSR: the leaf chains to the root and names exactly the identity", async (t) => {
    const clock = { now: T0 };
    const root = await rootAt(clock);
    const csr = await makeCsr();
    const started = performance.now();
    const leafPem = await root.signWorkload(csr, IDENTITY, 3600);
    t.diagnostic(`signing one leaf took ${(performance.now() - started).toFixed(2)} ms`);

    const leaf = new X509Certificate(leafPem);
    const rootCert = new X509Certificate(root.certPem);
    assert.ok(leaf.verify(rootCert.publicKey));
    assert.ok(leaf.checkIssued(rootCert));
    const chain = await new x509.X509ChainBuilder({
      certificates: [new x509.X509Certificate(root.certPem)],
    }).build(new x509.X509Certificate(leafPem));
    assert.equal(chain.length, 2);
    assert.equal(chain[1]?.toString("pem") + "\n", root.certPem);

    assert.equal(leaf.subjectAltName, `URI:${IDENTITY}`);
    assert.ok(!leaf.subject, "the subject is empty: the SAN is the identity");
    assert.equal(leaf.issuer, "O=offmesh");
    assert.equal(leaf.ca, false);
    assert.deepEqual([...(leaf.keyUsage ?? [])].sort(), ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    assert.ok(leaf.serialNumber.length >= 16, `serial ${leaf.serialNumber} has at least 64 bits`);

    const parsed = new x509.X509Certificate(leafPem);
    const usage = parsed.getExtension(x509.KeyUsagesExtension);
    assert.equal(usage?.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
    assert.equal(parsed.getExtension(x509.BasicConstraintsExtension)?.ca, false);
    assert.equal(parsed.getExtension(x509.SubjectAlternativeNameExtension)?.critical, true);
    // The leaf certifies the CSR's key.
    const csrKey = new x509.Pkcs10CertificateRequest(csr).publicKey.rawData;
    assert.ok(Buffer.from(csrKey).equals(leaf.publicKey.export({ type: "spki", format: "der" })));

    assert.ok(new Date(leaf.validFrom) < T0, "notBefore is back-dated for clock skew");
    assert.equal(new Date(leaf.validTo).getTime(), T0.getTime() + 3600_000);
    assert.deepEqual(root.certChain(leafPem), [leafPem, root.certPem]);
  });

  it("gives serial numbers that differ between leaves", async () => {
    const root = await rootAt({ now: T0 });
    const csr = await makeCsr();
    const a = new X509Certificate(await root.signWorkload(csr, IDENTITY, 60));
    const b = new X509Certificate(await root.signWorkload(csr, IDENTITY, 60));
    assert.notEqual(a.serialNumber, b.serialNumber);
  });

  it("applies upstream's lifetimes: 24 h by default, 90 days at most, never past the root", async () => {
    assert.equal(leafTtlSeconds(0), DEFAULT_LEAF_TTL_SECONDS);
    assert.equal(leafTtlSeconds(-5), DEFAULT_LEAF_TTL_SECONDS);
    assert.equal(leafTtlSeconds(Number.NaN), DEFAULT_LEAF_TTL_SECONDS);
    assert.equal(leafTtlSeconds(3600), 3600);
    assert.equal(leafTtlSeconds(365 * 86400), MAX_LEAF_TTL_SECONDS);

    const clock = { now: T0 };
    const root = await rootAt(clock);
    const csr = await makeCsr();
    const validTo = async (ttl: number): Promise<number> =>
      new Date(new X509Certificate(await root.signWorkload(csr, IDENTITY, ttl)).validTo).getTime();
    assert.equal(await validTo(0), T0.getTime() + DAY);
    assert.equal(await validTo(-1), T0.getTime() + DAY);
    assert.equal(await validTo(365 * 86400), T0.getTime() + 90 * DAY);

    clock.now = new Date("2036-02-01T12:00:00Z");
    assert.equal(await validTo(30 * 86400), root.notAfter.getTime());

    // A control plane still running when its root expires issues nothing.
    clock.now = new Date("2036-03-01T12:00:00Z");
    await assert.rejects(
      root.signWorkload(csr, IDENTITY, 60),
      /the root CA expired at 2036-03-01T12:00:00\.000Z/,
    );
  });

  const refusals: ReadonlyArray<[string, () => Promise<string>, CsrRejectionCode, RegExp]> = [
    [
      "an RSA key",
      () => makeCsr({ key: "RSA" }),
      "key-type",
      /the CSR's key is RSA 2048-bit; only EC P-256 keys/,
    ],
    [
      "a P-384 key",
      () => makeCsr({ key: "P-384" }),
      "key-type",
      /the CSR's key is EC secp384r1; only EC P-256/,
    ],
    [
      "a SHA-384 signature",
      () => makeCsr({ hash: "SHA-384" }),
      "signature-algorithm",
      /ECDSA\/SHA-384; only ECDSA with SHA-256/,
    ],
    [
      "two URI SANs",
      () =>
        makeCsr({
          sans: [
            [
              { type: "url", value: IDENTITY },
              { type: "url", value: "spiffe://cluster.local/ns/bookinfo/sa/reviews" },
            ],
          ],
        }),
      "san",
      /exactly one URI SAN, it asks for URI:spiffe:\/\/cluster\.local\/ns\/bookinfo\/sa\/productpage, URI:spiffe:\/\/cluster\.local\/ns\/bookinfo\/sa\/reviews/,
    ],
    [
      "a DNS SAN next to the URI",
      () =>
        makeCsr({
          sans: [
            [
              { type: "url", value: IDENTITY },
              { type: "dns", value: "productpage" },
            ],
          ],
        }),
      "san",
      /it asks for URI:.*, DNS:productpage/,
    ],
    [
      "only a DNS SAN",
      () => makeCsr({ sans: [[{ type: "dns", value: "productpage.bookinfo.svc" }]] }),
      "san",
      /exactly one URI SAN, it asks for DNS:productpage\.bookinfo\.svc/,
    ],
    [
      "an IP SAN",
      () => makeCsr({ sans: [[{ type: "ip", value: "10.0.0.1" }]] }),
      "san",
      /it asks for IP:10\.0\.0\.1/,
    ],
    ["no SAN", () => makeCsr({ sans: [] }), "san", /must carry one subjectAltName extension, it carries 0/],
    [
      "two SAN extensions",
      () => makeCsr({ sans: [[{ type: "url", value: IDENTITY }], [{ type: "url", value: IDENTITY }]] }),
      "san",
      /it carries 2/,
    ],
    [
      "a tampered signature",
      async () => tamper(await makeCsr()),
      "signature",
      /does not verify with its own key/,
    ],
    [
      "another identity than the authorized one",
      () => makeCsr({ sans: [[{ type: "url", value: "spiffe://cluster.local/ns/bookinfo/sa/reviews" }]] }),
      "identity",
      /asks for spiffe:\/\/cluster\.local\/ns\/bookinfo\/sa\/reviews, but the authorized identity is spiffe:\/\/cluster\.local\/ns\/bookinfo\/sa\/productpage/,
    ],
    [
      "text that is not a CSR",
      async () => "hello",
      "malformed",
      /exactly one PEM block "CERTIFICATE REQUEST", found 0/,
    ],
    [
      "two CSRs",
      async () => (await makeCsr()) + "\n" + (await makeCsr()),
      "malformed",
      /exactly one PEM block "CERTIFICATE REQUEST", found 2/,
    ],
    [
      "a CSR whose DER is garbage",
      async () => "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----",
      "malformed",
      /not a valid PKCS#10 request/,
    ],
  ];
  for (const [what, csr, code, reason] of refusals) {
    it(`refuses a CSR with ${what}`, async () => {
      const root = await sharedRoot();
      await assert.rejects(root.signWorkload(await csr(), IDENTITY, 3600), rejects(code, reason));
    });
  }

  it("refuses an identity that is not a SPIFFE ID of its trust domain", async () => {
    const root = await sharedRoot();
    const csr = await makeCsr({ sans: [[{ type: "url", value: "spiffe://other.example/ns/a/sa/b" }]] });
    await assert.rejects(
      root.signWorkload(csr, "spiffe://other.example/ns/a/sa/b", 3600),
      rejects("identity", /trust domain other\.example of .* is not this CA's \(cluster\.local\)/),
    );
    await assert.rejects(
      root.signWorkload(csr, "bookinfo/productpage", 3600),
      rejects("identity", /is not a SPIFFE ID/),
    );
  });
});

let shared: Promise<RootCa> | undefined;
function sharedRoot(): Promise<RootCa> {
  shared ??= tempDir().then((d) => loadOrCreateRoot(d, { trustDomain: TD, now: () => T0 }));
  return shared;
}

/** The CSR with one bit of its signature flipped. */
function tamper(pem: string): string {
  const der = Buffer.from(x509.PemConverter.decodeFirst(pem));
  der[der.length - 1]! ^= 0x01;
  return x509.PemConverter.encode(der, "CERTIFICATE REQUEST");
}
