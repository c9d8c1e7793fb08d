// Reading certificates: PEM bundles into parsed certificates, and subjectAltName URIs from the
// extension's ASN.1 (not from a printed "URI:a, DNS:b" string, which a comma or quote inside a
// name would make ambiguous). The DER is walked by hand (src/identity/der.ts) rather than with
// @peculiar/x509, which would cost the ztunnel 10–12 MB of memory for these few fields.
import { X509Certificate as NodeX509 } from "node:crypto";
import {
  children,
  contextTag,
  DerError,
  expectTag,
  isConstructed,
  readBoolean,
  readOid,
  readOne,
  readTime,
  TAG,
} from "../../identity/der.js";
import type { Tlv } from "../../identity/der.js";

const SAN_OID = "2.5.29.17";
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

export interface ParsedCertificate {
  /** The certificate as one PEM block, ending in a newline. */
  readonly pem: string;
  /** node:crypto's view, for signature and issuer checks. */
  readonly node: NodeX509;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Upper-case hex, as `openssl x509 -serial` prints it. */
  readonly serialHex: string;
  /** Decimal, as upstream ztunnel's config dump shows it. */
  readonly serialDecimal: string;
}

/** Every CERTIFICATE block of `text`, in order; throws an Error saying what is wrong. */
export function parseCertificatePems(text: string): ParsedCertificate[] {
  const blocks = text.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new Error("holds no PEM CERTIFICATE block");
  return blocks.map((block, i) => {
    try {
      return parseOne(block);
    } catch (e) {
      throw new Error(`certificate ${i + 1} cannot be read: ${(e as Error).message}`, { cause: e });
    }
  });
}

function parseOne(block: string): ParsedCertificate {
  const node = new NodeX509(block);
  const cert = readCertificate(node.raw);
  const serialHex = serialText(cert.serial);
  return {
    pem: node.toString().trimEnd() + "\n",
    node,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    serialHex,
    serialDecimal: BigInt(`0x${serialHex || "0"}`).toString(10),
  };
}

/**
 * The serial's contents octets in upper-case hex, with the 0x00 that keeps a high first bit positive
 * left out: "00 80" is "80", but "00 01" stays "0001" (what @peculiar/x509 answered, which the dump
 * and the certificates' `serial` have always shown).
 */
function serialText(octets: Uint8Array): string {
  const shown = octets.length > 1 && octets[0] === 0x00 && octets[1]! > 0x7f ? octets.subarray(1) : octets;
  return Buffer.from(shown).toString("hex").toUpperCase();
}

/** The URI names of a DER certificate's subjectAltName, or why they cannot be read. */
export function uriSubjectAltNames(
  der: Uint8Array,
): { readonly uris: string[] } | { readonly error: string } {
  let cert: CertificateFields;
  try {
    cert = readCertificate(der);
  } catch (e) {
    return { error: `the certificate cannot be read: ${(e as Error).message}` };
  }
  // One certificate may not repeat an extension (RFC 5280 §4.2); two SANs could name two identities.
  const sans = cert.extensions.filter((e) => e.id === SAN_OID);
  if (sans.length === 0) return { uris: [] };
  if (sans.length > 1) return { error: `the certificate has ${sans.length} subjectAltName extensions` };
  try {
    return { uris: uriNames(sans[0]!.value) };
  } catch (e) {
    // A name we cannot read might be the identity: failing closed is right for identity.
    return { error: `the certificate's subjectAltName cannot be read: ${(e as Error).message}` };
  }
}

// ---------------------------------------------------------------------------------------------
// The certificate's structure (RFC 5280 §4.1), as far as the fields above need it.

interface Extension {
  readonly id: string;
  /** The contents of extnValue: the extension's own DER. */
  readonly value: Uint8Array;
}

interface CertificateFields {
  /** The INTEGER's contents octets, as encoded. */
  readonly serial: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly extensions: readonly Extension[];
}

const VERSION = contextTag(0, true);
const ISSUER_UNIQUE_ID = contextTag(1, false);
const SUBJECT_UNIQUE_ID = contextTag(2, false);
const EXTENSIONS = contextTag(3, true);

function readCertificate(der: Uint8Array): CertificateFields {
  const [tbs, signatureAlgorithm, signature, ...extra] = children(
    readOne(der, TAG.SEQUENCE, "Certificate"),
    "Certificate",
  );
  expectTag(signatureAlgorithm, TAG.SEQUENCE, "Certificate.signatureAlgorithm");
  expectTag(signature, TAG.BIT_STRING, "Certificate.signatureValue");
  if (extra.length > 0)
    throw new DerError(`Certificate: ${extra.length} unexpected elements after the signature`);

  const fields = children(expectTag(tbs, TAG.SEQUENCE, "tbsCertificate"), "tbsCertificate");
  let i = 0;
  if (fields[i]?.tag === VERSION) i++;
  const serial = expectTag(fields[i++], TAG.INTEGER, "serialNumber").value;
  if (serial.length === 0) throw new DerError("serialNumber: empty INTEGER");
  expectTag(fields[i++], TAG.SEQUENCE, "signature");
  expectTag(fields[i++], TAG.SEQUENCE, "issuer");
  const validity = children(expectTag(fields[i++], TAG.SEQUENCE, "validity"), "validity");
  if (validity.length !== 2) throw new DerError(`validity: expected 2 times, found ${validity.length}`);
  expectTag(fields[i++], TAG.SEQUENCE, "subject");
  expectTag(fields[i++], TAG.SEQUENCE, "subjectPublicKeyInfo");
  if (fields[i]?.tag === ISSUER_UNIQUE_ID) i++;
  if (fields[i]?.tag === SUBJECT_UNIQUE_ID) i++;
  const extensions = fields[i]?.tag === EXTENSIONS ? readExtensions(fields[i++]!) : [];
  if (i < fields.length) {
    throw new DerError(`tbsCertificate: unexpected element with tag 0x${fields[i]!.tag.toString(16)}`);
  }
  return {
    serial,
    notBefore: readTime(validity[0]!, "validity.notBefore"),
    notAfter: readTime(validity[1]!, "validity.notAfter"),
    extensions,
  };
}

/** extensions [3] EXPLICIT SEQUENCE SIZE (1..MAX) OF Extension. */
function readExtensions(wrapper: Tlv): Extension[] {
  const [list, ...extra] = children(wrapper, "extensions");
  if (extra.length > 0) throw new DerError("extensions: more than one element inside [3]");
  return children(expectTag(list, TAG.SEQUENCE, "extensions"), "extensions").map((ext, n) => {
    const what = `extension ${n + 1}`;
    const parts = children(expectTag(ext, TAG.SEQUENCE, what), what);
    if (parts.length < 2 || parts.length > 3) {
      throw new DerError(`${what}: expected 2 or 3 elements, found ${parts.length}`);
    }
    const id = readOid(parts[0]!, `${what}.extnID`);
    // Read only so that a malformed flag is refused; nothing here acts on criticality.
    if (parts.length === 3) readBoolean(parts[1]!, `${what} (${id}).critical`);
    const value = expectTag(parts.at(-1), TAG.OCTET_STRING, `${what} (${id}).extnValue`).value;
    return { id, value };
  });
}

// GeneralName (RFC 5280 §4.2.1.6): the tags whose value is a primitive string and those that are
// constructed; [6] is the uniformResourceIdentifier, an IA5String.
const URI = contextTag(6, false);
const PRIMITIVE_NAMES = new Set([1, 2, 6, 7, 8].map((n) => contextTag(n, false)));
const CONSTRUCTED_NAMES = new Set([0, 3, 4, 5].map((n) => contextTag(n, true)));

/** The uniformResourceIdentifier names of a subjectAltName extension's value (GeneralNames). */
function uriNames(extnValue: Uint8Array): string[] {
  const names = children(readOne(extnValue, TAG.SEQUENCE, "GeneralNames"), "GeneralNames");
  const uris: string[] = [];
  names.forEach((name, n) => {
    if (!PRIMITIVE_NAMES.has(name.tag) && !CONSTRUCTED_NAMES.has(name.tag)) {
      const form = isConstructed(name) ? "constructed" : "primitive";
      throw new DerError(`name ${n + 1}: tag 0x${name.tag.toString(16)} (${form}) is not a GeneralName`);
    }
    if (name.tag !== URI) return;
    // IA5String: 7-bit ASCII. A byte above that is not a URI we could compare safely.
    if (name.value.some((b) => b > 0x7f)) throw new DerError(`name ${n + 1}: URI is not IA5 (ASCII) text`);
    uris.push(Buffer.from(name.value).toString("latin1"));
  });
  return uris;
}
