// The `certificates` section of the admin config dump, shaped as upstream ztunnel's (camelCase
// CertsDump / CertDump), so tools reading upstream's dump read ours.
import type { ParsedCertificate } from "./cert-parse.js";

export type CertificateState = "Available" | "Pending" | "Unavailable";

export interface CertificateDetailsDump {
  /** Base64 of the PEM text, as upstream encodes it. */
  readonly pem: string;
  /** Decimal. */
  readonly serialNumber: string;
  /** RFC 3339, whole seconds, UTC. */
  readonly validFrom: string;
  readonly expirationTime: string;
}

export interface CertificatesDump {
  readonly identity: string;
  readonly state: CertificateState;
  /** Why it is Unavailable: the last failure. Upstream folds it into `state`. */
  readonly error?: string;
  /** Leaf first, then intermediates; empty unless Available. */
  readonly certChain: readonly CertificateDetailsDump[];
  readonly rootCerts: readonly CertificateDetailsDump[];
}

export function dumpCertificate(cert: ParsedCertificate): CertificateDetailsDump {
  return {
    pem: Buffer.from(cert.pem, "utf8").toString("base64"),
    serialNumber: cert.serialDecimal,
    validFrom: rfc3339Seconds(cert.notBefore),
    expirationTime: rfc3339Seconds(cert.notAfter),
  };
}

function rfc3339Seconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}
