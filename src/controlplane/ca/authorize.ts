// Which identities a node proxy may obtain certificates for: upstream's node authorizer, with
// offmesh's one change — a ztunnel on a DPU acts for the pods of its paired CPU as well as its own
// (the set `servedNodes` answers), so it is not limited to pods on the node it runs on. The
// original widened "the caller's node" to "any node" (bug 28), letting any proxy mint any identity.
import type { ClusterSnapshot } from "../../cluster/types.js";
import { isSpiffeError, parseSpiffeId } from "../../identity/spiffe.js";
import { lookupByName, servedNodes, servingNode } from "../../topology/index.js";
import type { Topology } from "../../topology/index.js";
import { podTerminated, proxyPodProblem } from "../auth/tokens.js";
import type { ProxyIdentity } from "../auth/tokens.js";

/** Upstream's default: the ztunnel DaemonSet's service account. */
export const DEFAULT_TRUSTED_NODE_PROXY_ACCOUNTS: readonly string[] = ["istio-system/ztunnel"];

export interface CsrAuthorizationRequest {
  /** The authenticated proxy. */
  readonly caller: ProxyIdentity;
  /** `metadata["ImpersonatedIdentity"]` of the request. */
  readonly identity: string;
  readonly snapshot: ClusterSnapshot;
  readonly topology: Topology;
  /** `namespace/serviceaccount` of the node proxies. */
  readonly trustedAccounts: readonly string[];
  readonly trustDomain: string;
}

export type CsrAuthorization = { readonly ok: true } | { readonly ok: false; readonly reason: string };

export function authorizeCsr(req: CsrAuthorizationRequest): CsrAuthorization {
  const { caller, identity, snapshot, topology, trustedAccounts, trustDomain } = req;
  const callerAccount = `${caller.namespace}/${caller.serviceAccount}`;
  if (!trustedAccounts.includes(callerAccount)) {
    const trusted = trustedAccounts.length > 0 ? trustedAccounts.join(", ") : "none";
    return deny(`caller ${callerAccount} is not a trusted node proxy account (trusted: ${trusted})`);
  }
  // Checked again here, whatever the authenticator did: the node the grant is scoped to must be
  // the one the cluster has the proxy's pod on, and a dead proxy pod acts for nobody.
  const callerProblem = proxyPodProblem(caller, snapshot);
  if (callerProblem) return deny(`caller ${callerProblem}`);

  const id = parseSpiffeId(identity);
  if (isSpiffeError(id)) return deny(`identity ${JSON.stringify(identity)} is not a SPIFFE ID: ${id.error}`);
  if (id.trustDomain !== trustDomain) {
    return deny(`trust domain ${id.trustDomain} of identity ${identity} is not this mesh's (${trustDomain})`);
  }

  const served = servedNodes(topology, caller.node);
  if (served.length === 0) return deny(servesNothing(topology, caller.node));
  const servedNames = served.map((n) => n.name);
  const match = [...snapshot.pods.values()].some(
    (pod) =>
      pod.namespace === id.namespace &&
      pod.serviceAccount === id.serviceAccount &&
      pod.nodeName !== undefined &&
      servedNames.includes(pod.nodeName) &&
      podTerminated(pod) === undefined,
  );
  if (!match) {
    return deny(
      `no running pod with service account ${id.namespace}/${id.serviceAccount} on the nodes ` +
        `${caller.node} serves (${servedNames.join(", ")})`,
    );
  }
  return { ok: true };
}

/** Why a proxy on `node` serves no node at all. */
function servesNothing(topology: Topology, node: string): string {
  const found = lookupByName(topology, node);
  if (!found.found) return `caller's node ${node} serves no nodes: ${found.reason}`;
  const serving = servingNode(topology, node);
  const by = serving.found ? `; its pods are served by ${serving.node.name}` : "";
  return `caller's node ${node} is a CPU node, which runs no node proxy${by}`;
}

const deny = (reason: string): CsrAuthorization => ({ ok: false, reason });
