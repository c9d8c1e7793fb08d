// SPIFFE IDs of Kubernetes workloads, as Istio mints them:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
//
// Parsing is strict on purpose: the CA compares the parsed namespace and service account with the
// cluster, so anything a lenient parser would "fix up" (case, percent-encoding, a trailing slash, a
// query) could name one account in the certificate and another in the authorization decision.

export const DEFAULT_TRUST_DOMAIN = "cluster.local";

export interface SpiffeId {
  readonly trustDomain: string;
  readonly namespace: string;
  readonly serviceAccount: string;
}

export type SpiffeParse = SpiffeId | { readonly error: string };

const SCHEME = "spiffe://";
// SPIFFE ID spec §2.1: lower-case letters, digits, dots, dashes and underscores only (so no port,
// no user info, no upper case).
const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const TRUST_DOMAIN_MAX = 255;
// A namespace is an RFC 1123 label; a service account name an RFC 1123 subdomain.
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_LABEL_MAX = 63;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1123_SUBDOMAIN_MAX = 253;
// SPIFFE ID spec §2.3: an ID is at most 2048 bytes.
const SPIFFE_ID_MAX = 2048;

/** Why `name` is not a usable trust domain, or undefined if it is. */
export function trustDomainProblem(name: string): string | undefined {
  if (name === "") return "trust domain is empty";
  if (name.length > TRUST_DOMAIN_MAX) return `trust domain is longer than ${TRUST_DOMAIN_MAX} characters`;
  if (!TRUST_DOMAIN.test(name)) {
    return `trust domain "${name}" may contain only lower-case letters, digits, ".", "-" and "_"`;
  }
  return undefined;
}

/** Why `name` is not a valid Kubernetes namespace name, or undefined if it is. */
export function namespaceProblem(name: string): string | undefined {
  return name.length <= DNS1123_LABEL_MAX && DNS1123_LABEL.test(name)
    ? undefined
    : `namespace "${name}" is not a valid Kubernetes namespace name (lower-case letters, digits and "-"; ` +
        `starting and ending with a letter or digit; at most ${DNS1123_LABEL_MAX} characters)`;
}

/** Why `name` is not a valid Kubernetes service account name, or undefined if it is. */
export function serviceAccountProblem(name: string): string | undefined {
  return name.length <= DNS1123_SUBDOMAIN_MAX && DNS1123_SUBDOMAIN.test(name)
    ? undefined
    : `service account "${name}" is not a valid Kubernetes service account name (lower-case letters, ` +
        `digits, "-" and "."; starting and ending with a letter or digit; at most ${DNS1123_SUBDOMAIN_MAX} characters)`;
}

export function parseSpiffeId(text: string): SpiffeParse {
  const shown = JSON.stringify(text.length > 120 ? `${text.slice(0, 120)}…` : text);
  if (text.length > SPIFFE_ID_MAX) return { error: `${shown} is longer than ${SPIFFE_ID_MAX} characters` };
  if (!text.startsWith(SCHEME)) return { error: `${shown} does not start with "${SCHEME}"` };
  const rest = text.slice(SCHEME.length);
  if (rest.includes("?")) return { error: `${shown} has a query; a SPIFFE ID has none` };
  if (rest.includes("#")) return { error: `${shown} has a fragment; a SPIFFE ID has none` };
  if (rest.includes("%")) return { error: `${shown} is percent-encoded; a SPIFFE ID may not be` };
  const slash = rest.indexOf("/");
  const trustDomain = slash < 0 ? rest : rest.slice(0, slash);
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem) return { error: `${shown}: ${tdProblem}` };
  const path = slash < 0 ? "" : rest.slice(slash);
  const segments = path.split("/").slice(1);
  const [ns, namespace, sa, serviceAccount] = segments;
  if (segments.length !== 4 || ns !== "ns" || sa !== "sa" || !namespace || !serviceAccount) {
    return {
      error: `${shown}: path must be exactly /ns/<namespace>/sa/<service-account>, found ${JSON.stringify(path)}`,
    };
  }
  const problem = namespaceProblem(namespace) ?? serviceAccountProblem(serviceAccount);
  if (problem) return { error: `${shown}: ${problem}` };
  return { trustDomain, namespace, serviceAccount };
}

export const isSpiffeError = (p: SpiffeParse): p is { readonly error: string } => "error" in p;

/** The SPIFFE ID of a workload; throws on parts that would not parse back to themselves. */
export function formatSpiffeId(id: SpiffeId): string {
  const text = `${SCHEME}${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
  const back = parseSpiffeId(text);
  if (isSpiffeError(back)) throw new TypeError(`cannot format a SPIFFE ID: ${back.error}`);
  return text;
}
