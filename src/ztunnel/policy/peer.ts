// The attributes of a connection's source identity that policies match: the principal (the SPIFFE
// id without "spiffe://", Istio's form "cluster.local/ns/default/sa/sleep"), and the namespace and
// service account its path names.

export interface PeerIdentity {
  readonly principal: string;
  /** Absent when the id is not of the form <trust domain>/ns/<ns>/sa/<sa>. */
  readonly namespace?: string;
  readonly serviceAccount?: string;
}

const SCHEME = "spiffe://";

/** The identity attributes of `spiffeId`; undefined for a plaintext connection (no identity). */
export function peerIdentity(spiffeId: string | undefined): PeerIdentity | undefined {
  if (spiffeId === undefined || spiffeId === "") return undefined;
  const principal = spiffeId.startsWith(SCHEME) ? spiffeId.slice(SCHEME.length) : spiffeId;
  const parts = principal.split("/");
  if (parts.length === 5 && parts[1] === "ns" && parts[3] === "sa" && parts[2] !== "" && parts[4] !== "") {
    return { principal, namespace: parts[2] as string, serviceAccount: parts[4] as string };
  }
  return { principal };
}
