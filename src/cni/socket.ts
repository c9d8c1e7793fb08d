import { chmod, mkdir, rm } from "node:fs/promises";
import { clearStaleSocket } from "../fsutil/unix-socket.js";
import { createConnection, createServer } from "node:net";
import type { Socket } from "node:net";
import { dirname } from "node:path";
import type { AgentRequest, AgentResponse, PodRef } from "./protocol.js";

// The transport of src/cni/protocol.ts: one JSON line each way per connection over the node agent's
// unix stream socket. The plugin side (callAgent) is loaded by every `offmesh-cni` exec, so this
// module uses node built-ins only.

/** Upper bound of one request or response line; a PodRef and a few addresses are far below it. */
const MAX_LINE_CHARS = 64 * 1024;

/**
 * How a call to the agent failed: nothing listens on the socket (`unreachable`), no answer in time
 * (`timeout`), the agent hung up without answering (`closed`, e.g. it is shutting down), or it
 * answered something that is not an AgentResponse (`bad-response`).
 */
export type AgentCallFailure = "unreachable" | "timeout" | "closed" | "bad-response";

export class AgentCallError extends Error {
  constructor(
    readonly kind: AgentCallFailure,
    readonly socketPath: string,
    message: string,
    /** errno code of the underlying socket error (ENOENT, ECONNREFUSED, EACCES …), when there is one. */
    readonly errno?: string,
  ) {
    super(message);
    this.name = "AgentCallError";
  }
}

/** Send one request to the agent and wait for its answer, at most `timeoutMs` in all. */
export function callAgent(
  socketPath: string,
  request: AgentRequest,
  timeoutMs: number,
): Promise<AgentResponse> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(socketPath);
    let connected = false;
    let settled = false;
    let received = "";
    const finish = (outcome: AgentResponse | AgentCallError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (outcome instanceof AgentCallError) reject(outcome);
      else resolve(outcome);
    };
    const fail = (kind: AgentCallFailure, message: string, errno?: string): void =>
      finish(new AgentCallError(kind, socketPath, message, errno));
    const answer = (line: string): void => {
      const parsed = parseAgentResponse(line);
      if (parsed.ok) finish(parsed.value);
      else fail("bad-response", `the agent at ${socketPath} answered ${preview(line)}: ${parsed.error}`);
    };

    const timer = setTimeout(
      () =>
        fail(
          "timeout",
          connected
            ? `the agent at ${socketPath} did not answer within ${timeoutMs} ms`
            : `could not connect to ${socketPath} within ${timeoutMs} ms`,
        ),
      timeoutMs,
    );
    sock.setEncoding("utf8");
    sock.on("connect", () => {
      connected = true;
      sock.write(JSON.stringify(request) + "\n");
    });
    sock.on("data", (chunk: string) => {
      received += chunk;
      const end = received.indexOf("\n");
      if (end >= 0) answer(received.slice(0, end));
      else if (received.length > MAX_LINE_CHARS)
        fail("bad-response", `the agent at ${socketPath} sent more than ${MAX_LINE_CHARS} characters`);
    });
    sock.on("end", () => {
      if (received.trim() !== "") answer(received);
      else fail("closed", `the agent at ${socketPath} closed the connection without answering`);
    });
    sock.on("error", (err: NodeJS.ErrnoException) => {
      if (connected) fail("closed", `connection to ${socketPath} failed: ${err.message}`, err.code);
      else fail("unreachable", `cannot connect to ${socketPath}: ${err.code ?? err.message}`, err.code);
    });
  });
}

export interface AgentSocketServer {
  readonly path: string;
  /** Stop accepting, drop open connections and remove the socket file. */
  close(): Promise<void>;
}

export interface ServeOptions {
  /** A client that connects and sends no complete request within this time is dropped. */
  readonly requestTimeoutMs?: number;
  /** Errors of the listening socket after it started (e.g. EMFILE on accept); clients retry. */
  readonly onError?: (err: Error) => void;
}

/** Another process answers on the socket path: one agent per node. */
export class AgentSocketInUseError extends Error {
  constructor(readonly socketPath: string) {
    super(
      `another process (a running offmesh node agent?) is serving ${socketPath}; only one agent may run per node`,
    );
    this.name = "AgentSocketInUseError";
  }
}

/** The socket path cannot be used: it is not a socket, or probing/binding it failed. */
export class AgentSocketPathError extends Error {
  constructor(
    readonly socketPath: string,
    message: string,
  ) {
    super(`${socketPath}: ${message}`);
    this.name = "AgentSocketPathError";
  }
}

/**
 * Serve the agent's side of the protocol. The parent directory is created with mode 0700 and the
 * socket gets 0600: whoever can connect can make the agent capture or release pods. A socket file
 * left by a dead agent is replaced; one that a live process answers on is not.
 */
export async function serveAgentSocket(
  socketPath: string,
  handler: (req: AgentRequest) => Promise<AgentResponse>,
  options: ServeOptions = {},
): Promise<AgentSocketServer> {
  await mkdir(dirname(socketPath), { recursive: true, mode: 0o700 });
  await removeStaleSocket(socketPath);

  const connections = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (conn) => {
    connections.add(conn);
    conn.on("close", () => connections.delete(conn));
    serveConnection(conn, handler, options.requestTimeoutMs ?? 30_000);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      // Another agent bound the path between our probe and listen.
      reject(err.code === "EADDRINUSE" ? new AgentSocketInUseError(socketPath) : err),
    );
    server.listen(socketPath, () => resolve());
  });
  server.on("error", (err) => options.onError?.(err));
  // The window between bind and chmod is covered by the 0700 parent directory when we created it.
  await chmod(socketPath, 0o600);

  let closing: Promise<void> | undefined;
  return {
    path: socketPath,
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const conn of connections) conn.destroy();
      }).then(() => rm(socketPath, { force: true }))),
  };
}

async function removeStaleSocket(socketPath: string): Promise<void> {
  await clearStaleSocket(socketPath, {
    notSocket: () =>
      new AgentSocketPathError(socketPath, "exists and is not a socket; refusing to remove it"),
    live: () => new AgentSocketInUseError(socketPath),
    unknown: (why) =>
      new AgentSocketPathError(socketPath, `cannot tell whether a process serves it (${why})`),
  });
}

function serveConnection(
  conn: Socket,
  handler: (req: AgentRequest) => Promise<AgentResponse>,
  requestTimeoutMs: number,
): void {
  let received = "";
  let taken = false;
  const respond = (res: AgentResponse): void => {
    if (!conn.destroyed) conn.end(JSON.stringify(res) + "\n");
  };
  const take = async (line: string): Promise<void> => {
    taken = true;
    // The handler may legitimately take long (ADD waits for the capture); the client has its own timeout.
    conn.setTimeout(0);
    const parsed = parseAgentRequest(line);
    if (!parsed.ok) return respond({ ok: false, error: `malformed request: ${parsed.error}` });
    try {
      respond(await handler(parsed.value));
    } catch (err) {
      respond({ ok: false, error: err instanceof Error ? err.message : String(err) });
    }
  };

  conn.setEncoding("utf8");
  conn.setTimeout(requestTimeoutMs, () => conn.destroy());
  // A client that vanished needs no answer; without a listener the error would crash the agent.
  conn.on("error", () => undefined);
  conn.on("data", (chunk: string) => {
    if (taken) return;
    received += chunk;
    const end = received.indexOf("\n");
    if (end >= 0) void take(received.slice(0, end));
    else if (received.length > MAX_LINE_CHARS) {
      taken = true;
      respond({ ok: false, error: `malformed request: longer than ${MAX_LINE_CHARS} characters` });
    }
  });
  conn.on("end", () => {
    if (taken) return;
    if (received.trim() !== "") void take(received);
    else conn.end();
  });
}

export type Parsed<T> =
  { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

const OPS = new Set(["add", "del", "check", "status", "resync"]);

/** Validate one request line (the agent side). */
export function parseAgentRequest(line: string): Parsed<AgentRequest> {
  const json = parseJson(line);
  if (!json.ok) return json;
  const req = json.value;
  if (!isRecord(req)) return bad("a request must be a JSON object");
  if (typeof req.op !== "string" || !OPS.has(req.op))
    return bad(`"op" must be one of add, del, check, status, resync`);
  if (req.op === "status" || req.op === "resync") return { ok: true, value: { op: req.op } };
  const pod = parsePodRef(req.pod);
  if (!pod.ok) return pod;
  if (req.op === "del") return { ok: true, value: { op: "del", pod: pod.value } };
  if (!Array.isArray(req.ips) || !req.ips.every((ip) => typeof ip === "string"))
    return bad(`"ips" must be a list of addresses`);
  return {
    ok: true,
    value: { op: req.op === "add" ? "add" : "check", pod: pod.value, ips: req.ips as string[] },
  };
}

function parsePodRef(value: unknown): Parsed<PodRef> {
  if (!isRecord(value)) return bad(`"pod" must be an object`);
  for (const key of ["namespace", "name", "containerId", "netns", "ifname"] as const) {
    if (typeof value[key] !== "string") return bad(`"pod.${key}" must be a string`);
  }
  if (value.uid !== undefined && typeof value.uid !== "string") return bad(`"pod.uid" must be a string`);
  const pod: PodRef = {
    namespace: value.namespace as string,
    name: value.name as string,
    containerId: value.containerId as string,
    netns: value.netns as string,
    ifname: value.ifname as string,
    ...(value.uid !== undefined ? { uid: value.uid as string } : {}),
  };
  return { ok: true, value: pod };
}

/** Validate one response line (the plugin side). */
export function parseAgentResponse(line: string): Parsed<AgentResponse> {
  const json = parseJson(line);
  if (!json.ok) return json;
  const res = json.value;
  if (!isRecord(res) || typeof res.ok !== "boolean") return bad(`a response must be an object with "ok"`);
  if (!res.ok) {
    if (typeof res.error !== "string") return bad(`a failed response must carry "error"`);
    return { ok: true, value: { ok: false, error: res.error } };
  }
  if (res.captured !== undefined && typeof res.captured !== "boolean")
    return bad(`"captured" must be true or false`);
  if (res.reason !== undefined && typeof res.reason !== "string") return bad(`"reason" must be a string`);
  return {
    ok: true,
    value: {
      ok: true,
      ...(res.captured !== undefined ? { captured: res.captured } : {}),
      ...(res.reason !== undefined ? { reason: res.reason } : {}),
      ...(res.status !== undefined ? { status: res.status } : {}),
    },
  };
}

function parseJson(line: string): Parsed<unknown> {
  try {
    return { ok: true, value: JSON.parse(line) as unknown };
  } catch (err) {
    return bad(`not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
}

function bad(error: string): { ok: false; error: string } {
  return { ok: false, error };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function preview(text: string): string {
  const t = text.trim();
  return JSON.stringify(t.length > 120 ? `${t.slice(0, 120)}…` : t);
}
