import { createConnection } from "node:net";
import type { Socket } from "node:net";
import { isDeepStrictEqual } from "node:util";
import type { z } from "zod";
import type {
  ApplyObject,
  ApplyResult,
  DeleteResult,
  GetResult,
  LabRequest,
  ObjectRef,
  Outcome,
  StateBody,
  TopologyResult,
} from "../lab/api/protocol.js";
import {
  encodeLine,
  LineBuffer,
  MAX_MESSAGE_CHARS,
  parseServerMessage,
  resultSchemas,
  stateFromBody,
} from "../lab/api/protocol.js";
import { check } from "../lab/api/schema.js";
import { ClusterState, Listeners } from "./memory.js";
import type { ClusterEvent, ClusterSnapshot, ClusterSource, ClusterTopology, Unsubscribe } from "./types.js";

// The cluster as the lab API server holds it (src/lab/api), watched over its unix socket the way
// an informer watches Kubernetes: a snapshot, then events. A lost connection is re-established
// with backoff, and the fresh snapshot is turned into the events that make this view equal to
// it — deletes for what vanished meanwhile too — so consumers converge without noticing.

export interface LabSourceLog {
  info(message: string): void;
  warn(message: string): void;
}

export interface LabSourceOptions {
  readonly socketPath: string;
  /** How long start() keeps trying to get the first snapshot (default 10 s). */
  readonly startTimeoutMs?: number;
  /** Delay before reconnecting: doubling from `initialMs` up to `maxMs` (default 100 ms … 5 s). */
  readonly backoff?: { readonly initialMs: number; readonly maxMs: number };
  readonly log?: LabSourceLog;
}

/** start() got no snapshot in time. */
export class LabApiUnavailableError extends Error {
  constructor(
    readonly socketPath: string,
    readonly waitedMs: number,
    readonly lastFailure: string,
  ) {
    super(
      `no lab API server answered on ${socketPath} within ${waitedMs} ms (${lastFailure}); is \`offmesh lab apiserver\` running?`,
    );
    this.name = "LabApiUnavailableError";
  }
}

const WATCH_ID = "watch";

export class LabClusterSource implements ClusterSource {
  private readonly state = new ClusterState();
  private readonly listeners = new Listeners();
  private socket: Socket | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private failures = 0;
  private lastFailure = "not tried yet";
  private revision = -1;
  private waiting: { resolve: () => void; reject: (err: Error) => void } | undefined;

  constructor(private readonly opts: LabSourceOptions) {}

  async start(): Promise<void> {
    if (!this.stopped) return;
    this.stopped = false;
    const timeoutMs = this.opts.startTimeoutMs ?? 10_000;
    await new Promise<void>((resolve, reject) => {
      const deadline = setTimeout(() => {
        this.waiting = undefined;
        this.halt();
        reject(new LabApiUnavailableError(this.opts.socketPath, timeoutMs, this.lastFailure));
      }, timeoutMs);
      this.waiting = {
        resolve: () => {
          clearTimeout(deadline);
          resolve();
        },
        reject: (err) => {
          clearTimeout(deadline);
          reject(err);
        },
      };
      this.connect();
    });
  }

  async stop(): Promise<void> {
    const waiting = this.waiting;
    this.waiting = undefined;
    this.halt();
    waiting?.reject(new Error(`stopped before the lab API on ${this.opts.socketPath} answered`));
  }

  snapshot(): ClusterSnapshot {
    return this.state.snapshot();
  }

  subscribe(listener: (event: ClusterEvent) => void): Unsubscribe {
    return this.listeners.add(listener);
  }

  /** Whether the watch is up, and the server revision this view is at (-1 before the first snapshot). */
  status(): { connected: boolean; revision: number; lastFailure?: string } {
    const connected = this.socket !== undefined && this.failures === 0 && this.revision >= 0;
    return { connected, revision: this.revision, ...(connected ? {} : { lastFailure: this.lastFailure }) };
  }

  private halt(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.socket?.destroy();
    this.socket = undefined;
  }

  private connect(): void {
    const sock = createConnection(this.opts.socketPath);
    this.socket = sock;
    const lines = new LineBuffer(MAX_MESSAGE_CHARS);
    let synced = false;
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(encodeLine({ id: WATCH_ID, op: "watch" })));
    sock.on("data", (chunk: string) => {
      let got: string[];
      try {
        got = lines.push(chunk);
      } catch (err) {
        return this.lost(sock, `the server sent ${(err as Error).message}`);
      }
      for (const line of got) {
        if (this.socket !== sock) return;
        const parsed = parseServerMessage(line);
        if (!parsed.ok)
          return this.lost(sock, `the server sent something that is not a lab API message: ${parsed.error}`);
        const m = parsed.message;
        if (m.type === "snapshot") {
          synced = true;
          this.resync(m.state, m.revision);
        } else if (m.type === "event") {
          if (!synced) return this.lost(sock, "the server sent an event before the snapshot");
          this.revision = m.revision;
          this.emit(m.event);
        } else if (!m.ok) {
          return this.lost(sock, `the server refused to watch: ${m.error}`);
        }
      }
    });
    sock.on("error", (err: NodeJS.ErrnoException) =>
      this.lost(
        sock,
        synced ? `connection failed: ${err.message}` : `cannot connect: ${err.code ?? err.message}`,
      ),
    );
    sock.on("close", () => this.lost(sock, "the server closed the connection"));
  }

  /** Forget a connection that failed and try again after the backoff delay. */
  private lost(sock: Socket, reason: string): void {
    if (this.socket !== sock) return;
    this.socket = undefined;
    sock.destroy();
    if (this.stopped) return;
    const { initialMs, maxMs } = this.opts.backoff ?? { initialMs: 100, maxMs: 5000 };
    const delay = Math.min(maxMs, initialMs * 2 ** Math.min(this.failures, 20));
    // One warning per outage, not one per attempt; start() reports its own failure.
    if (this.failures === 0 && !this.waiting)
      this.opts.log?.warn(`lab API on ${this.opts.socketPath}: ${reason}; reconnecting`);
    this.failures++;
    this.lastFailure = reason;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.stopped) this.connect();
    }, delay);
  }

  /** Make this view equal to a fresh snapshot, telling listeners every difference. */
  private resync(body: StateBody, revision: number): void {
    const next = stateFromBody(body).snapshot();
    for (const event of differences(this.state.snapshot(), next)) this.emit(event);
    this.revision = revision;
    if (this.waiting) {
      const waiting = this.waiting;
      this.waiting = undefined;
      waiting.resolve();
    } else if (this.failures > 0) {
      this.opts.log?.info(`lab API on ${this.opts.socketPath}: watching again at revision ${revision}`);
    }
    this.failures = 0;
  }

  private emit(event: ClusterEvent): void {
    this.state.apply(event);
    this.listeners.emit(event);
  }
}

/**
 * The events that turn `from` into `to`: the topology, then upserts with what others depend on
 * first, then deletes with dependents first. A topology cannot be deleted, only replaced.
 */
export function differences(from: ClusterSnapshot, to: ClusterSnapshot): ClusterEvent[] {
  const out: ClusterEvent[] = [];
  if (to.topology && !isDeepStrictEqual(from.topology, to.topology))
    out.push({ kind: "topology", type: "upsert", object: to.topology });
  const upserts = <V>(
    kind: ClusterEvent["kind"],
    a: ReadonlyMap<string, V>,
    b: ReadonlyMap<string, V>,
  ): void => {
    for (const [k, v] of b)
      if (!isDeepStrictEqual(a.get(k), v)) out.push({ kind, type: "upsert", object: v } as ClusterEvent);
  };
  const deletes = <V>(
    kind: ClusterEvent["kind"],
    a: ReadonlyMap<string, V>,
    b: ReadonlyMap<string, V>,
  ): void => {
    for (const [k, v] of a) if (!b.has(k)) out.push({ kind, type: "delete", object: v } as ClusterEvent);
  };
  upserts("namespace", from.namespaces, to.namespaces);
  upserts("node", from.nodes, to.nodes);
  upserts("service", from.services, to.services);
  upserts("policy", from.policies, to.policies);
  upserts("pod", from.pods, to.pods);
  deletes("pod", from.pods, to.pods);
  deletes("policy", from.policies, to.policies);
  deletes("service", from.services, to.services);
  deletes("node", from.nodes, to.nodes);
  deletes("namespace", from.namespaces, to.namespaces);
  return out;
}

// ---- One-shot requests (the CLI's and the lab's) ---------------------------------------------

export type LabCallFailure = "unreachable" | "timeout" | "closed" | "bad-response";

/** The request did not get an answer (a refused request is an answer: a Failure outcome). */
export class LabApiCallError extends Error {
  constructor(
    readonly kind: LabCallFailure,
    readonly socketPath: string,
    message: string,
  ) {
    super(message);
    this.name = "LabApiCallError";
  }
}

export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

type Body<Op extends LabRequest["op"]> = Omit<Extract<LabRequest, { op: Op }>, "id">;

function call<R>(
  socketPath: string,
  request: Body<"apply"> | Body<"delete"> | Body<"get"> | Body<"set-topology">,
  schema: z.ZodType<R>,
  timeoutMs: number,
): Promise<Outcome<R>> {
  return new Promise((resolve, reject) => {
    const id = 1;
    const sock = createConnection(socketPath);
    const lines = new LineBuffer(MAX_MESSAGE_CHARS);
    let connected = false;
    let settled = false;
    const finish = (outcome: Outcome<R> | LabApiCallError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (outcome instanceof LabApiCallError) reject(outcome);
      else resolve(outcome);
    };
    const fail = (kind: LabCallFailure, message: string): void =>
      finish(new LabApiCallError(kind, socketPath, message));
    const timer = setTimeout(
      () =>
        fail(
          "timeout",
          connected
            ? `the lab API server on ${socketPath} did not answer within ${timeoutMs} ms`
            : `could not connect to ${socketPath} within ${timeoutMs} ms`,
        ),
      timeoutMs,
    );
    sock.setEncoding("utf8");
    sock.on("connect", () => {
      connected = true;
      sock.write(encodeLine({ ...request, id } as LabRequest));
    });
    sock.on("data", (chunk: string) => {
      let got: string[];
      try {
        got = lines.push(chunk);
      } catch (err) {
        return fail("bad-response", `the lab API server on ${socketPath} sent ${(err as Error).message}`);
      }
      for (const line of got) {
        const parsed = parseServerMessage(line);
        if (!parsed.ok)
          return fail("bad-response", `the lab API server on ${socketPath} answered: ${parsed.error}`);
        const m = parsed.message;
        if (m.type !== "result") continue;
        if (m.id !== id && m.id !== null) continue;
        if (!m.ok) return finish({ ok: false, error: m.error, issues: m.issues });
        const r = check(schema, m);
        if (!r.ok)
          return fail(
            "bad-response",
            `the lab API server on ${socketPath} answered: ${r.issues[0]?.field}: ${r.issues[0]?.message}`,
          );
        return finish({ ok: true, ...r.value });
      }
    });
    sock.on("close", () =>
      fail("closed", `the lab API server on ${socketPath} closed the connection without answering`),
    );
    sock.on("error", (err: NodeJS.ErrnoException) =>
      connected
        ? fail("closed", `connection to ${socketPath} failed: ${err.message}`)
        : fail("unreachable", `cannot connect to the lab API on ${socketPath}: ${err.code ?? err.message}`),
    );
  });
}

export const labApply = (
  socketPath: string,
  objects: readonly ApplyObject[],
  timeoutMs = DEFAULT_CALL_TIMEOUT_MS,
): Promise<Outcome<ApplyResult>> =>
  call(
    socketPath,
    { op: "apply", objects },
    resultSchemas.apply as unknown as z.ZodType<ApplyResult>,
    timeoutMs,
  );

export const labDelete = (
  socketPath: string,
  refs: readonly ObjectRef[],
  opts: { ignoreMissing?: boolean } = {},
  timeoutMs = DEFAULT_CALL_TIMEOUT_MS,
): Promise<Outcome<DeleteResult>> =>
  call(
    socketPath,
    { op: "delete", refs, ...(opts.ignoreMissing ? { ignoreMissing: true } : {}) },
    resultSchemas.delete as unknown as z.ZodType<DeleteResult>,
    timeoutMs,
  );

export const labGet = (
  socketPath: string,
  timeoutMs = DEFAULT_CALL_TIMEOUT_MS,
): Promise<Outcome<GetResult>> =>
  call(socketPath, { op: "get" }, resultSchemas.get as unknown as z.ZodType<GetResult>, timeoutMs);

export const labSetTopology = (
  socketPath: string,
  topology: ClusterTopology,
  timeoutMs = DEFAULT_CALL_TIMEOUT_MS,
): Promise<Outcome<TopologyResult>> =>
  call(
    socketPath,
    { op: "set-topology", topology },
    resultSchemas["set-topology"] as unknown as z.ZodType<TopologyResult>,
    timeoutMs,
  );
