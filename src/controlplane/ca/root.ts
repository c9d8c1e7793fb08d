// The mesh's certificate authority: one self-signed ECDSA P-256 root, kept in the control plane's
// state directory, that signs workload leaves (for node proxies, after authorization) and the
// control plane's own serving certificate.
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPair,
  randomBytes,
  X509Certificate as NodeX509,
} from "node:crypto";
import type { KeyObject, webcrypto } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import type * as X509 from "@peculiar/x509";
import { x509 } from "../../identity/x509.js";
import { createStateFile, errorText } from "../state-file.js";
import { isSpiffeError, parseSpiffeId, trustDomainProblem } from "../../identity/spiffe.js";

// Re-exported so that callers and tests use the one module that loads the library correctly.
export { x509 };

export const ROOT_CERT_FILE = "root-cert.pem";
export const ROOT_KEY_FILE = "root-key.pem";
export const ROOT_VALIDITY_YEARS = 10;
export const ROOT_SUBJECT = "O=offmesh";
/** Upstream's default leaf lifetime, used when a request asks for none (≤ 0). */
export const DEFAULT_LEAF_TTL_SECONDS = 24 * 60 * 60;
export const MAX_LEAF_TTL_SECONDS = 90 * 24 * 60 * 60;
/** notBefore is set this far in the past so that a peer whose clock lags still accepts the cert. */
export const CLOCK_SKEW_SECONDS = 2 * 60;

const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;
const SAN_OID = "2.5.29.17";

/** The root's files are missing half of a pair, unreadable, corrupt or inconsistent. */
export class RootStoreError extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
    override readonly cause?: unknown,
  ) {
    super(`${file}: ${reason}`);
    this.name = "RootStoreError";
  }
}

export type CsrRejectionCode =
  | "malformed" // not one PEM certificate request
  | "signature-algorithm" // not ECDSA with SHA-256
  | "signature" // does not verify with its own key
  | "key-type" // not an EC P-256 key
  | "san" // not exactly one URI SAN
  | "identity"; // the URI SAN is not the authorized identity, or the identity is not ours

/** A CSR the CA will not sign, with the reason for the caller. */
export class CsrRejectedError extends Error {
  constructor(
    readonly code: CsrRejectionCode,
    readonly reason: string,
  ) {
    super(`certificate request rejected: ${reason}`);
    this.name = "CsrRejectedError";
  }
}

export interface RootOptions {
  readonly trustDomain: string;
  /** The clock; issuance and validity checks read it on every call. */
  readonly now?: () => Date;
}

export interface ServingCertRequest {
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly ttlSeconds: number;
}

export interface IssuedKeyPair {
  readonly certPem: string;
  /** PKCS#8. */
  readonly keyPem: string;
}

/** The lifetime of a workload leaf for a requested `validity_duration`, as upstream's CA grants it. */
export function leafTtlSeconds(requested: number): number {
  if (!Number.isFinite(requested) || requested <= 0) return DEFAULT_LEAF_TTL_SECONDS;
  return Math.min(Math.floor(requested), MAX_LEAF_TTL_SECONDS);
}

export class RootCa {
  readonly certPem: string;
  readonly notAfter: Date;
  private authorityKeyId: Promise<X509.AuthorityKeyIdentifierExtension> | undefined;

  /** Use `loadOrCreateRoot`. */
  constructor(
    readonly trustDomain: string,
    readonly certificate: X509.X509Certificate,
    private readonly signingKey: webcrypto.CryptoKey,
    /** True when this start created the root (first start), false when it was reloaded. */
    readonly created: boolean,
    private readonly now: () => Date,
  ) {
    this.certPem = certificate.toString("pem") + "\n";
    this.notAfter = certificate.notAfter;
  }

  /** The leaf chain a `CreateCertificate` answer carries: leaf, then the root bundle last. */
  certChain(leafPem: string): string[] {
    return [leafPem, this.certPem];
  }

  /**
   * Sign a workload's CSR for `identity`, which the caller has already authorized. The CSR must prove
   * possession of an EC P-256 key and ask for exactly `identity`; everything else in it (subject,
   * other extensions) is ignored, since the CA decides what a leaf may do.
   */
  async signWorkload(csrPem: string, identity: string, ttlSeconds: number): Promise<string> {
    const parsed = parseSpiffeId(identity);
    if (isSpiffeError(parsed)) {
      throw new CsrRejectedError("identity", `identity is not a SPIFFE ID: ${parsed.error}`);
    }
    if (parsed.trustDomain !== this.trustDomain) {
      throw new CsrRejectedError(
        "identity",
        `trust domain ${parsed.trustDomain} of ${identity} is not this CA's (${this.trustDomain})`,
      );
    }
    const csr = await checkCsr(csrPem, identity);
    const leaf = await this.issue({
      subject: "",
      publicKey: csr.publicKey.rawData,
      ttlSeconds: leafTtlSeconds(ttlSeconds),
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
          true,
        ),
        new x509.ExtendedKeyUsageExtension(
          [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
          false,
        ),
        // RFC 5280 §4.2.1.6: with an empty subject the SAN is the identity and must be critical.
        new x509.SubjectAlternativeNameExtension([{ type: "url", value: identity }], true),
      ],
    });
    return leaf.toString("pem") + "\n";
  }

  /** A fresh key and a serverAuth certificate for the control plane's own TLS listeners. */
  async issueServingCert(req: ServingCertRequest): Promise<IssuedKeyPair> {
    const names = [
      ...req.dnsNames.map((value) => {
        if (!/^[a-z0-9*]([-a-z0-9.]*[a-z0-9])?$/i.test(value)) {
          throw new RangeError(`serving certificate: "${value}" is not a DNS name`);
        }
        return { type: "dns" as const, value };
      }),
      ...req.ipAddresses.map((value) => {
        if (isIP(value) === 0) throw new RangeError(`serving certificate: "${value}" is not an IP address`);
        return { type: "ip" as const, value };
      }),
    ];
    if (names.length === 0) {
      throw new RangeError("serving certificate: give at least one DNS name or IP address");
    }
    if (!Number.isInteger(req.ttlSeconds) || req.ttlSeconds <= 0) {
      throw new RangeError(
        `serving certificate: ttlSeconds must be a positive integer, got ${req.ttlSeconds}`,
      );
    }
    const { publicKey, privateKey } = await generateP256();
    const cert = await this.issue({
      // Not the root's subject: verifiers take subject == issuer for a self-signed certificate.
      subject: `CN=${names[0]!.value}, ${ROOT_SUBJECT}`,
      publicKey: publicKey.export({ type: "spki", format: "der" }),
      ttlSeconds: req.ttlSeconds,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension(names, false),
      ],
    });
    return {
      certPem: cert.toString("pem") + "\n",
      keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    };
  }

  private async issue(p: {
    subject: string;
    publicKey: ArrayBuffer | Buffer;
    ttlSeconds: number;
    extensions: X509.Extension[];
  }): Promise<X509.X509Certificate> {
    const now = this.now();
    if (now.getTime() >= this.notAfter.getTime()) {
      throw new Error(`the root CA expired at ${this.notAfter.toISOString()}; rotate it before issuing`);
    }
    // A leaf never outlives its root: verifiers would reject it from then on anyway.
    const notAfter = new Date(Math.min(now.getTime() + p.ttlSeconds * 1000, this.notAfter.getTime()));
    this.authorityKeyId ??= x509.AuthorityKeyIdentifierExtension.create(this.certificate.publicKey, false);
    const aki = await this.authorityKeyId;
    return x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: p.subject,
      issuer: this.certificate.subjectName,
      notBefore: new Date(now.getTime() - CLOCK_SKEW_SECONDS * 1000),
      notAfter,
      publicKey: toArrayBuffer(p.publicKey),
      signingKey: this.signingKey,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [...p.extensions, aki],
    });
  }
}

/**
 * The CA's root: loaded from `dir/root-cert.pem` + `dir/root-key.pem`, or created there on first
 * start. A half-present, unreadable or inconsistent pair is a RootStoreError naming the file: the
 * root is never replaced behind the operator's back, since every issued certificate chains to it.
 */
export async function loadOrCreateRoot(dir: string, opts: RootOptions): Promise<RootCa> {
  const tdProblem = trustDomainProblem(opts.trustDomain);
  if (tdProblem) throw new RangeError(`CA: ${tdProblem}`);
  const now = opts.now ?? ((): Date => new Date());
  const certPath = join(dir, ROOT_CERT_FILE);
  const keyPath = join(dir, ROOT_KEY_FILE);
  const [certText, keyText] = await Promise.all([readIfPresent(certPath), readIfPresent(keyPath)]);
  if (certText === undefined && keyText === undefined) {
    const created = await createRootFiles(opts.trustDomain, now());
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // Key first: a crash in between leaves a key without a certificate, which is reported, rather
    // than a certificate whose key is lost.
    await createStateFile(
      keyPath,
      created.keyPem,
      0o600,
      (why, cause) => new RootStoreError(keyPath, why, cause),
    );
    await createStateFile(
      certPath,
      created.certPem,
      0o600,
      (why, cause) => new RootStoreError(certPath, why, cause),
    );
    return rootFromPem(created.certPem, created.keyPem, certPath, keyPath, opts.trustDomain, now, true);
  }
  if (certText === undefined) {
    throw new RootStoreError(
      certPath,
      `is missing but ${keyPath} exists; restore the pair (or remove both to create a new root)`,
    );
  }
  if (keyText === undefined) {
    throw new RootStoreError(
      keyPath,
      `is missing but ${certPath} exists; restore the pair (or remove both to create a new root)`,
    );
  }
  return rootFromPem(certText, keyText, certPath, keyPath, opts.trustDomain, now, false);
}

async function createRootFiles(trustDomain: string, now: Date): Promise<{ certPem: string; keyPem: string }> {
  const { publicKey, privateKey } = await generateP256();
  const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const keys = {
    publicKey: await crypto.subtle.importKey(
      "spki",
      publicKey.export({ type: "spki", format: "der" }),
      EC_P256,
      true,
      ["verify"],
    ),
    privateKey: await importSigningKey(keyPem),
  };
  const notAfter = new Date(now);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + ROOT_VALIDITY_YEARS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: ROOT_SUBJECT,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_SECONDS * 1000),
    notAfter,
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false),
      // SPIFFE X.509-SVID §3: a signing certificate may carry its trust domain's ID. It also records
      // which trust domain the root was made for, so a reload under another one is caught.
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: `spiffe://${trustDomain}` }], false),
    ],
  });
  return { certPem: cert.toString("pem") + "\n", keyPem };
}

async function rootFromPem(
  certText: string,
  keyText: string,
  certPath: string,
  keyPath: string,
  trustDomain: string,
  now: () => Date,
  created: boolean,
): Promise<RootCa> {
  const certBlock = onePemBlock(certText, "CERTIFICATE");
  if (typeof certBlock === "string") throw new RootStoreError(certPath, certBlock);
  let cert: X509.X509Certificate;
  let nodeCert: NodeX509;
  try {
    cert = new x509.X509Certificate(certBlock.der);
    nodeCert = new NodeX509(certBlock.der);
  } catch (e) {
    throw new RootStoreError(certPath, `is not a valid X.509 certificate: ${errorText(e)}`, e);
  }
  const problem = rootCertProblem(cert, nodeCert, trustDomain, now());
  if (problem) throw new RootStoreError(certPath, problem);

  const keyBlock = onePemBlock(keyText, "PRIVATE KEY");
  if (typeof keyBlock === "string") throw new RootStoreError(keyPath, keyBlock);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: keyText, format: "pem" });
  } catch (e) {
    throw new RootStoreError(keyPath, `is not a valid PKCS#8 private key: ${errorText(e)}`, e);
  }
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new RootStoreError(keyPath, `holds a ${describeKey(key)} key; the root key must be EC P-256`);
  }
  const keySpki = createPublicKey(key).export({ type: "spki", format: "der" });
  if (!keySpki.equals(Buffer.from(cert.publicKey.rawData))) {
    throw new RootStoreError(keyPath, `is not the private key of ${certPath}; the pair does not match`);
  }
  return new RootCa(trustDomain, cert, await importSigningKey(keyText), created, now);
}

/** What makes `cert` unusable as this mesh's root, or undefined. */
function rootCertProblem(
  cert: X509.X509Certificate,
  nodeCert: NodeX509,
  trustDomain: string,
  now: Date,
): string | undefined {
  const key = nodeCert.publicKey;
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    return `holds a ${describeKey(key)} key; the root must be EC P-256`;
  }
  if (!nodeCert.ca) return "is not a CA certificate (basicConstraints CA is not true)";
  const usage = cert.getExtension(x509.KeyUsagesExtension);
  if (!usage || (usage.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
    return "may not sign certificates (no keyCertSign)";
  }
  if (nodeCert.subject !== nodeCert.issuer || !nodeCert.verify(key)) return "is not self-signed";
  if (now.getTime() > cert.notAfter.getTime()) {
    return `expired at ${cert.notAfter.toISOString()}; rotate the root (remove both files to create a new one)`;
  }
  const uris = (cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? [])
    .filter((n) => n.type === "url")
    .map((n) => n.value);
  const expected = `spiffe://${trustDomain}`;
  if (!uris.includes(expected)) {
    const made = uris.find((u) => u.startsWith("spiffe://"));
    return made
      ? `was created for trust domain ${made.slice("spiffe://".length)}, but this mesh's is ${trustDomain}`
      : `names no trust domain (expected a URI SAN ${expected})`;
  }
  return undefined;
}

/** The CSR, if it is one ECDSA-SHA256, P-256 request, signed by its key, for exactly `identity`. */
async function checkCsr(csrPem: string, identity: string): Promise<X509.Pkcs10CertificateRequest> {
  try {
    return await inspectCsr(csrPem, identity);
  } catch (e) {
    // The library parses lazily, so odd DER can surface from any getter: it is still the CSR's fault.
    if (e instanceof CsrRejectedError) throw e;
    throw new CsrRejectedError("malformed", `the CSR cannot be read: ${errorText(e)}`);
  }
}

async function inspectCsr(csrPem: string, identity: string): Promise<X509.Pkcs10CertificateRequest> {
  const block = onePemBlock(csrPem, "CERTIFICATE REQUEST");
  if (typeof block === "string") throw new CsrRejectedError("malformed", `the CSR ${block}`);
  let csr: X509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(block.der);
  } catch (e) {
    throw new CsrRejectedError("malformed", `the CSR is not a valid PKCS#10 request: ${errorText(e)}`);
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: "der", type: "spki" });
  } catch (e) {
    throw new CsrRejectedError("key-type", `the CSR's public key is not usable: ${errorText(e)}`);
  }
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new CsrRejectedError(
      "key-type",
      `the CSR's key is ${describeKey(key)}; only EC P-256 keys are signed`,
    );
  }
  const alg = csr.signatureAlgorithm as { name?: string; hash?: { name?: string } };
  if (alg.name !== "ECDSA" || alg.hash?.name !== "SHA-256") {
    throw new CsrRejectedError(
      "signature-algorithm",
      `the CSR is signed with ${alg.name ?? "an unknown algorithm"}${alg.hash?.name ? `/${alg.hash.name}` : ""}; only ECDSA with SHA-256 is accepted`,
    );
  }
  // A signature too malformed to check is as bad as one that does not verify.
  const verified = await csr.verify().catch(() => false);
  if (!verified)
    throw new CsrRejectedError("signature", "the CSR's signature does not verify with its own key");

  const sans = csr.extensions.filter((e) => e.type === SAN_OID);
  if (sans.length !== 1) {
    throw new CsrRejectedError(
      "san",
      `the CSR must carry one subjectAltName extension, it carries ${sans.length}`,
    );
  }
  let names: readonly X509.GeneralName[];
  try {
    names = new x509.SubjectAlternativeNameExtension(sans[0]!.rawData).names.items;
  } catch (e) {
    throw new CsrRejectedError("san", `the CSR's subjectAltName cannot be read: ${errorText(e)}`);
  }
  const listed = names.map((n) => `${n.type === "url" ? "URI" : n.type.toUpperCase()}:${n.value}`).join(", ");
  const only = names[0];
  if (names.length !== 1 || !only || only.type !== "url") {
    throw new CsrRejectedError(
      "san",
      `the CSR must ask for exactly one URI SAN, it asks for ${listed || "none"}`,
    );
  }
  if (only.value !== identity) {
    throw new CsrRejectedError(
      "identity",
      `the CSR asks for ${only.value}, but the authorized identity is ${identity}`,
    );
  }
  return csr;
}

/** The DER of the one PEM block labelled `label` in `text`, or why there is not exactly one. */
function onePemBlock(text: string, label: string): { der: Buffer } | string {
  const blocks = [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g)];
  const outside = text.replace(/-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g, "").trim();
  if (blocks.length !== 1 || outside !== "") {
    return `must hold exactly one PEM block "${label}", found ${blocks.length} block(s)${outside ? " and other text" : ""}`;
  }
  const [, found, body] = blocks[0]!;
  if (found !== label) return `must hold a PEM block "${label}", found "${found}"`;
  const b64 = (body ?? "").replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0 || b64.length === 0) {
    return `has a PEM block "${label}" whose body is not base64`;
  }
  return { der: Buffer.from(b64, "base64") };
}

function generateP256(): Promise<{ publicKey: KeyObject; privateKey: KeyObject }> {
  return new Promise((resolve, reject) =>
    generateKeyPair("ec", { namedCurve: "prime256v1" }, (err, publicKey, privateKey) =>
      err ? reject(err) : resolve({ publicKey, privateKey }),
    ),
  );
}

function importSigningKey(pkcs8Pem: string): Promise<webcrypto.CryptoKey> {
  const der = createPrivateKey(pkcs8Pem).export({ type: "pkcs8", format: "der" });
  return crypto.subtle.importKey("pkcs8", der, EC_P256, false, ["sign"]);
}

/** 128 random bits, top bit clear (DER INTEGERs are signed) and next bit set (no length shrink). */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString("hex");
}

function toArrayBuffer(b: ArrayBuffer | Buffer): ArrayBuffer {
  return b instanceof ArrayBuffer ? b : new Uint8Array(b).buffer;
}

function describeKey(key: KeyObject): string {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec") return `EC ${d?.namedCurve ?? "unknown curve"}`;
  if (key.asymmetricKeyType === "rsa") return `RSA ${d?.modulusLength ?? "?"}-bit`;
  return key.asymmetricKeyType ?? "unknown";
}

async function readIfPresent(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new RootStoreError(path, `cannot be read: ${errorText(e)}`, e);
  }
}
