// Who is on the other end of an HBONE (mTLS) connection. node:tls has already verified the chain
// against the mesh roots when these run; what is left is the SPIFFE identity the peer's leaf names,
// and whether it is the one we meant to reach. Host names play no part: HBONE peers are identified
// by their URI SAN only, as upstream ztunnel does.
import type { X509Certificate } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import { isSpiffeError, parseSpiffeId } from "../../identity/spiffe.js";
import { uriSubjectAltNames } from "./cert-parse.js";

export type PeerIdentity = { readonly identity: string } | { readonly error: string };

/**
 * The SPIFFE ID of a peer's leaf certificate: it must carry exactly one URI SAN (X.509-SVID §2),
 * and that URI must be a SPIFFE ID. Other SAN kinds (DNS, IP) are ignored.
 */
export function peerSpiffeIdentity(cert: PeerCertificate | X509Certificate): PeerIdentity {
  // getPeerCertificate() answers an empty object when the peer sent no certificate.
  const raw = (cert as { raw?: Buffer }).raw;
  if (raw === undefined || raw.length === 0) return { error: "the peer presented no certificate" };
  const sans = uriSubjectAltNames(raw);
  if ("error" in sans) return sans;
  const [only, ...more] = sans.uris;
  if (only === undefined) return { error: "the peer's certificate has no URI subjectAltName" };
  if (more.length > 0) {
    return {
      error: `the peer's certificate has ${sans.uris.length} URI subjectAltNames (${sans.uris
        .map((u) => JSON.stringify(u))
        .join(", ")}); an identity certificate has exactly one`,
    };
  }
  const id = parseSpiffeId(only);
  if (isSpiffeError(id)) return { error: `the peer's URI subjectAltName is not a SPIFFE ID: ${id.error}` };
  return { identity: only };
}

/** Why `identity` is not a SPIFFE ID of `trustDomain`, or undefined when it is one. */
export function checkTrustDomain(identity: string, trustDomain: string): string | undefined {
  const id = parseSpiffeId(identity);
  if (isSpiffeError(id)) return `not a SPIFFE ID: ${id.error}`;
  if (id.trustDomain !== trustDomain) {
    return `trust domain ${id.trustDomain} of ${identity} is not this mesh's (${trustDomain})`;
  }
  return undefined;
}

/** A server's certificate names another identity than the connection was meant for. */
export class PeerIdentityError extends Error {
  /** Node's code for a certificate that does not match the expected name. */
  readonly code = "ERR_TLS_CERT_ALTNAME_INVALID";
  constructor(
    readonly expected: readonly string[],
    /** The identity the server presented, when it presented a readable one. */
    readonly found: string | undefined,
    readonly reason: string,
  ) {
    super(reason);
    this.name = "PeerIdentityError";
  }
}

/**
 * A `checkServerIdentity` for `tls.connect`: the connection is accepted only if the server's
 * certificate names exactly one SPIFFE ID and it is one of `expected`. The host name is not
 * consulted (no DNS SAN or CN check); the chain itself is verified by node:tls before this runs.
 */
export function checkServerIdentity(
  expected: readonly string[],
): (hostname: string, cert: PeerCertificate) => Error | undefined {
  const allowed = [...expected];
  return (_hostname, cert) => {
    const peer = peerSpiffeIdentity(cert);
    if ("error" in peer) return new PeerIdentityError(allowed, undefined, peer.error);
    if (allowed.includes(peer.identity)) return undefined;
    const wanted = allowed.length > 0 ? allowed.join(", ") : "(none)";
    return new PeerIdentityError(
      allowed,
      peer.identity,
      `the server presented ${peer.identity}, expected one of: ${wanted}`,
    );
  };
}
