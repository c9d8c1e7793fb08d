import type { Socket } from "node:net";
import { connectTcp, isConnectError } from "../sockets/index.js";
import type { NodeRef } from "../topology/types.js";
import { MAX_PAIR_LINE_CHARS, openReply, signRequest } from "./pair.js";
import type { PairBody, PairPod, PairReply } from "./pair.js";

// The CPU side of the pair channel: one signed request per TCP connection to the DPU agent, from
// this node's own address (the DPU checks it), inside the node's network namespace.

export type PairTransportFailure = "unreachable" | "timeout" | "closed";

/** One exchange failed below the protocol: no connection, no answer in time, or a hang-up. */
export class PairTransportError extends Error {
  constructor(
    readonly kind: PairTransportFailure,
    message: string,
  ) {
    super(message);
    this.name = "PairTransportError";
  }
}

export interface ExchangeTarget {
  readonly host: string;
  readonly port: number;
  /** Source address to send from (this node's address); default: the kernel's choice. */
  readonly localAddress?: string;
  /** Network namespace to open the socket in; default: the process's own. */
  readonly netnsPath?: string;
}

/** Send one line and read one line back, within `timeoutMs` in all. */
export async function exchangeLine(target: ExchangeTarget, line: string, timeoutMs: number): Promise<string> {
  const where = `${target.host}:${target.port}`;
  const started = Date.now();
  let socket: Socket;
  try {
    socket = await connectTcp({
      host: target.host,
      port: target.port,
      timeoutMs: Math.max(1, timeoutMs),
      noDelay: true,
      ...(target.localAddress ? { localAddress: target.localAddress } : {}),
      ...(target.netnsPath ? { netnsPath: target.netnsPath } : {}),
    });
  } catch (err) {
    if (!isConnectError(err)) throw err;
    const kind = err.code === "ETIMEDOUT" ? "timeout" : "unreachable";
    throw new PairTransportError(kind, `cannot connect to ${where}: ${err.code}`);
  }
  const remaining = Math.max(1, timeoutMs - (Date.now() - started));
  return new Promise<string>((resolve, reject) => {
    let received = "";
    let settled = false;
    const finish = (outcome: string | PairTransportError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (outcome instanceof PairTransportError) reject(outcome);
      else resolve(outcome);
    };
    const timer = setTimeout(
      () => finish(new PairTransportError("timeout", `${where} did not answer within ${timeoutMs} ms`)),
      remaining,
    );
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      received += chunk;
      const end = received.indexOf("\n");
      if (end >= 0) finish(received.slice(0, end));
      else if (received.length > MAX_PAIR_LINE_CHARS)
        finish(new PairTransportError("closed", `${where} sent more than ${MAX_PAIR_LINE_CHARS} characters`));
    });
    socket.on("end", () =>
      finish(
        received.trim() !== ""
          ? received
          : new PairTransportError("closed", `${where} closed the connection without answering`),
      ),
    );
    socket.on("error", (err) =>
      finish(new PairTransportError("closed", `connection to ${where} failed: ${err.message}`)),
    );
    socket.write(line);
  });
}

export type PairFailure = PairTransportFailure | "refused" | "bad-answer";

/** A call to the DPU agent did not end in the DPU holding (or releasing) the pod. */
export class PairCallError extends Error {
  constructor(
    readonly kind: PairFailure,
    /** The DPU called. */
    readonly dpu: string,
    message: string,
    readonly attempts: number,
  ) {
    super(message);
    this.name = "PairCallError";
  }
}

export type PairAccepted = Extract<PairReply, { ok: true }>;

export interface PairRoute {
  /** This node's address: the source the DPU admits. */
  readonly from: string;
  readonly to: NodeRef;
}

/** The pair channel as the agent calls it. */
export interface PairCaller {
  /** Resolves once the DPU holds the pod; retries inside the call's deadline. */
  hold(route: PairRoute, pod: PairPod): Promise<PairAccepted>;
  /** One attempt: a release that fails is repaired by the DPU's resync. */
  release(route: PairRoute, uid: string): Promise<PairAccepted>;
}

export interface PairClientOptions {
  readonly key: Buffer;
  readonly port: number;
  /** Deadline of one call, retries included. */
  readonly timeoutMs: number;
  readonly netnsPath?: string;
  /** Clock of the request timestamps (tests sign with a skewed one). */
  readonly now?: () => number;
}

const FIRST_BACKOFF_MS = 50;
const MAX_BACKOFF_MS = 500;

export class PairClient implements PairCaller {
  constructor(private readonly opts: PairClientOptions) {}

  hold(route: PairRoute, pod: PairPod): Promise<PairAccepted> {
    return this.call(route, { op: "hold", pod }, true);
  }

  release(route: PairRoute, uid: string): Promise<PairAccepted> {
    return this.call(route, { op: "release", uid }, false);
  }

  private async call(route: PairRoute, body: PairBody, retry: boolean): Promise<PairAccepted> {
    const deadline = Date.now() + this.opts.timeoutMs;
    const dpu = `${route.to.name} (${route.to.ip}:${this.opts.port})`;
    let backoff = FIRST_BACKOFF_MS;
    for (let attempts = 1; ; attempts++) {
      let failure: PairCallError;
      try {
        const reply = await this.attempt(route, body, deadline - Date.now(), attempts);
        if (reply.ok) return reply;
        failure = new PairCallError("refused", route.to.name, `${dpu} refused: ${reply.error}`, attempts);
        if (!reply.retryable) throw failure;
      } catch (err) {
        if (err instanceof PairCallError && (err.kind === "bad-answer" || err.kind === "refused")) throw err;
        if (!(err instanceof PairTransportError)) throw err;
        failure = new PairCallError(err.kind, route.to.name, err.message, attempts);
      }
      const wait = Math.min(backoff, deadline - Date.now());
      if (!retry || wait <= 0)
        throw new PairCallError(
          failure.kind,
          route.to.name,
          `${failure.message} (${attempts} attempt${attempts === 1 ? "" : "s"} in ${this.opts.timeoutMs} ms)`,
          attempts,
        );
      await new Promise((r) => setTimeout(r, wait));
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  private async attempt(
    route: PairRoute,
    body: PairBody,
    timeoutMs: number,
    attempts: number,
  ): Promise<PairReply> {
    const request = signRequest(this.opts.key, body, (this.opts.now ?? Date.now)());
    const line = await exchangeLine(
      {
        host: route.to.ip,
        port: this.opts.port,
        localAddress: route.from,
        ...(this.opts.netnsPath ? { netnsPath: this.opts.netnsPath } : {}),
      },
      request.line,
      timeoutMs,
    );
    const reply = openReply(this.opts.key, request.mac, line);
    if (!reply.ok)
      throw new PairCallError(
        "bad-answer",
        route.to.name,
        `${route.to.name} answered: ${reply.error}`,
        attempts,
      );
    return reply.value;
  }
}
