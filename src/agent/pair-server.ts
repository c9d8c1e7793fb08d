import type { Server, Socket } from "node:net";
import type { Logger } from "pino";
import type { TopologyNode } from "../topology/types.js";
import { createListener } from "../sockets/index.js";
import { MAX_PAIR_LINE_CHARS, parseRequestLine, RequestVerifier, signReply } from "./pair.js";
import type { PairOp, PairPod, PairReply } from "./pair.js";
import { admitCaller } from "./pair-validate.js";
import type { Refusal } from "./pair-validate.js";

// The DPU side of the pair channel: a TCP listener on the DPU's node address. Every request is
// checked in the same order — the caller's address, then its credential (MAC, timestamp, replay),
// then what it asks for (by the agent) — and every refusal is answered with its reason and logged.

/** What the agent does for the paired CPU once a request passed the channel's checks. */
export interface PairEndpoint {
  /** The CPU allowed to call, or why no caller is admitted now. */
  pairedCpu(): { readonly ok: true; readonly cpu: TopologyNode } | Refusal;
  hold(cpu: TopologyNode, pod: PairPod): Promise<PairReply>;
  release(cpu: TopologyNode, uid: string): Promise<PairReply>;
}

export interface PairAnswer {
  /** The signed reply line. */
  readonly line: string;
  readonly reply: PairReply;
  /** The request's operation, when it could be read. */
  readonly op: PairOp | "unknown";
}

/** Decide the answer to one request line from `remoteAddress`. */
export async function answerPairRequest(
  key: Buffer,
  verifier: RequestVerifier,
  endpoint: PairEndpoint,
  remoteAddress: string | undefined,
  line: string,
): Promise<PairAnswer> {
  const parsed = parseRequestLine(line);
  if (!parsed.ok) return refused(key, "", "unknown", `malformed request: ${parsed.error}`, false);
  const mac = parsed.value.mac;
  const paired = endpoint.pairedCpu();
  if (!paired.ok) return refused(key, mac, "unknown", paired.reason, paired.retryable);
  const caller = admitCaller(paired.cpu, remoteAddress);
  if (!caller.ok) return refused(key, mac, "unknown", caller.reason, false);
  const verified = verifier.verify(parsed.value);
  if (!verified.ok) return refused(key, mac, "unknown", verified.reason, false);
  const body = verified.body;
  let reply: PairReply;
  try {
    reply =
      body.op === "hold"
        ? await endpoint.hold(paired.cpu, body.pod)
        : await endpoint.release(paired.cpu, body.uid);
  } catch (err) {
    reply = { ok: false, error: `the DPU agent failed: ${(err as Error).message}`, retryable: true };
  }
  return { line: signReply(key, mac, reply), reply, op: body.op };
}

function refused(
  key: Buffer,
  mac: string,
  op: PairAnswer["op"],
  error: string,
  retryable: boolean,
): PairAnswer {
  const reply: PairReply = { ok: false, error, retryable };
  return { line: signReply(key, mac, reply), reply, op };
}

export interface PairServerOptions {
  readonly key: Buffer;
  /** The DPU's node address (from the topology). */
  readonly address: string;
  readonly port: number;
  /** Network namespace of the node; default: the process's own. */
  readonly netnsPath?: string;
  readonly endpoint: PairEndpoint;
  readonly log: Logger;
  /** Counts every answered request (metrics). */
  readonly onAnswer?: (op: PairAnswer["op"], result: "ok" | "refused") => void;
  /** Clock of the timestamp check. */
  readonly now?: () => number;
  /** A caller that sends no complete line within this time is dropped. */
  readonly requestTimeoutMs?: number;
}

export interface PairServer {
  readonly address: string;
  readonly port: number;
  close(): Promise<void>;
}

export async function servePairChannel(opts: PairServerOptions): Promise<PairServer> {
  const verifier = new RequestVerifier(opts.key, opts.now ?? Date.now);
  const server: Server = await createListener({
    address: opts.address,
    port: opts.port,
    ...(opts.netnsPath ? { netnsPath: opts.netnsPath } : {}),
  });
  const connections = new Set<Socket>();
  const answer = async (conn: Socket, line: string): Promise<void> => {
    const remote = conn.remoteAddress;
    const a = await answerPairRequest(opts.key, verifier, opts.endpoint, remote, line);
    opts.onAnswer?.(a.op, a.reply.ok ? "ok" : "refused");
    if (a.reply.ok) opts.log.info({ remote, op: a.op, detail: a.reply.detail }, "pair request served");
    else opts.log.warn({ remote, op: a.op, reason: a.reply.error }, "pair request refused");
    if (!conn.destroyed) conn.end(a.line);
  };
  server.on("connection", (conn: Socket) => {
    connections.add(conn);
    conn.on("close", () => connections.delete(conn));
    serveConnection(conn, opts.requestTimeoutMs ?? 10_000, (line) => answer(conn, line), opts.log);
  });
  server.on("error", (err) => opts.log.error({ err: err.message }, "pair channel listener error"));
  const bound = server.address();
  const port = typeof bound === "object" && bound ? bound.port : opts.port;
  let closing: Promise<void> | undefined;
  return {
    address: opts.address,
    port,
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const conn of connections) conn.destroy();
      })),
  };
}

function serveConnection(
  conn: Socket,
  timeoutMs: number,
  take: (line: string) => Promise<void>,
  log: Logger,
): void {
  let received = "";
  let taken = false;
  const takeOnce = (line: string): void => {
    taken = true;
    conn.setTimeout(0);
    take(line).catch((err: unknown) => {
      log.error({ err: (err as Error).message }, "pair request failed");
      conn.destroy();
    });
  };
  conn.setEncoding("utf8");
  conn.setTimeout(timeoutMs, () => conn.destroy());
  // A caller that vanished needs no answer; without a listener the error would crash the agent.
  conn.on("error", () => undefined);
  conn.on("data", (chunk: string) => {
    if (taken) return;
    received += chunk;
    const end = received.indexOf("\n");
    if (end >= 0) takeOnce(received.slice(0, end));
    else if (received.length > MAX_PAIR_LINE_CHARS) takeOnce(received.slice(0, MAX_PAIR_LINE_CHARS));
  });
  conn.on("end", () => {
    if (!taken && received.trim() !== "") takeOnce(received);
    else if (!taken) conn.end();
  });
}

/**
 * Keeps one listener on the address the node should serve (its own, while it is a DPU; none
 * otherwise) as the topology changes, and retries a failed bind on the next `follow`.
 */
export class PairServerSupervisor {
  private current: PairServer | undefined;
  private failure: string | undefined;
  private chain: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly start: (address: string) => Promise<PairServer>,
    private readonly log: Logger,
  ) {}

  /** Serve on `address` (undefined: serve nothing). Calls are applied in order. */
  follow(address: string | undefined): Promise<void> {
    const target = this.closed ? undefined : address;
    this.chain = this.chain.then(() => this.switchTo(target));
    return this.chain;
  }

  /** Resolves once every `follow` so far has been applied. */
  settled(): Promise<void> {
    return this.chain;
  }

  describe(): string {
    if (this.current) return `serving ${this.current.address}:${this.current.port}`;
    return this.failure ? `not serving: ${this.failure}` : "not serving (not a DPU)";
  }

  /** Stop serving for good: a `follow` after this (a sync still running) opens nothing. */
  close(): Promise<void> {
    this.closed = true;
    return this.follow(undefined);
  }

  private async switchTo(address: string | undefined): Promise<void> {
    if (this.current && this.current.address === address) return;
    if (this.current) {
      await this.current.close();
      this.log.info({ address: this.current.address }, "pair channel listener closed");
      this.current = undefined;
    }
    const previous = this.failure;
    this.failure = undefined;
    if (address === undefined) return;
    try {
      this.current = await this.start(address);
      this.log.info({ address, port: this.current.port }, "pair channel listening");
    } catch (err) {
      this.failure = `${address}: ${(err as Error).message}`;
      // Retried on every sync: said once per distinct failure, not every time.
      if (this.failure !== previous)
        this.log.error(
          { err: this.failure },
          "pair channel cannot listen; the paired CPU's pod ADDs will fail",
        );
    }
  }
}
