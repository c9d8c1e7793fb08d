import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

// The pair channel's messages: the CPU agent tells its DPU's agent about a new meshed pod before
// the pod's CNI ADD returns, because the DPU otherwise learns the pod's address only from the API,
// which shows it after the ADD (and the pod's first connections would leave the DPU in clear).
//
// One JSON line each way per TCP connection. Both directions are authenticated with HMAC-SHA256
// under a key the pair shares: the request over protocol, timestamp, nonce and body; the reply over
// the request's MAC and the reply body, so a forged "held" answer cannot let a pod start talking.
// Bodies travel as JSON *strings* inside the envelope, so that the MAC covers exactly the bytes
// the receiver parses (no canonical-JSON question).

export const PAIR_PROTOCOL = "offmesh-pair/1";
export const DEFAULT_PAIR_PORT = 15031;
export const DEFAULT_PAIR_TIMEOUT_MS = 5000;
export const DEFAULT_PAIR_GRACE_MS = 60_000;
/** How far a request's timestamp may be from the receiver's clock; also the replay window. */
export const PAIR_CLOCK_SKEW_MS = 60_000;
/** Upper bound of one line: a pod reference with a few addresses is far below it. */
export const MAX_PAIR_LINE_CHARS = 16 * 1024;

/** A pod as the CPU tells its DPU about it: enough to capture it and to match it to the API later. */
export interface PairPod {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  /** The node the pod runs on (must be the DPU's paired CPU). */
  readonly node: string;
  /** Addresses without prefix length. */
  readonly ips: readonly string[];
}

export type PairBody =
  /** Capture this pod now; answer once it is in the DPU's set. */
  | { readonly op: "hold"; readonly pod: PairPod }
  /** The pod's sandbox is gone on the CPU: stop capturing it. */
  | { readonly op: "release"; readonly uid: string };

export type PairOp = PairBody["op"];

export type PairReply =
  | { readonly ok: true; readonly detail: string; readonly captured?: readonly string[] }
  /** `retryable`: the refusal may go away by itself (the DPU is starting, its view lags). */
  | { readonly ok: false; readonly error: string; readonly retryable: boolean };

export type Parsed<T> =
  { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

/** A request line taken apart, not yet verified; its `mac` is what the reply is bound to. */
export interface RequestEnvelope {
  readonly proto: string;
  readonly ts: number;
  readonly nonce: string;
  readonly body: string;
  readonly mac: string;
}

const requestMacInput = (ts: number, nonce: string, body: string): string =>
  `${PAIR_PROTOCOL} request\n${ts}\n${nonce}\n${body}`;
const replyMacInput = (requestMac: string, body: string): string =>
  `${PAIR_PROTOCOL} reply\n${requestMac}\n${body}`;

function hmac(key: Buffer, text: string): string {
  return createHmac("sha256", key).update(text, "utf8").digest("hex");
}

/** Constant-time comparison of two hex MACs (a length difference is not secret). */
function sameMac(a: string, b: string): boolean {
  const x = Buffer.from(a, "utf8");
  const y = Buffer.from(b, "utf8");
  return x.length === y.length && timingSafeEqual(x, y);
}

export interface SignedRequest {
  /** The request line, newline included. */
  readonly line: string;
  /** Its MAC: the reply is bound to it. */
  readonly mac: string;
}

/** A request line for `body`, timestamped `now` (ms since the epoch) with a fresh nonce. */
export function signRequest(key: Buffer, body: PairBody, now: number, nonce = randomNonce()): SignedRequest {
  const text = JSON.stringify(body);
  const ts = Math.floor(now);
  const mac = hmac(key, requestMacInput(ts, nonce, text));
  const envelope: RequestEnvelope = { proto: PAIR_PROTOCOL, ts, nonce, body: text, mac };
  return { line: JSON.stringify(envelope) + "\n", mac };
}

export const randomNonce = (): string => randomBytes(16).toString("hex");

/** The reply line to the request whose MAC is `requestMac` ("" when the request had none). */
export function signReply(key: Buffer, requestMac: string, reply: PairReply): string {
  const body = JSON.stringify(reply);
  return JSON.stringify({ body, mac: hmac(key, replyMacInput(requestMac, body)) }) + "\n";
}

/** Check a reply's MAC and shape (the caller side). */
export function openReply(key: Buffer, requestMac: string, line: string): Parsed<PairReply> {
  const json = parseJson(line);
  if (!json.ok) return json;
  const env = json.value;
  if (!isRecord(env) || typeof env.body !== "string" || typeof env.mac !== "string")
    return bad(`a reply must be an object with "body" and "mac" strings`);
  const body = parseJson(env.body);
  const reply = body.ok ? parseReply(body.value) : body;
  if (!sameMac(env.mac, hmac(key, replyMacInput(requestMac, env.body)))) {
    // The peer's own words still help whoever reads the error (typically: "bad credential").
    const said = reply.ok && !reply.value.ok ? ` (it said: ${reply.value.error})` : "";
    return bad(`the reply's MAC does not verify: the DPU's pair key differs from this node's${said}`);
  }
  return reply;
}

function parseReply(v: unknown): Parsed<PairReply> {
  if (!isRecord(v) || typeof v.ok !== "boolean") return bad(`a reply body must be an object with "ok"`);
  if (!v.ok) {
    if (typeof v.error !== "string" || typeof v.retryable !== "boolean")
      return bad(`a refusal must carry "error" and "retryable"`);
    return { ok: true, value: { ok: false, error: v.error, retryable: v.retryable } };
  }
  if (typeof v.detail !== "string") return bad(`an acceptance must carry "detail"`);
  if (v.captured !== undefined && !isStringList(v.captured))
    return bad(`"captured" must be a list of strings`);
  return {
    ok: true,
    value: { ok: true, detail: v.detail, ...(v.captured !== undefined ? { captured: v.captured } : {}) },
  };
}

export function parseRequestLine(line: string): Parsed<RequestEnvelope> {
  const json = parseJson(line);
  if (!json.ok) return json;
  const v = json.value;
  if (!isRecord(v)) return bad("a request must be a JSON object");
  if (v.proto !== PAIR_PROTOCOL) return bad(`"proto" must be ${PAIR_PROTOCOL}`);
  if (typeof v.ts !== "number" || !Number.isSafeInteger(v.ts)) return bad(`"ts" must be milliseconds`);
  if (typeof v.nonce !== "string" || !/^[0-9a-f]{16,64}$/.test(v.nonce))
    return bad(`"nonce" must be 16 to 64 hex digits`);
  if (typeof v.body !== "string") return bad(`"body" must be a string`);
  if (typeof v.mac !== "string" || !/^[0-9a-f]{64}$/.test(v.mac))
    return bad(`"mac" must be 64 hex digits (HMAC-SHA256)`);
  return { ok: true, value: { proto: v.proto, ts: v.ts, nonce: v.nonce, body: v.body, mac: v.mac } };
}

export type Verified =
  | { readonly ok: true; readonly body: PairBody }
  /** `credential`: the MAC, timestamp or replay check failed; else the body is malformed. */
  | { readonly ok: false; readonly reason: string; readonly credential: boolean };

/**
 * Checks requests' credentials: MAC first (nothing of an unauthenticated request is trusted, not
 * even its timestamp), then the timestamp window, then replays — a MAC seen within the window is
 * refused, so a captured request cannot be sent again. Remembered MACs expire with the window.
 */
export class RequestVerifier {
  private readonly seen = new Map<string, number>();
  private readonly skewMs: number;

  constructor(
    private readonly key: Buffer,
    private readonly now: () => number = Date.now,
    skewMs = PAIR_CLOCK_SKEW_MS,
  ) {
    this.skewMs = skewMs;
  }

  verify(env: RequestEnvelope): Verified {
    const expected = hmac(this.key, requestMacInput(env.ts, env.nonce, env.body));
    if (!sameMac(env.mac, expected))
      return { ok: false, credential: true, reason: "bad credential: the request's MAC does not verify" };
    const now = this.now();
    if (Math.abs(now - env.ts) > this.skewMs)
      return {
        ok: false,
        credential: true,
        reason: `stale request: its timestamp is ${Math.round((now - env.ts) / 1000)} s from this node's clock (at most ±${this.skewMs / 1000} s)`,
      };
    this.forgetBefore(now - this.skewMs);
    if (this.seen.has(env.mac))
      return {
        ok: false,
        credential: true,
        reason: "replayed request: this exact request was already taken",
      };
    const body = parseBody(env.body);
    if (!body.ok) return { ok: false, credential: false, reason: `malformed body: ${body.error}` };
    this.seen.set(env.mac, env.ts);
    return { ok: true, body: body.value };
  }

  /** How many MACs are remembered (for tests of the expiry). */
  get remembered(): number {
    return this.seen.size;
  }

  private forgetBefore(oldest: number): void {
    for (const [mac, ts] of this.seen) if (ts < oldest) this.seen.delete(mac);
  }
}

export function parseBody(text: string): Parsed<PairBody> {
  const json = parseJson(text);
  if (!json.ok) return json;
  const v = json.value;
  if (!isRecord(v)) return bad("the body must be a JSON object");
  if (v.op === "release") {
    if (!nonEmpty(v.uid)) return bad(`"uid" must be a non-empty string`);
    return { ok: true, value: { op: "release", uid: v.uid } };
  }
  if (v.op !== "hold") return bad(`"op" must be hold or release`);
  const p = v.pod;
  if (!isRecord(p)) return bad(`"pod" must be an object`);
  for (const key of ["uid", "name", "namespace", "node"] as const)
    if (!nonEmpty(p[key])) return bad(`"pod.${key}" must be a non-empty string`);
  if (!isStringList(p.ips) || p.ips.length === 0) return bad(`"pod.ips" must be a non-empty list of strings`);
  return {
    ok: true,
    value: {
      op: "hold",
      pod: {
        uid: p.uid as string,
        name: p.name as string,
        namespace: p.namespace as string,
        node: p.node as string,
        ips: p.ips,
      },
    },
  };
}

function parseJson(text: string): Parsed<unknown> {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (err) {
    return bad(`not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
}

const bad = (error: string): { ok: false; error: string } => ({ ok: false, error });
const nonEmpty = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= 253;
const isStringList = (v: unknown): v is string[] =>
  Array.isArray(v) && v.length <= 16 && v.every((x) => typeof x === "string");
const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
