// The ztunnel reads certificates with its own DER walker (src/identity/der.ts) instead of
// @peculiar/x509. These tests hold it to what the x509-based code answered, certificate by
// certificate: the old readers are kept here, verbatim in substance, as the reference.
import assert from "node:assert/strict";
import { generateKeyPairSync, sign, webcrypto, X509Certificate } from "node:crypto";
import { before, describe, it } from "node:test";
import type * as X509 from "@peculiar/x509";
import {
  bitString,
  boolean,
  contextTag,
  element,
  ia5,
  integer,
  octetString,
  oid,
  sequence,
  setOf,
  TAG,
} from "../../src/identity/der.js";
import { x509 } from "../../src/identity/x509.js";
import { certificateIdentity } from "../../src/ztunnel/hbone/tls.js";
import { parseCertificatePems, uriSubjectAltNames } from "../../src/ztunnel/identity/cert-parse.js";

const WEB = "spiffe://cluster.local/ns/apps/sa/web";
const DB = "spiffe://cluster.local/ns/apps/sa/db";
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;
const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
const SAN_OID = "2.5.29.17";

// ---------------------------------------------------------------------------------------------
// The x509-based readers this replaces (cert-parse.ts and hbone/tls.ts before the change).

function x509Parse(block: string): Record<string, unknown> {
  const node = new X509Certificate(block);
  const peculiar = new x509.X509Certificate(node.raw);
  const serialHex = peculiar.serialNumber.toUpperCase();
  return {
    pem: node.toString().trimEnd() + "\n",
    notBefore: peculiar.notBefore,
    notAfter: peculiar.notAfter,
    serialHex,
    serialDecimal: BigInt(`0x${serialHex || "0"}`).toString(10),
  };
}

function x509UriSans(der: Uint8Array): { uris: string[] } | { error: string } {
  let cert: X509.X509Certificate;
  try {
    cert = new x509.X509Certificate(der);
  } catch (e) {
    return { error: `the certificate cannot be read: ${(e as Error).message}` };
  }
  const sans = cert.extensions.filter((e) => e.type === SAN_OID);
  if (sans.length === 0) return { uris: [] };
  if (sans.length > 1) return { error: `the certificate has ${sans.length} subjectAltName extensions` };
  try {
    const names = new x509.SubjectAlternativeNameExtension(sans[0]!.rawData).names.items;
    return { uris: names.filter((n) => n.type === "url").map((n) => n.value) };
  } catch (e) {
    return { error: `the certificate's subjectAltName cannot be read: ${(e as Error).message}` };
  }
}

/** The x509-based reader answered an error, or threw (its `extensions` getter parses SANs eagerly). */
function x509Refuses(der: Uint8Array): boolean {
  try {
    return "error" in x509UriSans(der);
  } catch {
    return true;
  }
}

/** hbone/tls.ts certificateIdentity's reading of the SAN: the first SAN extension's URIs. */
function x509TlsUris(der: Uint8Array): string[] {
  const cert = new x509.X509Certificate(der);
  return (cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? [])
    .filter((n) => n.type === "url")
    .map((n) => n.value);
}

const newParse = (block: string): Record<string, unknown> => {
  const [only, ...more] = parseCertificatePems(block);
  assert.equal(more.length, 0);
  const { pem, notBefore, notAfter, serialHex, serialDecimal } = only!;
  return { pem, notBefore, notAfter, serialHex, serialDecimal };
};

// ---------------------------------------------------------------------------------------------
// Certificates: made by @peculiar/x509, and made by hand for what its generator will not write.

let caKeys: webcrypto.CryptoKeyPair;
let leafKeys: webcrypto.CryptoKeyPair;
const nodeKey = generateKeyPairSync("ec", { namedCurve: "P-256" });

before(async () => {
  caKeys = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
  leafKeys = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
});

type Name = { type: X509.GeneralNameType; value: string };

async function generated(
  opts: {
    serial?: string;
    sans?: Name[][];
    notBefore?: Date;
    notAfter?: Date;
    extensions?: boolean;
  } = {},
): Promise<{ pem: string; der: Uint8Array }> {
  const extensions: X509.Extension[] =
    opts.extensions === false
      ? []
      : [
          new x509.BasicConstraintsExtension(false, undefined, true),
          ...(opts.sans ?? [[{ type: "url", value: WEB }]]).map(
            (names) => new x509.SubjectAlternativeNameExtension(names, true),
          ),
        ];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: opts.serial ?? "1000",
    subject: "CN=leaf",
    issuer: "CN=test-ca",
    notBefore: opts.notBefore ?? new Date("2030-01-01T00:00:00Z"),
    notAfter: opts.notAfter ?? new Date("2030-01-02T00:00:00Z"),
    publicKey: leafKeys.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions,
  });
  return { pem: cert.toString("pem") + "\n", der: new Uint8Array(cert.rawData) };
}

const OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2";
const ascii = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, "latin1"));
const utcTime = (s: string): Uint8Array => element(TAG.UTC_TIME, ascii(s));
const generalizedTime = (s: string): Uint8Array => element(TAG.GENERALIZED_TIME, ascii(s));
const extension = (id: string, value: Uint8Array, critical = false): Uint8Array =>
  sequence(oid(id), ...(critical ? [boolean(true)] : []), octetString(value));
const uriName = (uri: string): Uint8Array => ia5(contextTag(6, false), uri);

/** A certificate written field by field and signed with node:crypto. */
function handMade(
  opts: {
    serial?: Uint8Array;
    notBefore?: Uint8Array;
    notAfter?: Uint8Array;
    extensions?: Uint8Array[];
  } = {},
): { pem: string; der: Uint8Array } {
  const tbs = sequence(
    element(contextTag(0, true), integer(2)),
    element(TAG.INTEGER, opts.serial ?? Uint8Array.of(0x01)),
    sequence(oid(OID_ECDSA_SHA256)),
    sequence(setOf(sequence(oid("2.5.4.3"), element(0x0c, ascii("hand-made-ca"))))),
    sequence(opts.notBefore ?? utcTime("300101000000Z"), opts.notAfter ?? utcTime("300102000000Z")),
    sequence(),
    nodeKey.publicKey.export({ type: "spki", format: "der" }),
    ...(opts.extensions ? [element(contextTag(3, true), sequence(...opts.extensions))] : []),
  );
  const signature = sign("sha256", tbs, { key: nodeKey.privateKey, dsaEncoding: "der" });
  const der = sequence(tbs, sequence(oid(OID_ECDSA_SHA256)), bitString(signature));
  const base64 = Buffer.from(der)
    .toString("base64")
    .match(/.{1,64}/g)!
    .join("\n");
  return { pem: `-----BEGIN CERTIFICATE-----\n${base64}\n-----END CERTIFICATE-----\n`, der };
}

// ---------------------------------------------------------------------------------------------

describe("certificate reading without @peculiar/x509", () => {
  it("reads validity and serial exactly as @peculiar/x509 did", async () => {
    const certs = [
      await generated(),
      // UTCTime around its 1950/2049 window, GeneralizedTime from 2050 on.
      await generated({
        notBefore: new Date("1950-01-01T00:00:00Z"),
        notAfter: new Date("2049-12-31T23:59:59Z"),
      }),
      await generated({
        notBefore: new Date("2049-12-31T23:59:59Z"),
        notAfter: new Date("2050-01-01T00:00:00Z"),
      }),
      await generated({ notAfter: new Date("9999-12-31T23:59:59Z") }),
      // Serials: single octets either side of the sign bit, a padded high bit, long random ones.
      ...(await Promise.all(
        [
          "01",
          "7f",
          "80",
          "ff",
          "00ff",
          "0080ab",
          "f1e2d3c4b5a697887766554433221100",
          "80" + "00".repeat(19),
        ].map((serial) => generated({ serial })),
      )),
      // What the generator never writes: GeneralizedTime before 2050, negative and zero serials.
      handMade({
        notBefore: generalizedTime("20300101000000Z"),
        notAfter: generalizedTime("20491231235959Z"),
      }),
      handMade({ notBefore: utcTime("700101000000Z"), notAfter: generalizedTime("21060207062815Z") }),
      handMade({ serial: Uint8Array.of(0xff, 0x01) }),
      handMade({ serial: Uint8Array.of(0x80) }),
      handMade({ serial: Uint8Array.of(0x00) }),
      handMade({ serial: Uint8Array.of(0x00, 0x80, 0x00) }),
    ];
    for (const { pem } of certs) assert.deepEqual(newParse(pem), x509Parse(pem), pem);

    // The values themselves, not only agreement.
    const high = newParse((await generated({ serial: "80" })).pem);
    assert.deepEqual([high.serialHex, high.serialDecimal], ["80", "128"]);
    const negative = newParse(handMade({ serial: Uint8Array.of(0xff, 0x01) }).pem);
    assert.deepEqual([negative.serialHex, negative.serialDecimal], ["FF01", "65281"]);
    const late = newParse((await generated({ notAfter: new Date("2050-01-01T00:00:00Z") })).pem);
    assert.equal((late.notAfter as Date).toISOString(), "2050-01-01T00:00:00.000Z");
  });

  it("reads a bundle in order, and says which certificate is unreadable", async () => {
    const a = await generated({ serial: "0a" });
    const b = handMade({ serial: Uint8Array.of(0x0b) });
    assert.deepEqual(
      parseCertificatePems(`junk\n${a.pem}\n${b.pem}`).map((c) => c.serialHex),
      ["0A", "0B"],
    );
    // node:crypto accepts it; the GeneralizedTime with a fraction is what RFC 5280 forbids.
    const fraction = handMade({ notAfter: generalizedTime("20500101000000.5Z") });
    assert.throws(
      () => parseCertificatePems(a.pem + fraction.pem),
      /certificate 2 cannot be read: validity.notAfter/,
    );
  });

  it("reads URI SANs exactly as @peculiar/x509 did, for every SAN layout", async () => {
    const layouts: Array<{ pem: string; der: Uint8Array }> = [
      await generated({ sans: [[{ type: "url", value: WEB }]] }),
      await generated({
        sans: [
          [
            { type: "dns", value: "web.apps.svc" },
            { type: "url", value: WEB },
            { type: "ip", value: "10.0.0.7" },
            { type: "ip", value: "fd00::7" },
            { type: "url", value: "https://web.apps.svc/" },
            { type: "email", value: "web@apps.example" },
            { type: "dn", value: "CN=web, O=apps" },
            { type: "upn", value: "web@apps" },
            { type: "guid", value: "5c2a7b59-0a2d-4bd0-9e5b-8f1f5f0a1b2c" },
            { type: "id", value: "1.2.3.4" },
            { type: "url", value: DB },
          ],
        ],
      }),
      await generated({
        sans: [
          [
            { type: "dns", value: `x", URI:${DB}, DNS:"y` },
            { type: "url", value: `${WEB},URI:${DB}` },
          ],
        ],
      }),
      await generated({ sans: [[{ type: "dns", value: "only.dns" }]] }),
      await generated({ sans: [] }), // basicConstraints only
      await generated({ extensions: false }),
      await generated({ sans: [[{ type: "url", value: WEB }], [{ type: "url", value: DB }]] }),
      handMade(), // no extensions field at all
      handMade({ extensions: [extension(SAN_OID, sequence(uriName(WEB)), true)] }),
      handMade({ extensions: [extension(SAN_OID, sequence(uriName(WEB)))] }), // non-critical
    ];
    for (const { der } of layouts) assert.deepEqual(uriSubjectAltNames(der), x509UriSans(der));

    assert.deepEqual(uriSubjectAltNames(layouts[1]!.der), { uris: [WEB, "https://web.apps.svc/", DB] });
    assert.deepEqual(uriSubjectAltNames(layouts[2]!.der), { uris: [`${WEB},URI:${DB}`] });
    assert.deepEqual(uriSubjectAltNames(layouts[3]!.der), { uris: [] });
    assert.deepEqual(uriSubjectAltNames(layouts[6]!.der), {
      error: "the certificate has 2 subjectAltName extensions",
    });
  });

  it("fails closed on what it cannot read, as @peculiar/x509 did", async () => {
    const good = await generated();
    const unreadable: Array<[string, Uint8Array]> = [
      ["empty", new Uint8Array(0)],
      ["garbage", Uint8Array.of(1, 2, 3)],
      ["truncated", good.der.subarray(0, good.der.length - 1)],
      ["indefinite length", Uint8Array.from([0x30, 0x80, ...good.der.subarray(2), 0, 0])],
    ];
    for (const [what, der] of unreadable) {
      const sans = uriSubjectAltNames(der);
      assert.ok("error" in sans && sans.error.startsWith("the certificate cannot be read: "), what);
      assert.ok("error" in x509UriSans(der), `${what}: x509 refused it too`);
    }
    // x509 ignored bytes after the certificate; a certificate from node:tls never has any, so the
    // stricter reading costs nothing and leaves no room for a second, hidden structure.
    const trailing = Uint8Array.from([...good.der, 0]);
    assert.deepEqual(uriSubjectAltNames(trailing), {
      error: "the certificate cannot be read: Certificate: 1 octets follow the element",
    });

    const badSan = (value: Uint8Array): Uint8Array =>
      handMade({ extensions: [extension(SAN_OID, value, true)] }).der;
    const badSans: Array<[string, Uint8Array]> = [
      ["truncated GeneralNames", Uint8Array.of(0x30, 0x05, 0x86, 0x03, 0x61)],
      ["not a SEQUENCE", uriName(WEB)],
      ["a tag that is no GeneralName", sequence(uriName(WEB), element(contextTag(9, false), ascii("x")))],
      ["a universal tag", sequence(uriName(WEB), element(0x16, ascii(WEB)))],
    ];
    for (const [what, value] of badSans) {
      const der = badSan(value);
      const sans = uriSubjectAltNames(der);
      assert.ok(
        "error" in sans && sans.error.startsWith("the certificate's subjectAltName cannot be read: "),
        what,
      );
      assert.ok(x509Refuses(der), `${what}: x509 refused it too`);
    }
    // x509 ignored bytes after GeneralNames inside extnValue; they are refused here.
    const after = uriSubjectAltNames(badSan(Uint8Array.from([...sequence(uriName(WEB)), 0x00])));
    assert.match("error" in after ? after.error : "", /GeneralNames: 1 octets follow the element/);
    // Not IA5: x509 read it as Latin-1 text; an identity is never that, so it is refused outright.
    const latin1 = uriSubjectAltNames(
      badSan(sequence(element(contextTag(6, false), Uint8Array.from([...ascii(WEB), 0xe9])))),
    );
    assert.match("error" in latin1 ? latin1.error : "", /URI is not IA5/);
  });

  it("certificateIdentity answers as the x509-based one did, and refuses two SAN extensions", async () => {
    const cases = [
      await generated({
        sans: [
          [
            { type: "dns", value: "web" },
            { type: "url", value: WEB },
            { type: "url", value: "https://x/" },
          ],
        ],
      }),
      await generated({
        sans: [
          [
            { type: "url", value: WEB },
            { type: "url", value: DB },
          ],
        ],
      }),
      await generated({ sans: [[{ type: "url", value: "SPIFFE://cluster.local/ns/apps/sa/web" }]] }),
      await generated({ sans: [[{ type: "url", value: "spiffe://cluster.local/ns/apps" }]] }),
      await generated({ sans: [[{ type: "dns", value: "web" }]] }),
      await generated({ extensions: false }),
    ];
    for (const { der } of cases) {
      const found = certificateIdentity(der);
      const uris = x509TlsUris(der).filter((u) => u.toLowerCase().startsWith("spiffe://"));
      if (uris.length === 1 && "identity" in found) assert.equal(found.identity, uris[0]);
      else assert.ok("error" in found, `no identity where x509 found ${JSON.stringify(uris)}`);
    }
    assert.equal((certificateIdentity(cases[0]!.der) as { identity: string }).identity, WEB);
    assert.deepEqual(certificateIdentity(cases[1]!.der), {
      error: "the certificate has 2 spiffe:// URI SANs",
    });
    assert.deepEqual(certificateIdentity(cases[4]!.der), {
      error: "the certificate has no spiffe:// URI SAN",
    });

    // The x509-based reader took the first of two SAN extensions; a second identity is now refused.
    const two = await generated({ sans: [[{ type: "url", value: WEB }], [{ type: "url", value: DB }]] });
    assert.deepEqual(x509TlsUris(two.der), [WEB]);
    assert.deepEqual(certificateIdentity(two.der), {
      error: "the certificate has 2 subjectAltName extensions",
    });
    assert.match(
      (certificateIdentity(Uint8Array.of(1, 2)) as { error: string }).error,
      /^the certificate cannot be read: /,
    );
  });
});
