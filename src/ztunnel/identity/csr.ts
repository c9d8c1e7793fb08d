// A fresh key and certificate signing request for one workload identity, in the form the control
// plane's CA signs (src/controlplane/ca/root.ts): an ECDSA P-256 key, signed with SHA-256, and the
// SPIFFE ID as the one and only subjectAltName (a URI). The subject is left empty: the SAN is the
// identity, as in an X.509-SVID. The PKCS#10 structure (RFC 2986) is written with the small DER
// writer rather than @peculiar/x509, which would cost the ztunnel 10–12 MB of memory.
import { generateKeyPair, sign } from "node:crypto";
import { promisify } from "node:util";
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
} from "../../identity/der.js";
import { isSpiffeError, parseSpiffeId } from "../../identity/spiffe.js";

const generateKeyPairAsync = promisify(generateKeyPair);

const OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";
const OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14";
const OID_SUBJECT_ALT_NAME = "2.5.29.17";

export interface KeyAndCsr {
  /** PKCS#8 PEM, as node:tls takes it. */
  readonly keyPem: string;
  /** PKCS#10 PEM. */
  readonly csrPem: string;
}

/** A new P-256 key and a CSR for `identity`; throws a TypeError if it is not a SPIFFE ID. */
export async function createKeyAndCsr(identity: string): Promise<KeyAndCsr> {
  const parsed = parseSpiffeId(identity);
  if (isSpiffeError(parsed)) throw new TypeError(`cannot request a certificate: ${parsed.error}`);
  // Off the event loop: this runs when a workload first connects, with other traffic waiting.
  const { publicKey, privateKey } = await generateKeyPairAsync("ec", { namedCurve: "P-256" });

  // RFC 5280 §4.2.1.6: with an empty subject, the SAN carries the identity and is critical.
  const san = sequence(
    oid(OID_SUBJECT_ALT_NAME),
    boolean(true),
    octetString(sequence(ia5(contextTag(6, false), identity))),
  );
  const info = sequence(
    integer(0), // version v1
    sequence(), // subject: the empty Name
    publicKey.export({ type: "spki", format: "der" }),
    // attributes [0] IMPLICIT SET OF Attribute: the one extensionRequest (RFC 2985 §5.4.2).
    element(contextTag(0, true), sequence(oid(OID_EXTENSION_REQUEST), setOf(sequence(san)))),
  );
  const signature = sign("sha256", info, { key: privateKey, dsaEncoding: "der" });
  const csr = sequence(info, sequence(oid(OID_ECDSA_WITH_SHA256)), bitString(signature));

  const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  return { keyPem, csrPem: pem("CERTIFICATE REQUEST", csr) };
}

/** `der` as a PEM block of 64-character lines, ending in a newline. */
function pem(label: string, der: Uint8Array): string {
  const lines =
    Buffer.from(der)
      .toString("base64")
      .match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
