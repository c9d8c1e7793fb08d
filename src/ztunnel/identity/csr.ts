// A fresh key and certificate signing request for one workload identity, in the form the control
// plane's CA signs (src/controlplane/ca/root.ts): an ECDSA P-256 key, signed with SHA-256, and the
// SPIFFE ID as the one and only subjectAltName (a URI). The subject is left empty: the SAN is the
// identity, as in an X.509-SVID.
import { KeyObject, webcrypto } from "node:crypto";
import { isSpiffeError, parseSpiffeId } from "../../identity/spiffe.js";
import { x509 } from "../../identity/x509.js";

const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;

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
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      // RFC 5280 §4.2.1.6: with an empty subject, the SAN carries the identity and is critical.
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: identity }], true),
    ],
  });
  const keyPem = KeyObject.from(keys.privateKey).export({ type: "pkcs8", format: "pem" }).toString();
  return { keyPem, csrPem: csr.toString("pem") + "\n" };
}
