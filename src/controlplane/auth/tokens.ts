// How the control plane knows which node proxy is calling. On Kubernetes: a TokenReview of the
// proxy's projected service-account token (tokenreview.ts); the lab issues its own tokens, defined here:
// compact JWS (RFC 7515) with a fixed HS256 header, keyed by a secret in the control plane's state
// directory. Either way the token only names a pod: the pod's node, account and liveness are taken
// from the cluster, so a token for a deleted or moved pod grants nothing.
import { createStateFile, errorText } from "../state-file.js";
import { createHmac, createSecretKey, randomBytes, timingSafeEqual } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { ClusterPod, ClusterSnapshot } from "../../cluster/types.js";
import { namespaceProblem, serviceAccountProblem } from "../../identity/spiffe.js";

export const TOKEN_KEY_FILE = "token-key";
const TOKEN_KEY_BYTES = 32;
export const TOKEN_ISSUER = "offmesh";
/** How far in the future `iat` may be before the token is refused (clocks of lab nodes differ). */
export const TOKEN_CLOCK_SKEW_SECONDS = 60;

// The one header offmesh issues. Comparing the encoded segment, not a parsed `alg`, rules out
// algorithm confusion ("none", RS256 with the HMAC key as a public key) and any extra header field.
const HEADER = Buffer.from(JSON.stringify({ alg: "HS256", typ: "JWT" })).toString("base64url");
const SEGMENT = /^[A-Za-z0-9_-]+$/;

export interface ProxyTokenClaims {
  readonly iss: typeof TOKEN_ISSUER;
  /** `system:serviceaccount:<namespace>:<service-account>`, as Kubernetes names accounts. */
  readonly sub: string;
  readonly pod: { readonly name: string; readonly uid: string };
  readonly node: string;
  /** Seconds since the epoch. */
  readonly exp: number;
  readonly iat: number;
}

/** What the issuer chooses; `iss`, `iat` and `exp` are filled in. */
export type ProxyTokenSubject = Pick<ProxyTokenClaims, "sub" | "pod" | "node">;

/** The node proxy behind a request, as the cluster knows it. */
export interface ProxyIdentity {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly podName: string;
  readonly podUid: string;
  /** The node the cluster has the pod on. */
  readonly node: string;
}

export type AuthenticationResult = ProxyIdentity | { error: string };

export interface ProxyAuthenticator {
  /**
   * `bearer`: the token, or an `authorization` header value (`Bearer <token>`). `snapshot` is read
   * once the credential is verified, so an authenticator that waits (TokenReview) checks the pod
   * against the cluster as it is then, not as it was when the call began.
   */
  authenticate(
    bearer: string | undefined,
    snapshot: () => ClusterSnapshot,
  ): AuthenticationResult | Promise<AuthenticationResult>;
}

export class TokenKeyError extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
    override readonly cause?: unknown,
  ) {
    super(`${file}: ${reason}`);
    this.name = "TokenKeyError";
  }
}

const SUBJECT_PREFIX = "system:serviceaccount:";

export const serviceAccountSubject = (namespace: string, serviceAccount: string): string =>
  `${SUBJECT_PREFIX}${namespace}:${serviceAccount}`;

export function parseServiceAccountSubject(
  sub: string,
): { namespace: string; serviceAccount: string } | { error: string } {
  const parts = sub.startsWith(SUBJECT_PREFIX) ? sub.slice(SUBJECT_PREFIX.length).split(":") : [];
  const [namespace, serviceAccount] = parts;
  if (parts.length !== 2 || namespace === undefined || serviceAccount === undefined) {
    return { error: `subject ${JSON.stringify(sub)} is not ${SUBJECT_PREFIX}<namespace>:<service-account>` };
  }
  const problem = namespaceProblem(namespace) ?? serviceAccountProblem(serviceAccount);
  return problem ? { error: `subject ${JSON.stringify(sub)}: ${problem}` } : { namespace, serviceAccount };
}

const claimsSchema = z.strictObject({
  iss: z.literal(TOKEN_ISSUER),
  sub: z.string(),
  pod: z.strictObject({ name: z.string().min(1), uid: z.string().min(1) }),
  node: z.string().min(1),
  exp: z.number().int(),
  iat: z.number().int(),
});

/** The HMAC key in `dir/token-key`, created (random, mode 0600) on first start. */
export async function loadOrCreateTokenKey(dir: string): Promise<KeyObject> {
  const path = join(dir, TOKEN_KEY_FILE);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new TokenKeyError(path, `cannot be read: ${errorText(e)}`, e);
    }
    await mkdir(dir, { recursive: true, mode: 0o700 });
    text = randomBytes(TOKEN_KEY_BYTES).toString("base64url") + "\n";
    await createStateFile(path, text, 0o600, (why, cause) => new TokenKeyError(path, why, cause));
  }
  const encoded = text.trim();
  const bytes = Buffer.from(encoded, "base64url");
  // A corrupt key is an error, not a reason to mint a new one: that would silently invalidate
  // every proxy's credential.
  if (!SEGMENT.test(encoded) || bytes.length < TOKEN_KEY_BYTES || bytes.toString("base64url") !== encoded) {
    throw new TokenKeyError(path, `must hold one base64url line of at least ${TOKEN_KEY_BYTES} random bytes`);
  }
  return createSecretKey(bytes);
}

export function issueProxyToken(
  key: KeyObject,
  claims: ProxyTokenSubject,
  ttlSeconds: number,
  now: Date = new Date(),
): string {
  if (!Number.isInteger(ttlSeconds) || ttlSeconds <= 0) {
    throw new RangeError(`proxy token: ttlSeconds must be a positive integer, got ${ttlSeconds}`);
  }
  const sub = parseServiceAccountSubject(claims.sub);
  if ("error" in sub) throw new RangeError(`proxy token: ${sub.error}`);
  const iat = Math.floor(now.getTime() / 1000);
  const full: ProxyTokenClaims = {
    iss: TOKEN_ISSUER,
    sub: claims.sub,
    pod: { name: claims.pod.name, uid: claims.pod.uid },
    node: claims.node,
    exp: iat + ttlSeconds,
    iat,
  };
  const parsed = claimsSchema.safeParse(full);
  if (!parsed.success) throw new RangeError(`proxy token: ${schemaError(parsed.error)}`);
  const signed = `${HEADER}.${Buffer.from(JSON.stringify(full)).toString("base64url")}`;
  return `${signed}.${mac(key, signed)}`;
}

export function verifyProxyToken(
  key: KeyObject,
  token: string,
  now: Date,
): ProxyTokenClaims | { error: string } {
  const parts = token.split(".");
  if (parts.length !== 3 || !parts.every((p) => SEGMENT.test(p))) {
    return { error: "invalid token: not three base64url segments" };
  }
  const [header, payload, signature] = parts as [string, string, string];
  if (header !== HEADER) return { error: "invalid token: only HS256 tokens issued by offmesh are accepted" };
  const expected = Buffer.from(mac(key, `${header}.${payload}`));
  const given = Buffer.from(signature);
  // The signature is checked before the payload is even decoded; equal lengths first because
  // timingSafeEqual throws otherwise (the length of an HMAC is no secret).
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
    return { error: "invalid token: bad signature" };
  }
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  } catch {
    return { error: "invalid token: payload is not JSON" };
  }
  const parsed = claimsSchema.safeParse(json);
  if (!parsed.success) return { error: `invalid token: ${schemaError(parsed.error)}` };
  const claims = parsed.data;
  const sub = parseServiceAccountSubject(claims.sub);
  if ("error" in sub) return { error: `invalid token: ${sub.error}` };
  const nowSeconds = Math.floor(now.getTime() / 1000);
  if (nowSeconds >= claims.exp) {
    return { error: `invalid token: expired at ${isoSeconds(claims.exp)} (now ${isoSeconds(nowSeconds)})` };
  }
  if (claims.iat > nowSeconds + TOKEN_CLOCK_SKEW_SECONDS) {
    return {
      error: `invalid token: issued in the future (${isoSeconds(claims.iat)}, now ${isoSeconds(nowSeconds)})`,
    };
  }
  return claims;
}

/** Why the pod cannot act (or be acted for) any more, or undefined while it is alive. */
export function podTerminated(pod: ClusterPod): string | undefined {
  if (pod.terminating) return "is terminating";
  if (pod.phase === "Succeeded" || pod.phase === "Failed") return `has terminated (phase ${pod.phase})`;
  return undefined;
}

/**
 * Why the snapshot does not back `who` up: the pod must exist with that uid, name, namespace and
 * account, be on `who.node`, and be alive. Undefined when it does.
 */
export function proxyPodProblem(who: ProxyIdentity, snapshot: ClusterSnapshot): string | undefined {
  const pod = snapshot.pods.get(who.podUid);
  const shown = `pod ${who.namespace}/${who.podName} (uid ${who.podUid})`;
  if (!pod) return `${shown} does not exist`;
  if (pod.namespace !== who.namespace || pod.name !== who.podName) {
    return `${shown} does not exist (uid ${who.podUid} is pod ${pod.namespace}/${pod.name})`;
  }
  if (pod.serviceAccount !== who.serviceAccount) {
    return `${shown} runs as service account ${pod.namespace}/${pod.serviceAccount}, not ${who.namespace}/${who.serviceAccount}`;
  }
  if (pod.nodeName === undefined) return `${shown} is not scheduled on any node`;
  if (pod.nodeName !== who.node) return `${shown} is on node ${pod.nodeName}, not ${who.node}`;
  const terminated = podTerminated(pod);
  return terminated ? `${shown} ${terminated}` : undefined;
}

/** The lab's authenticator: an offmesh proxy token, checked against the cluster. */
export class TokenAuthenticator implements ProxyAuthenticator {
  constructor(
    private readonly key: KeyObject,
    private readonly now: () => Date = () => new Date(),
  ) {}

  authenticate(bearer: string | undefined, snapshot: () => ClusterSnapshot): AuthenticationResult {
    const token = bearerToken(bearer);
    if (token === undefined) return { error: "no credential" };
    const claims = verifyProxyToken(this.key, token, this.now());
    if ("error" in claims) return claims;
    const sub = parseServiceAccountSubject(claims.sub);
    if ("error" in sub) return { error: `invalid token: ${sub.error}` };
    const who: ProxyIdentity = {
      namespace: sub.namespace,
      serviceAccount: sub.serviceAccount,
      podName: claims.pod.name,
      podUid: claims.pod.uid,
      node: claims.node,
    };
    const problem = proxyPodProblem(who, snapshot());
    return problem ? { error: `token not backed by the cluster: ${problem}` } : who;
  }
}

/** The token in a bearer credential, accepting the bare token or an `authorization` header value. */
export function bearerToken(bearer: string | undefined): string | undefined {
  const text = bearer?.trim() ?? "";
  const m = /^bearer(?:\s+(.*))?$/is.exec(text);
  const token = (m ? (m[1] ?? "") : text).trim();
  return token === "" ? undefined : token;
}

function mac(key: KeyObject, signed: string): string {
  return createHmac("sha256", key).update(signed).digest("base64url");
}

function schemaError(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return "claims are malformed";
  const path = issue.path.length > 0 ? issue.path.join(".") : "claims";
  return `${path}: ${issue.message}`;
}

const isoSeconds = (s: number): string => new Date(s * 1000).toISOString();
