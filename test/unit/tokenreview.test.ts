import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { V1TokenReview } from "@kubernetes/client-node";
import type { ClusterPod, ClusterSnapshot } from "../../src/cluster/types.js";
import {
  claimsOf,
  EXTRA_NODE_NAME,
  EXTRA_POD_NAME,
  EXTRA_POD_UID,
  TokenReviewAuthenticator,
} from "../../src/controlplane/auth/tokenreview.js";
import { pod } from "../support/cluster.js";

const ZTUNNEL = pod({
  uid: "uid-zt-1",
  name: "ztunnel-abcde",
  namespace: "istio-system",
  nodeName: "master-dpu",
  serviceAccount: "ztunnel",
});

function snapshot(...pods: ClusterPod[]): ClusterSnapshot {
  return {
    nodes: new Map(),
    pods: new Map(pods.map((p) => [p.uid, p])),
    namespaces: new Map(),
    services: new Map(),
    policies: new Map(),
  };
}

function review(over: Partial<NonNullable<V1TokenReview["status"]>> = {}, node?: string): V1TokenReview {
  return {
    spec: {},
    status: {
      authenticated: true,
      audiences: ["istio-ca"],
      user: {
        username: "system:serviceaccount:istio-system:ztunnel",
        extra: {
          [EXTRA_POD_NAME]: [ZTUNNEL.name],
          [EXTRA_POD_UID]: [ZTUNNEL.uid],
          ...(node ? { [EXTRA_NODE_NAME]: [node] } : {}),
        },
      },
      ...over,
    },
  };
}

describe("TokenReview answers", () => {
  it("names the pod, its account and (when the token has it) its node", () => {
    assert.deepEqual(claimsOf(review({}, "master-dpu"), ["istio-ca"]), {
      namespace: "istio-system",
      serviceAccount: "ztunnel",
      podName: ZTUNNEL.name,
      podUid: ZTUNNEL.uid,
      node: "master-dpu",
    });
  });

  it("refuses unauthenticated tokens with the API server's reason", () => {
    assert.deepEqual(claimsOf(review({ authenticated: false, error: "token has expired" }), ["istio-ca"]), {
      error: "token rejected by the API server: token has expired",
    });
  });

  it("refuses a token for another audience", () => {
    const r = claimsOf(review({ audiences: ["https://kubernetes.default.svc"] }), ["istio-ca"]);
    assert.deepEqual(r, { error: "token is for audiences https://kubernetes.default.svc, not istio-ca" });
  });

  it("refuses user tokens and tokens not bound to a pod", () => {
    const user = review({ user: { username: "alice", extra: {} } });
    assert.match((claimsOf(user, ["istio-ca"]) as { error: string }).error, /not a service-account token/);
    const unbound = review({ user: { username: "system:serviceaccount:istio-system:ztunnel" } });
    assert.match((claimsOf(unbound, ["istio-ca"]) as { error: string }).error, /not bound to a pod/);
  });
});

describe("TokenReviewAuthenticator", () => {
  const reviewer =
    (answer: V1TokenReview, calls: { token: string; audiences: readonly string[] }[]) =>
    (token: string, audiences: readonly string[]): Promise<V1TokenReview> => {
      calls.push({ token, audiences });
      return Promise.resolve(answer);
    };

  it("authenticates a live pod's token, taking the node from the cluster when the token has none", async () => {
    const calls: { token: string; audiences: readonly string[] }[] = [];
    const auth = new TokenReviewAuthenticator({ review: reviewer(review(), calls) });
    const who = await auth.authenticate("Bearer t0k", () => snapshot(ZTUNNEL));
    assert.deepEqual(who, {
      namespace: "istio-system",
      serviceAccount: "ztunnel",
      podName: ZTUNNEL.name,
      podUid: ZTUNNEL.uid,
      node: "master-dpu",
    });
    assert.deepEqual(calls, [{ token: "t0k", audiences: ["istio-ca"] }]);
  });

  it("refuses a token whose pod is gone or on another node than the token says", async () => {
    const auth = new TokenReviewAuthenticator({ review: reviewer(review({}, "worker1-dpu"), []) });
    const moved = await auth.authenticate("t", () => snapshot(ZTUNNEL));
    assert.match((moved as { error: string }).error, /is on node master-dpu, not worker1-dpu/);
    const gone = await auth.authenticate("t", () => snapshot());
    assert.match((gone as { error: string }).error, /does not exist/);
  });

  it("caches a successful review for the TTL and never caches a failure", async () => {
    let now = 1_000_000;
    const calls: { token: string; audiences: readonly string[] }[] = [];
    const auth = new TokenReviewAuthenticator({
      review: reviewer(review(), calls),
      cacheTtlMs: 1000,
      now: () => now,
    });
    await auth.authenticate("t", () => snapshot(ZTUNNEL));
    await auth.authenticate("t", () => snapshot(ZTUNNEL));
    assert.equal(calls.length, 1);
    now += 1001;
    await auth.authenticate("t", () => snapshot(ZTUNNEL));
    assert.equal(calls.length, 2);

    const failing: { token: string; audiences: readonly string[] }[] = [];
    const denied = new TokenReviewAuthenticator({
      review: reviewer(review({ authenticated: false }), failing),
    });
    await denied.authenticate("t", () => snapshot(ZTUNNEL));
    await denied.authenticate("t", () => snapshot(ZTUNNEL));
    assert.equal(failing.length, 2);
  });

  it("reports an unreachable API server as an authentication error, not a crash", async () => {
    const auth = new TokenReviewAuthenticator({
      review: () =>
        Promise.reject(
          Object.assign(new Error("HTTP-Code: 403"), { code: 403, body: { reason: "Forbidden" } }),
        ),
    });
    const r = await auth.authenticate("t", () => snapshot(ZTUNNEL));
    assert.match((r as { error: string }).error, /^TokenReview failed: API server answered 403: .*Forbidden/);
    assert.deepEqual(await auth.authenticate(undefined, () => snapshot(ZTUNNEL)), { error: "no credential" });
  });
});
