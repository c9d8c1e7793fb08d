// Proxy authentication on Kubernetes: the node proxy presents its projected service-account token
// (audience `istio-ca`, as upstream ztunnel does) and the API server vouches for it through a
// TokenReview. A bound token names its pod (name and uid) in the review's `extra`; the pod's node
// is taken from the cluster, and the pod must be alive there — as with the lab's tokens.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import type { V1TokenReview } from "@kubernetes/client-node";
import type { ClusterSnapshot } from "../../cluster/types.js";
import { bearerToken, parseServiceAccountSubject, proxyPodProblem } from "./tokens.js";
import type { AuthenticationResult, ProxyAuthenticator, ProxyIdentity } from "./tokens.js";

/** The audience upstream ztunnel requests for the token it sends to istiod. */
export const DEFAULT_TOKEN_AUDIENCES: readonly string[] = ["istio-ca"];

/** Keys of `status.user.extra` a bound service-account token carries (Kubernetes ≥ 1.22; node ≥ 1.30). */
export const EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name";
export const EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid";
export const EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name";

/** Sends one TokenReview and returns the API server's answer (its `status`). */
export type TokenReviewer = (token: string, audiences: readonly string[]) => Promise<V1TokenReview>;

export interface TokenReviewAuthenticatorOptions {
  readonly review: TokenReviewer;
  readonly audiences?: readonly string[];
  /** How long a successful review is reused for the same token. Default 60 s; 0 turns caching off. */
  readonly cacheTtlMs?: number;
  /** Bound on cached reviews; the oldest go first. Default 4096. */
  readonly cacheSize?: number;
  readonly now?: () => number;
}

export class KubeconfigError extends Error {
  constructor(
    readonly source: string,
    readonly reason: string,
    override readonly cause?: unknown,
  ) {
    super(`${source}: ${reason}`);
    this.name = "KubeconfigError";
  }
}

/**
 * A TokenReviewer talking to the API server of `kubeconfig` (a file), or, without one, of the
 * in-cluster service account (the control plane running as a pod). The Kubernetes client is loaded
 * here, on demand: it costs ~70 MB of memory, which every other process of offmesh (the ztunnel, the
 * agent, the lab) would otherwise pay for by sharing the CLI.
 */
export async function kubernetesTokenReviewer(kubeconfig?: string): Promise<TokenReviewer> {
  const { AuthenticationV1Api, KubeConfig } = await import("@kubernetes/client-node");
  const kc = new KubeConfig();
  const source = kubeconfig ?? "in-cluster service account (KUBERNETES_SERVICE_HOST)";
  try {
    if (kubeconfig !== undefined) {
      if (!existsSync(kubeconfig)) throw new KubeconfigError(kubeconfig, "no such file");
      kc.loadFromFile(kubeconfig);
    } else {
      if (!process.env.KUBERNETES_SERVICE_HOST) {
        throw new KubeconfigError(source, "not running in a pod; pass --kubeconfig <file>");
      }
      kc.loadFromCluster();
    }
  } catch (e) {
    if (e instanceof KubeconfigError) throw e;
    throw new KubeconfigError(source, `cannot be loaded: ${(e as Error).message}`, e);
  }
  if (!kc.getCurrentCluster()) throw new KubeconfigError(source, "has no current cluster");
  const api = kc.makeApiClient(AuthenticationV1Api);
  return (token, audiences) =>
    api.createTokenReview({
      body: {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenReview",
        spec: { token, audiences: [...audiences] },
      },
    });
}

interface CachedReview {
  readonly claims: ReviewedClaims;
  readonly expires: number;
}

interface ReviewedClaims {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly podName: string;
  readonly podUid: string;
  readonly node?: string;
}

export class TokenReviewAuthenticator implements ProxyAuthenticator {
  private readonly audiences: readonly string[];
  private readonly cacheTtlMs: number;
  private readonly cacheSize: number;
  private readonly now: () => number;
  // Keyed by a hash of the token so the cache never holds credentials.
  private readonly cache = new Map<string, CachedReview>();

  constructor(private readonly opts: TokenReviewAuthenticatorOptions) {
    this.audiences = opts.audiences ?? DEFAULT_TOKEN_AUDIENCES;
    this.cacheTtlMs = opts.cacheTtlMs ?? 60_000;
    this.cacheSize = opts.cacheSize ?? 4096;
    this.now = opts.now ?? Date.now;
  }

  async authenticate(
    bearer: string | undefined,
    snapshot: () => ClusterSnapshot,
  ): Promise<AuthenticationResult> {
    const token = bearerToken(bearer);
    if (token === undefined) return { error: "no credential" };
    const claims = await this.reviewed(token);
    if ("error" in claims) return claims;
    const current = snapshot();
    // Tokens from clusters older than 1.30 do not name the node; the cluster's answer is the one
    // that counts anyway, and proxyPodProblem compares the two when the token has one.
    const node = claims.node ?? current.pods.get(claims.podUid)?.nodeName ?? "";
    const who: ProxyIdentity = {
      namespace: claims.namespace,
      serviceAccount: claims.serviceAccount,
      podName: claims.podName,
      podUid: claims.podUid,
      node,
    };
    const problem = proxyPodProblem(who, current);
    return problem ? { error: `token not backed by the cluster: ${problem}` } : who;
  }

  private async reviewed(token: string): Promise<ReviewedClaims | { error: string }> {
    const key = createHash("sha256").update(token).digest("base64url");
    const now = this.now();
    const hit = this.cache.get(key);
    if (hit && hit.expires > now) return hit.claims;
    if (hit) this.cache.delete(key);
    let review: V1TokenReview;
    try {
      review = await this.opts.review(token, this.audiences);
    } catch (e) {
      return { error: `TokenReview failed: ${reviewErrorText(e)}` };
    }
    const claims = claimsOf(review, this.audiences);
    if (!("error" in claims) && this.cacheTtlMs > 0) {
      if (this.cache.size >= this.cacheSize) {
        const oldest = this.cache.keys().next();
        if (!oldest.done) this.cache.delete(oldest.value);
      }
      this.cache.set(key, { claims, expires: now + this.cacheTtlMs });
    }
    return claims;
  }
}

/** What a TokenReview answer says about the caller, or why it does not authenticate a node proxy. */
export function claimsOf(
  review: V1TokenReview,
  audiences: readonly string[],
): ReviewedClaims | { error: string } {
  const status = review.status;
  if (!status?.authenticated) {
    return { error: `token rejected by the API server${status?.error ? `: ${status.error}` : ""}` };
  }
  // An API server that does not support audiences echoes none; one that does must name ours.
  const granted = status.audiences;
  if (granted && granted.length > 0 && !granted.some((a) => audiences.includes(a))) {
    return { error: `token is for audiences ${granted.join(", ")}, not ${audiences.join(", ")}` };
  }
  const username = status.user?.username ?? "";
  const sub = parseServiceAccountSubject(username);
  if ("error" in sub) return { error: `token is not a service-account token: ${sub.error}` };
  const extra = status.user?.extra ?? {};
  const podName = single(extra[EXTRA_POD_NAME]);
  const podUid = single(extra[EXTRA_POD_UID]);
  if (podName === undefined || podUid === undefined) {
    return {
      error: `token of ${username} is not bound to a pod (no ${EXTRA_POD_NAME}/${EXTRA_POD_UID}); use a projected service-account token`,
    };
  }
  const node = single(extra[EXTRA_NODE_NAME]);
  return { ...sub, podName, podUid, ...(node !== undefined ? { node } : {}) };
}

function single(values: readonly string[] | undefined): string | undefined {
  return values && values.length === 1 && values[0] !== "" ? values[0] : undefined;
}

function reviewErrorText(e: unknown): string {
  const err = e as { code?: number; body?: unknown; message?: string };
  if (typeof err.code === "number") {
    const body = typeof err.body === "string" ? err.body : JSON.stringify(err.body ?? "");
    return `API server answered ${err.code}: ${body.slice(0, 200)}`;
  }
  return err.message ?? String(e);
}
