// Reading certificates: PEM bundles into parsed certificates, and subjectAltName URIs from the
// extension's ASN.1 (not from a printed "URI:a, DNS:b" string, which a comma or quote inside a
// name would make ambiguous).
import { X509Certificate as NodeX509 } from "node:crypto";
import type * as X509 from "@peculiar/x509";
import { x509 } from "../../identity/x509.js";

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
  const peculiar = new x509.X509Certificate(node.raw);
  const serialHex = peculiar.serialNumber.toUpperCase();
  return {
    pem: node.toString().trimEnd() + "\n",
    node,
    notBefore: peculiar.notBefore,
    notAfter: peculiar.notAfter,
    serialHex,
    serialDecimal: BigInt(`0x${serialHex || "0"}`).toString(10),
  };
}

/** The URI names of a DER certificate's subjectAltName, or why they cannot be read. */
export function uriSubjectAltNames(
  der: Uint8Array,
): { readonly uris: string[] } | { readonly error: string } {
  let cert: X509.X509Certificate;
  try {
    cert = new x509.X509Certificate(der);
  } catch (e) {
    return { error: `the certificate cannot be read: ${(e as Error).message}` };
  }
  // One certificate may not repeat an extension (RFC 5280 §4.2); two SANs could name two identities.
  const sans = cert.extensions.filter((e) => e.type === SAN_OID);
  if (sans.length === 0) return { uris: [] };
  if (sans.length > 1) return { error: `the certificate has ${sans.length} subjectAltName extensions` };
  try {
    const names = new x509.SubjectAlternativeNameExtension(sans[0]!.rawData).names.items;
    return { uris: names.filter((n) => n.type === "url").map((n) => n.value) };
  } catch (e) {
    // @peculiar/x509 cannot represent some otherName forms; failing closed is right for identity.
    return { error: `the certificate's subjectAltName cannot be read: ${(e as Error).message}` };
  }
}
