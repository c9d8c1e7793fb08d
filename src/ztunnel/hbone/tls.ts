// The TLS side of HBONE shared by client and server: protocol constraints, the SPIFFE identity a
// certificate carries, and a cache of TLS state built from credentials that rotate.
import { createHash } from "node:crypto";
import type { SecureContextOptions } from "node:tls";
import { uriSubjectAltNames } from "../identity/cert-parse.js";
import { isSpiffeError, parseSpiffeId } from "../../identity/spiffe.js";
import type { SpiffeId } from "../../identity/spiffe.js";

export const HBONE_ALPN = "h2";
export const HBONE_TLS_VERSION = "TLSv1.3";
/** Upstream's suites, in its order of preference. */
export const HBONE_TLS_CIPHERS = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256";

/** A workload's certificate chain (leaf first) and its private key, PEM. */
export interface WorkloadCredential {
  readonly certChainPem: string;
  readonly keyPem: string;
}

/** Context options both ends use: the workload's credential, the mesh roots, TLS 1.3 only. */
export function hboneContextOptions(cred: WorkloadCredential, rootsPem: string): SecureContextOptions {
  return {
    cert: cred.certChainPem,
    key: cred.keyPem,
    ca: rootsPem,
    minVersion: HBONE_TLS_VERSION,
    maxVersion: HBONE_TLS_VERSION,
    ciphers: HBONE_TLS_CIPHERS,
  };
}

export type CertificateIdentity =
  { readonly identity: string; readonly id: SpiffeId } | { readonly error: string };

/**
 * The workload identity of a certificate (DER): its one `spiffe://` URI SAN. No such SAN, two of
 * them, or one that is not a workload SPIFFE ID is an error, so that a certificate never stands for
 * more than one identity. Other URI SANs are ignored. SANs that cannot be read, or two SAN
 * extensions, are an error too (cert-parse.ts), rather than a guess at which one counts.
 */
export function certificateIdentity(der: Uint8Array): CertificateIdentity {
  const sans = uriSubjectAltNames(der);
  if ("error" in sans) return sans;
  const spiffe = sans.uris.filter((u) => u.toLowerCase().startsWith("spiffe://"));
  if (spiffe.length === 0) return { error: "the certificate has no spiffe:// URI SAN" };
  if (spiffe.length > 1) return { error: `the certificate has ${spiffe.length} spiffe:// URI SANs` };
  const identity = spiffe[0]!;
  const id = parseSpiffeId(identity);
  if (isSpiffeError(id))
    return { error: `the certificate's URI SAN is not a workload identity: ${id.error}` };
  return { identity, id };
}

/** A short, stable name of a certificate chain: pools tell a rotated certificate from the old one by it. */
export function chainFingerprint(certChainPem: string): string {
  return createHash("sha256").update(certChainPem).digest("base64url").slice(0, 22);
}

/**
 * TLS state built from (credential, roots) per key, rebuilt only when one of the three texts changes:
 * parsing PEM and building an OpenSSL context per connection would dominate connection setup.
 */
export class CredentialCache<T> {
  private readonly entries = new Map<
    string,
    { readonly cred: WorkloadCredential; readonly rootsPem: string; readonly value: T }
  >();

  get(
    key: string,
    cred: WorkloadCredential,
    rootsPem: string,
    build: (cred: WorkloadCredential, rootsPem: string) => T,
  ): T {
    const hit = this.entries.get(key);
    if (
      hit &&
      hit.cred.certChainPem === cred.certChainPem &&
      hit.cred.keyPem === cred.keyPem &&
      hit.rootsPem === rootsPem
    ) {
      return hit.value;
    }
    const value = build(cred, rootsPem);
    this.entries.set(key, {
      cred: { certChainPem: cred.certChainPem, keyPem: cred.keyPem },
      rootsPem,
      value,
    });
    return value;
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  clear(): void {
    this.entries.clear();
  }
}
