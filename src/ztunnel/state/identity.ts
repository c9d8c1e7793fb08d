import { DEFAULT_TRUST_DOMAIN } from "../../identity/spiffe.js";
import type { Workload } from "../../xds/types.js";

/** Kubernetes' service account for pods that name none. */
export const DEFAULT_SERVICE_ACCOUNT = "default";

/**
 * The SPIFFE id a workload's certificate carries:
 * `spiffe://<trust domain or cluster.local>/ns/<namespace>/sa/<service account or default>`.
 * Not validated: it names what the control plane sent, which state validation has checked.
 */
export function identityOf(workload: Workload): string {
  const trustDomain = workload.trustDomain || DEFAULT_TRUST_DOMAIN;
  const serviceAccount = workload.serviceAccount || DEFAULT_SERVICE_ACCOUNT;
  return `spiffe://${trustDomain}/ns/${workload.namespace}/sa/${serviceAccount}`;
}
