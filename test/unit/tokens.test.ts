import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHmac, createSecretKey, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ClusterPod, ClusterSnapshot } from "../../src/cluster/types.js";
import {
  issueProxyToken,
  loadOrCreateTokenKey,
  parseServiceAccountSubject,
  serviceAccountSubject,
  TOKEN_KEY_FILE,
  TokenAuthenticator,
  TokenKeyError,
  verifyProxyToken,
} from "../../src/controlplane/auth/tokens.js";
import type { ProxyTokenClaims, ProxyTokenSubject } from "../../src/controlplane/auth/tokens.js";
import { pod } from "../support/cluster.js";

const NOW = new Date("2026-03-01T12:00:00Z");
const NOW_S = NOW.getTime() / 1000;
const key = createSecretKey(randomBytes(32));

const ZTUNNEL = pod({
  uid: "uid-zt-1",
  name: "ztunnel-abcde",
  namespace: "istio-system",
  nodeName: "master-dpu",
  serviceAccount: "ztunnel",
});

const SUBJECT: ProxyTokenSubject = {
  sub: "system:serviceaccount:istio-system:ztunnel",
  pod: { name: ZTUNNEL.name, uid: ZTUNNEL.uid },
  node: "master-dpu",
};

function snapshot(...pods: ClusterPod[]): ClusterSnapshot {
  return {
    nodes: new Map(),
    pods: new Map(pods.map((p) => [p.uid, p])),
    namespaces: new Map(),
    services: new Map(),
    policies: new Map(),
  };
}

const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString("base64url");
const sign = (signed: string): string => createHmac("sha256", key).update(signed).digest("base64url");

function errorOf(r: object): string {
  assert.ok("error" in r && typeof r.error === "string", `expected an error, got ${JSON.stringify(r)}`);
  return r.error;
}

describe("proxy tokens", () => {
  it("issues a token that verifies to its claims", () => {
    const token = issueProxyToken(key, SUBJECT, 3600, NOW);
    assert.equal(token.split(".").length, 3);
    assert.deepEqual(verifyProxyToken(key, token, NOW), {
      iss: "offmesh",
      sub: SUBJECT.sub,
      pod: SUBJECT.pod,
      node: "master-dpu",
      iat: NOW_S,
      exp: NOW_S + 3600,
    });
  });

  it("uses the fixed HS256 header", () => {
    const [header] = issueProxyToken(key, SUBJECT, 60, NOW).split(".");
    assert.deepEqual(JSON.parse(Buffer.from(header ?? "", "base64url").toString()), {
      alg: "HS256",
      typ: "JWT",
    });
  });

  it("refuses an expired token, at exp exactly", () => {
    const token = issueProxyToken(key, SUBJECT, 60, NOW);
    assert.ok(!("error" in verifyProxyToken(key, token, new Date(NOW.getTime() + 59_000))));
    assert.equal(
      errorOf(verifyProxyToken(key, token, new Date(NOW.getTime() + 60_000))),
      "invalid token: expired at 2026-03-01T12:01:00.000Z (now 2026-03-01T12:01:00.000Z)",
    );
  });

  it("refuses a token issued in the future beyond the allowed skew", () => {
    const token = issueProxyToken(key, SUBJECT, 3600, new Date(NOW.getTime() + 120_000));
    assert.match(errorOf(verifyProxyToken(key, token, NOW)), /^invalid token: issued in the future/);
    const close = issueProxyToken(key, SUBJECT, 3600, new Date(NOW.getTime() + 30_000));
    assert.ok(!("error" in verifyProxyToken(key, close, NOW)));
  });

  it("refuses a token signed with another key", () => {
    const token = issueProxyToken(createSecretKey(randomBytes(32)), SUBJECT, 3600, NOW);
    assert.equal(errorOf(verifyProxyToken(key, token, NOW)), "invalid token: bad signature");
  });

  it("refuses a tampered payload", () => {
    const [header, payload, sig] = issueProxyToken(key, SUBJECT, 3600, NOW).split(".");
    const claims = JSON.parse(Buffer.from(payload ?? "", "base64url").toString()) as ProxyTokenClaims;
    const forged = b64({ ...claims, node: "worker1-dpu" });
    assert.equal(
      errorOf(verifyProxyToken(key, `${header}.${forged}.${sig}`, NOW)),
      "invalid token: bad signature",
    );
  });

  it("refuses a tampered or truncated signature", () => {
    const token = issueProxyToken(key, SUBJECT, 3600, NOW);
    const flipped = token.slice(0, -1) + (token.endsWith("A") ? "B" : "A");
    assert.equal(errorOf(verifyProxyToken(key, flipped, NOW)), "invalid token: bad signature");
    assert.equal(errorOf(verifyProxyToken(key, token.slice(0, -4), NOW)), "invalid token: bad signature");
  });

  it("refuses other algorithms, even when the signature matches", () => {
    const payload = token3Payload();
    for (const header of [{ alg: "none", typ: "JWT" }, { alg: "HS512", typ: "JWT" }, { alg: "HS256" }]) {
      const signed = `${b64(header)}.${payload}`;
      assert.equal(
        errorOf(verifyProxyToken(key, `${signed}.${sign(signed)}`, NOW)),
        "invalid token: only HS256 tokens issued by offmesh are accepted",
      );
    }
  });

  it("refuses garbled tokens", () => {
    for (const bad of ["", "abc", "a.b", "a.b.c.d", "a..c", "a.b+/.c", "a.b.c "]) {
      assert.equal(
        errorOf(verifyProxyToken(key, bad, NOW)),
        "invalid token: not three base64url segments",
        bad,
      );
    }
  });

  it("refuses correctly signed claims that are malformed", () => {
    const header = issueProxyToken(key, SUBJECT, 60, NOW).split(".")[0] ?? "";
    const base = { iss: "offmesh", ...SUBJECT, iat: NOW_S, exp: NOW_S + 60 };
    const cases: ReadonlyArray<[unknown, RegExp]> = [
      [{ ...base, iss: "someone-else" }, /^invalid token: iss: /],
      [{ ...base, extra: true }, /^invalid token: claims: /],
      [{ ...base, exp: "soon" }, /^invalid token: exp: /],
      [{ ...base, pod: { name: "x" } }, /^invalid token: pod\.uid: /],
      [
        { ...base, sub: "istio-system:ztunnel" },
        /^invalid token: subject "istio-system:ztunnel" is not system:serviceaccount:/,
      ],
      [[1, 2], /^invalid token: claims: /],
    ];
    for (const [claims, message] of cases) {
      const signed = `${header}.${b64(claims)}`;
      assert.match(errorOf(verifyProxyToken(key, `${signed}.${sign(signed)}`, NOW)), message);
    }
    const notJson = `${header}.${Buffer.from("{nope").toString("base64url")}`;
    assert.equal(
      errorOf(verifyProxyToken(key, `${notJson}.${sign(notJson)}`, NOW)),
      "invalid token: payload is not JSON",
    );
  });

  it("refuses to issue tokens it would not accept", () => {
    assert.throws(() => issueProxyToken(key, SUBJECT, 0, NOW), /ttlSeconds must be a positive integer/);
    assert.throws(() => issueProxyToken(key, SUBJECT, 1.5, NOW), RangeError);
    assert.throws(
      () => issueProxyToken(key, { ...SUBJECT, sub: "ztunnel" }, 60, NOW),
      /is not system:serviceaccount:/,
    );
    assert.throws(() => issueProxyToken(key, { ...SUBJECT, node: "" }, 60, NOW), /node: /);
  });

  it("formats and parses Kubernetes service account subjects", () => {
    assert.equal(
      serviceAccountSubject("istio-system", "ztunnel"),
      "system:serviceaccount:istio-system:ztunnel",
    );
    assert.deepEqual(parseServiceAccountSubject("system:serviceaccount:istio-system:ztunnel"), {
      namespace: "istio-system",
      serviceAccount: "ztunnel",
    });
    assert.ok("error" in parseServiceAccountSubject("system:serviceaccount:a:b:c"));
    assert.ok("error" in parseServiceAccountSubject("system:serviceaccount:A:b"));
    assert.ok("error" in parseServiceAccountSubject("system:node:master"));
  });
});

function token3Payload(): string {
  return issueProxyToken(key, SUBJECT, 3600, NOW).split(".")[1] ?? "";
}

describe("TokenAuthenticator", () => {
  const auth = new TokenAuthenticator(key, () => NOW);
  const token = issueProxyToken(key, SUBJECT, 3600, NOW);

  it("authenticates a live proxy pod, taking its node from the cluster", () => {
    assert.deepEqual(
      auth.authenticate(token, () => snapshot(ZTUNNEL)),
      {
        namespace: "istio-system",
        serviceAccount: "ztunnel",
        podName: "ztunnel-abcde",
        podUid: "uid-zt-1",
        node: "master-dpu",
      },
    );
  });

  it("accepts an authorization header value", () => {
    assert.ok(!("error" in auth.authenticate(`Bearer ${token}`, () => snapshot(ZTUNNEL))));
    assert.ok(!("error" in auth.authenticate(`bearer  ${token} `, () => snapshot(ZTUNNEL))));
  });

  it("answers 'no credential' without a token", () => {
    for (const none of [undefined, "", "  ", "Bearer", "Bearer   "]) {
      assert.deepEqual(
        auth.authenticate(none, () => snapshot(ZTUNNEL)),
        { error: "no credential" },
        String(none),
      );
    }
  });

  it("answers 'invalid token' for a garbled or expired one", () => {
    assert.deepEqual(
      auth.authenticate("Bearer garbage", () => snapshot(ZTUNNEL)),
      {
        error: "invalid token: not three base64url segments",
      },
    );
    const late = new TokenAuthenticator(key, () => new Date(NOW.getTime() + 3_600_000));
    assert.match(errorOf(late.authenticate(token, () => snapshot(ZTUNNEL))), /^invalid token: expired at/);
  });

  const refusals: ReadonlyArray<[string, ClusterPod[], string]> = [
    ["the pod is gone", [], "pod istio-system/ztunnel-abcde (uid uid-zt-1) does not exist"],
    [
      "the uid is another pod's",
      [{ ...ZTUNNEL, name: "ztunnel-zzzzz" }],
      "pod istio-system/ztunnel-abcde (uid uid-zt-1) does not exist (uid uid-zt-1 is pod istio-system/ztunnel-zzzzz)",
    ],
    [
      "the pod was replaced (same name, new uid)",
      [{ ...ZTUNNEL, uid: "uid-zt-2" }],
      "pod istio-system/ztunnel-abcde (uid uid-zt-1) does not exist",
    ],
    [
      "the pod runs as another account",
      [{ ...ZTUNNEL, serviceAccount: "default" }],
      "pod istio-system/ztunnel-abcde (uid uid-zt-1) runs as service account istio-system/default, not istio-system/ztunnel",
    ],
    [
      "the pod is on another node than the token claims",
      [{ ...ZTUNNEL, nodeName: "worker1-dpu" }],
      "pod istio-system/ztunnel-abcde (uid uid-zt-1) is on node worker1-dpu, not master-dpu",
    ],
    [
      "the pod is unscheduled",
      [pod({ uid: ZTUNNEL.uid, name: ZTUNNEL.name, namespace: "istio-system", serviceAccount: "ztunnel" })],
      "pod istio-system/ztunnel-abcde (uid uid-zt-1) is not scheduled on any node",
    ],
    [
      "the pod is terminating",
      [{ ...ZTUNNEL, terminating: true }],
      "pod istio-system/ztunnel-abcde (uid uid-zt-1) is terminating",
    ],
    [
      "the pod has failed",
      [{ ...ZTUNNEL, phase: "Failed" }],
      "pod istio-system/ztunnel-abcde (uid uid-zt-1) has terminated (phase Failed)",
    ],
  ];
  for (const [what, pods, reason] of refusals) {
    it(`refuses a valid token when ${what}`, () => {
      assert.deepEqual(
        auth.authenticate(token, () => snapshot(...pods)),
        {
          error: `token not backed by the cluster: ${reason}`,
        },
      );
    });
  }
});

describe("loadOrCreateTokenKey", () => {
  const dirs: string[] = [];
  const tempDir = async (): Promise<string> => {
    const d = await mkdtemp(join(tmpdir(), "offmesh-tokens-"));
    dirs.push(d);
    return d;
  };
  after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

  it("creates a 0600 key on first start and reloads the same key", async () => {
    const dir = join(await tempDir(), "state");
    const first = await loadOrCreateTokenKey(dir);
    const st = await stat(join(dir, TOKEN_KEY_FILE));
    assert.equal(st.mode & 0o777, 0o600);
    const second = await loadOrCreateTokenKey(dir);
    assert.ok(first.equals(second));
    const token = issueProxyToken(first, SUBJECT, 60, NOW);
    assert.ok(!("error" in verifyProxyToken(second, token, NOW)));
    assert.ok(
      Buffer.from((await readFile(join(dir, TOKEN_KEY_FILE), "utf8")).trim(), "base64url").length >= 32,
    );
  });

  it("refuses a corrupt or short key instead of replacing it", async () => {
    for (const text of ["not base64!\n", Buffer.alloc(8).toString("base64url") + "\n", ""]) {
      const dir = await tempDir();
      await writeFile(join(dir, TOKEN_KEY_FILE), text, { mode: 0o600 });
      await assert.rejects(loadOrCreateTokenKey(dir), (e: unknown) => {
        assert.ok(e instanceof TokenKeyError);
        assert.equal(e.file, join(dir, TOKEN_KEY_FILE));
        assert.match(e.message, /token-key: must hold one base64url line of at least 32 random bytes/);
        return true;
      });
      assert.equal(await readFile(join(dir, TOKEN_KEY_FILE), "utf8"), text);
    }
  });
});
