// Whether the chain a CA answered is a certificate we can serve: for the identity we asked, for the
// key we hold, current, and leading to a root we trust. A CA (or whoever answers in its name) can
// only hand us a certificate; it cannot widen what we trust, so the roots in its answer are not
// taken as trust anchors — the manager's configured roots are.
import { createPrivateKey, createPublicKey } from "node:crypto";
import type { ParsedCertificate } from "./cert-parse.js";
import { parseCertificatePems, uriSubjectAltNames } from "./cert-parse.js";

export interface IssuedChainCheck {
  readonly identity: string;
  /** The private key (PKCS#8 PEM) the CSR was made with. */
  readonly keyPem: string;
  /** The CA's `cert_chain`: leaf first, root bundle last. */
  readonly chain: readonly string[];
  readonly roots: readonly ParsedCertificate[];
  readonly now: number;
}

export interface IssuedChain {
  readonly leaf: ParsedCertificate;
  /** Between the leaf and the root; often none. */
  readonly intermediates: readonly ParsedCertificate[];
}

export function checkIssuedChain(req: IssuedChainCheck): IssuedChain | { readonly error: string } {
  const { identity, chain, roots, now } = req;
  if (chain.length === 0) return { error: "the certificate chain is empty" };
  let certs: ParsedCertificate[];
  let leaf: ParsedCertificate;
  try {
    const leafCerts = parseCertificatePems(chain[0]!);
    if (leafCerts.length !== 1) {
      return { error: `the chain's first element holds ${leafCerts.length} certificates, not one leaf` };
    }
    leaf = leafCerts[0]!;
    // Elements between the first and the last are intermediates; the last is the CA's root bundle.
    certs = chain.slice(1, -1).flatMap((pem) => parseCertificatePems(pem));
  } catch (e) {
    return { error: `the chain ${(e as Error).message}` };
  }

  const sans = uriSubjectAltNames(leaf.node.raw);
  if ("error" in sans) return { error: `leaf: ${sans.error}` };
  if (sans.uris.length !== 1 || sans.uris[0] !== identity) {
    const named = sans.uris.length > 0 ? sans.uris.join(", ") : "no URI";
    return { error: `the leaf names ${named}, not exactly ${identity}` };
  }
  if (leaf.node.ca) return { error: "the leaf is a CA certificate" };

  const ourKey = createPublicKey(createPrivateKey(req.keyPem)).export({ type: "spki", format: "der" });
  const leafKey = leaf.node.publicKey.export({ type: "spki", format: "der" });
  if (!ourKey.equals(leafKey)) return { error: "the leaf certifies another key than the one we asked with" };

  if (now >= leaf.notAfter.getTime()) {
    return { error: `the leaf expired at ${leaf.notAfter.toISOString()}` };
  }

  const trustProblem = chainTrustProblem(leaf, certs, roots);
  if (trustProblem) return { error: trustProblem };
  return { leaf, intermediates: certs };
}

/** Why leaf → intermediates does not end at one of `roots`, or undefined when it does. */
function chainTrustProblem(
  leaf: ParsedCertificate,
  intermediates: readonly ParsedCertificate[],
  roots: readonly ParsedCertificate[],
): string | undefined {
  let current = leaf;
  for (const [i, next] of intermediates.entries()) {
    if (!issuedBy(current, next)) {
      return `certificate ${i + 1} of the chain is not signed by certificate ${i + 2}`;
    }
    current = next;
  }
  const anchored = roots.some((root) => current.node.raw.equals(root.node.raw) || issuedBy(current, root));
  return anchored ? undefined : "the chain does not lead to a trusted root";
}

function issuedBy(cert: ParsedCertificate, issuer: ParsedCertificate): boolean {
  try {
    return cert.node.checkIssued(issuer.node) && cert.node.verify(issuer.node.publicKey);
  } catch {
    return false;
  }
}
