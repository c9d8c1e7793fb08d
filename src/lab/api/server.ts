import { randomUUID } from "node:crypto";
import { chmod, mkdir, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { join, resolve } from "node:path";
import { pino } from "pino";
import type { Logger } from "pino";
import { z } from "zod";
import { acquireLock, LockHeldError } from "../../agent/lock.js";
import { ClusterState } from "../../cluster/memory.js";
import type { ClusterEvent, ClusterSnapshot, ClusterTopology } from "../../cluster/types.js";
import { parseCidr } from "../../configfile/net.js";
import type { Cidr } from "../../configfile/net.js";
import { writeFileAtomic } from "../../fsutil/atomic.js";
import { clearStaleSocket } from "../../fsutil/unix-socket.js";
import type { DeleteOptions, Plan, PlanContext } from "./plan.js";
import { planApply, planDelete, planTopology } from "./plan.js";
import type {
  ApplyObject,
  ApplyResult,
  CheckedObject,
  DeleteResult,
  Failure,
  LabRequest,
  ObjectRef,
  Outcome,
  RequestId,
  ServerMessage,
  TopologyResult,
} from "./protocol.js";
import { API_SOCKET_FILE, CLUSTER_STATE_FILE } from "../names.js";
import {
  checkObjects,
  encodeLine,
  LineBuffer,
  MAX_REQUEST_CHARS,
  parseRequest,
  stateBody,
  stateBodySchema,
  stateFromBody,
  summarize,
} from "./protocol.js";
import type { ApiIssue } from "./schema.js";
import { check } from "./schema.js";

// The lab API server: the one process that owns the lab's cluster. It keeps the state in memory,
// saves every change to cluster.json before it answers or tells a watcher (so a restarted server
// has the cluster it had), and streams the changes to every watcher in one order.

export const DEFAULT_SERVICE_CIDR = "10.96.0.0/16";
const STATE_FORMAT = "offmesh-lab-cluster/v1";
/** A watcher this far behind is dropped; it reconnects and catches up from a fresh snapshot. */
const MAX_WATCH_BACKLOG = 64 * 1024 * 1024;

export interface LabApiServerOptions {
  /** Holds cluster.json and, unless `socketPath` says otherwise, api.sock. Created if missing. */
  readonly stateDir: string;
  readonly socketPath?: string;
  /** Range of the clusterIPs the server allocates (default 10.96.0.0/16). */
  readonly serviceCIDR?: string;
  readonly log?: Logger;
  /** Uids of new pods; tests fix them. */
  readonly newUid?: () => string;
}

/** Another lab API server serves this socket or state directory. */
export class LabApiInUseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LabApiInUseError";
  }
}

/** cluster.json exists but cannot be used; the server does not start over it (it would lose it). */
export class LabStateFileError extends Error {
  constructor(
    readonly path: string,
    detail: string,
  ) {
    super(`${path}: ${detail}`);
    this.name = "LabStateFileError";
  }
}

/** State directories a server of this process holds. */
const lockedHere = new Set<string>();

const persistedSchema = stateBodySchema.extend({
  format: z.literal(STATE_FORMAT, { error: `must be "${STATE_FORMAT}"` }),
  revision: z.number({ error: "must be a number" }).int().nonnegative(),
});

export class LabApiServer {
  private state: ClusterState;
  private revision: number;
  private readonly watchers = new Map<Socket, RequestId>();
  private readonly connections = new Set<Socket>();
  /** Changes one at a time: each is planned against the state the previous one left. */
  private queue: Promise<unknown> = Promise.resolve();
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly socketPath: string,
    readonly statePath: string,
    private readonly server: Server,
    private readonly lock: { release(): Promise<void> },
    loaded: { state: ClusterState; revision: number },
    private readonly ctx: PlanContext,
    private readonly log: Logger,
  ) {
    this.state = loaded.state;
    this.revision = loaded.revision;
  }

  static async start(opts: LabApiServerOptions): Promise<LabApiServer> {
    const log = opts.log ?? pino({ name: "offmesh-lab-apiserver" }, pino.destination(2));
    const socketPath = opts.socketPath ?? join(opts.stateDir, API_SOCKET_FILE);
    const statePath = join(opts.stateDir, CLUSTER_STATE_FILE);
    const cidrText = opts.serviceCIDR ?? DEFAULT_SERVICE_CIDR;
    const serviceCIDR: Cidr | undefined = parseCidr(cidrText);
    if (!serviceCIDR) throw new Error(`service CIDR ${JSON.stringify(cidrText)} is not a CIDR`);

    await mkdir(opts.stateDir, { recursive: true, mode: 0o755 });
    const lockPath = resolve(opts.stateDir, "apiserver.lock");
    // The pid file tells processes apart; within one process (tests, embedders) this set does.
    if (lockedHere.has(lockPath))
      throw new LabApiInUseError(
        `another lab API server (process ${process.pid}) uses the state directory ${opts.stateDir}`,
      );
    let lock: { release(): Promise<void> };
    try {
      const held = await acquireLock(lockPath);
      lockedHere.add(lockPath);
      lock = {
        release: async () => {
          lockedHere.delete(lockPath);
          await held.release();
        },
      };
    } catch (err) {
      if (err instanceof LockHeldError)
        throw new LabApiInUseError(
          `another lab API server (process ${err.pid}) uses the state directory ${opts.stateDir}`,
        );
      throw err;
    }
    try {
      const loaded = await loadState(statePath);
      await clearSocketPath(socketPath);
      const server = createServer({ allowHalfOpen: true });
      await new Promise<void>((resolve, reject) => {
        server.once("error", (err: NodeJS.ErrnoException) =>
          reject(
            err.code === "EADDRINUSE"
              ? new LabApiInUseError(`another lab API server started on ${socketPath} at the same time`)
              : err,
          ),
        );
        server.listen(socketPath, () => resolve());
      });
      // Whoever can connect can change the cluster.
      await chmod(socketPath, 0o600);
      const api = new LabApiServer(
        socketPath,
        statePath,
        server,
        lock,
        loaded,
        { serviceCIDR, newUid: opts.newUid ?? randomUUID },
        log,
      );
      server.on("connection", (conn) => api.serve(conn));
      server.on("error", (err) => log.error({ err }, "lab API socket error"));
      log.info({ socket: socketPath, revision: loaded.revision, state: statePath }, "lab API server started");
      return api;
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  snapshot(): ClusterSnapshot {
    return this.state.snapshot();
  }

  currentRevision(): number {
    return this.revision;
  }

  /** Create or update objects, all or none (see planApply). */
  apply(objects: readonly ApplyObject[]): Promise<Outcome<ApplyResult>> {
    const checked = checkObjects(objects);
    if (!checked.ok) return Promise.resolve(failure(checked.issues));
    return this.applyChecked(checked.checked);
  }

  delete(refs: readonly ObjectRef[], opts: DeleteOptions = {}): Promise<Outcome<DeleteResult>> {
    return this.change(
      () => planDelete(this.state.snapshot(), refs, opts),
      (deleted, revision) => ({ revision, deleted }),
      "refs",
    );
  }

  /** Replace the topology (cluster-conf.yaml); a text that does not validate is refused and the old one kept. */
  setTopology(topology: ClusterTopology): Promise<Outcome<TopologyResult>> {
    return this.serialized(async () => {
      if (this.stopping) return stoppingFailure();
      const plan = planTopology(this.state.snapshot(), topology);
      if (!plan.ok) return failure(plan.issues);
      const saved = await this.commit(plan.events);
      return saved ?? { ok: true as const, revision: this.revision, changed: plan.events.length > 0 };
    });
  }

  /** Stop serving, let a change in progress finish, drop every connection and remove the socket. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      await this.queue.catch(() => undefined);
      for (const conn of this.connections) conn.destroy();
      await closed;
      await rm(this.socketPath, { force: true });
      await this.lock.release();
      this.log.info({ revision: this.revision }, "lab API server stopped");
    })();
    return this.stopping;
  }

  private applyChecked(objects: readonly CheckedObject[]): Promise<Outcome<ApplyResult>> {
    return this.change(
      () => planApply(this.state.snapshot(), objects, this.ctx),
      (applied, revision) => ({ revision, applied }),
      "objects",
    );
  }

  private change<R, T>(
    plan: () => Plan<R>,
    result: (results: R[], revision: number) => T,
    list: "objects" | "refs",
  ): Promise<Outcome<T>> {
    return this.serialized(async () => {
      if (this.stopping) return stoppingFailure();
      const p = plan();
      if (!p.ok) return failure(p.issues, list);
      return (await this.commit(p.events)) ?? { ok: true as const, ...result(p.results, this.revision) };
    });
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Save the state the events lead to, then make it current and tell the watchers. A failed save
   * changes nothing: the caller is told, memory and file still agree.
   */
  private async commit(events: readonly ClusterEvent[]): Promise<Failure | undefined> {
    if (events.length === 0) return undefined;
    const next = copyState(this.state);
    for (const e of events) next.apply(e);
    const revision = this.revision + events.length;
    try {
      await writeFileAtomic(
        this.statePath,
        JSON.stringify({ format: STATE_FORMAT, revision, ...stateBody(next.snapshot()) }, null, 2) + "\n",
        0o644,
      );
    } catch (err) {
      this.log.error({ err }, "cannot save the cluster state");
      return failure([
        {
          field: "(state)",
          message: `cannot save ${this.statePath}: ${(err as Error).message}; nothing changed`,
        },
      ]);
    }
    const first = this.revision + 1;
    this.state = next;
    this.revision = revision;
    events.forEach((event, i) => this.broadcast(event, first + i));
    return undefined;
  }

  private broadcast(event: ClusterEvent, revision: number): void {
    for (const [conn, id] of this.watchers) {
      if (conn.destroyed) continue;
      if (conn.writableLength > MAX_WATCH_BACKLOG) {
        this.log.warn("dropping a watcher that does not read its events; it will resynchronise on reconnect");
        conn.destroy();
        continue;
      }
      conn.write(encodeLine({ id, type: "event", revision, event }));
    }
  }

  private serve(conn: Socket): void {
    this.connections.add(conn);
    const lines = new LineBuffer(MAX_REQUEST_CHARS);
    // Requests of one connection are answered in order: an apply followed by a get sees the apply.
    let pending: Promise<void> = Promise.resolve();
    const take = (line: string): void => {
      if (line.trim() === "") return;
      pending = pending
        .then(() => this.handle(conn, line))
        .catch((err: unknown) => {
          // A bug must cost one answer, not the server or the connection's later requests.
          this.log.error({ err }, "lab API request failed");
          send(conn, {
            id: null,
            type: "result",
            ...failure([{ field: "(server)", message: `internal error: ${(err as Error).message}` }]),
          });
        });
    };
    let refused = false;
    conn.setEncoding("utf8");
    conn.on("data", (chunk: string) => {
      if (refused) return;
      let got: string[];
      try {
        got = lines.push(chunk);
      } catch (err) {
        refused = true;
        const message = (err as Error).message;
        pending = pending.then(() => {
          send(conn, { id: null, type: "result", ...failure([{ field: "(request)", message }]) });
          conn.end();
        });
        return;
      }
      for (const line of got) take(line);
    });
    conn.on("end", () => {
      if (!refused) take(lines.rest());
      void pending.then(() => conn.end());
    });
    // A client that vanished needs no answer; without a listener the error would end the server.
    conn.on("error", () => undefined);
    conn.on("close", () => {
      this.connections.delete(conn);
      this.watchers.delete(conn);
    });
  }

  private async handle(conn: Socket, line: string): Promise<void> {
    const parsed = parseRequest(line);
    if (!parsed.ok) {
      send(conn, { id: parsed.id, type: "result", ok: false, error: parsed.error, issues: parsed.issues });
      return;
    }
    const req: LabRequest & { checked?: readonly CheckedObject[] } = parsed.request;
    const answer = (outcome: Outcome<ApplyResult> | Outcome<DeleteResult> | Outcome<TopologyResult>): void =>
      send(conn, { id: req.id, type: "result", ...outcome } as ServerMessage);
    switch (req.op) {
      case "watch":
        if (this.watchers.has(conn)) {
          send(conn, {
            id: req.id,
            type: "result",
            ...failure([{ field: "op", message: "this connection already watches" }]),
          });
          return;
        }
        // Registered and answered in one step: no change can fall between the snapshot and the events.
        this.watchers.set(conn, req.id);
        send(conn, {
          id: req.id,
          type: "snapshot",
          revision: this.revision,
          state: stateBody(this.state.snapshot()),
        });
        return;
      case "get":
        send(conn, {
          id: req.id,
          type: "result",
          ok: true,
          revision: this.revision,
          state: stateBody(this.state.snapshot()),
        });
        return;
      case "apply":
        return answer(await this.applyChecked(req.checked ?? []));
      case "delete":
        return answer(await this.delete(req.refs, { ignoreMissing: req.ignoreMissing === true }));
      case "set-topology":
        return answer(await this.setTopology(req.topology));
    }
  }
}

function send(conn: Socket, message: ServerMessage): void {
  if (!conn.destroyed && conn.writable) conn.write(encodeLine(message));
}

function failure(issues: readonly ApiIssue[], list: "objects" | "refs" = "objects"): Failure {
  return { ok: false, error: summarize(issues, list), issues };
}

const stoppingFailure = (): Failure =>
  failure([{ field: "(server)", message: "the lab API server is stopping; nothing changed" }]);

function copyState(from: ClusterState): ClusterState {
  const to = new ClusterState();
  for (const [k, v] of from.nodes) to.nodes.set(k, v);
  for (const [k, v] of from.pods) to.pods.set(k, v);
  for (const [k, v] of from.namespaces) to.namespaces.set(k, v);
  for (const [k, v] of from.services) to.services.set(k, v);
  for (const [k, v] of from.policies) to.policies.set(k, v);
  to.topology = from.topology;
  return to;
}

/** The saved cluster, or an empty one when there is none yet. */
async function loadState(path: string): Promise<{ state: ClusterState; revision: number }> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { state: new ClusterState(), revision: 0 };
    throw new LabStateFileError(path, `cannot be read: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new LabStateFileError(path, `not JSON (${(err as Error).message}); move it away to start empty`);
  }
  const parsed = check(persistedSchema, json);
  if (!parsed.ok) throw new LabStateFileError(path, `${summarize(parsed.issues.slice(0, 5))}`);
  return { state: stateFromBody(parsed.value), revision: parsed.value.revision };
}

/**
 * Make the socket path free: a socket file left by a server that died is removed; one that a live
 * server answers on, or a path that is not a socket, is not touched.
 */
async function clearSocketPath(socketPath: string): Promise<void> {
  await clearStaleSocket(socketPath, {
    notSocket: () => new LabApiInUseError(`${socketPath} exists and is not a socket; refusing to replace it`),
    live: () => new LabApiInUseError(`another lab API server answers on ${socketPath}`),
    unknown: (why) =>
      new LabApiInUseError(`${socketPath}: cannot tell whether a server answers on it (${why})`),
  });
}
