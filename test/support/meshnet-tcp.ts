import type { NetnsProcess, NetnsProcesses } from "./meshnet-process.js";

// A tiny TCP server and client run with `node -e` inside pod namespaces. The server greets every
// connection with one JSON line saying what it saw (the peer's address shows whether a proxy kept
// the client's source), then echoes; the client reports how far it got, so a test can tell "held"
// (no handshake), "refused", "established but nothing came back" and "answered" apart.

/** What the server saw of a connection: its first line to the client, and a line on its own stdout. */
export interface TcpGreeting {
  readonly server: string;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
}

export type TcpOutcome =
  /** The greeting and the echo of the payload arrived. */
  | "replied"
  /** The handshake completed but no full reply came before the deadline. */
  | "connected"
  /** The handshake completed and the connection ended before a full reply. */
  | "closed"
  /** No handshake before the deadline (dropped or held SYNs). */
  | "timeout"
  | "refused"
  | "reset"
  | "unreachable"
  | "error";

export interface TcpProbeResult {
  readonly outcome: TcpOutcome;
  readonly greeting?: TcpGreeting;
  /** What came back after the greeting line. */
  readonly echo?: string;
  /** The socket error code, for refused/reset/unreachable/error. */
  readonly error?: string;
}

export interface TcpProbeOptions {
  /** Sent once connected; the probe waits for its echo. Default: "ping". */
  readonly payload?: string;
  /** Deadline of the whole attempt, handshake included; default 3 s. */
  readonly timeoutMs?: number;
}

// argv: host port timeoutMs payload. Prints one JSON object and exits 0 whatever happened.
const CLIENT_SCRIPT = `
const net = require("node:net");
const [host, port, ms, payload] = process.argv.slice(1);
let connected = false, buf = "", done = false;
const socket = net.connect({ host, port: Number(port) });
const finish = (outcome, extra) => {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify({ outcome, ...extra }) + "\\n");
  socket.destroy();
  process.exit(0);
};
setTimeout(() => finish(connected ? "connected" : "timeout", {}), Number(ms));
socket.on("connect", () => { connected = true; if (payload) socket.write(payload); });
socket.on("data", (d) => {
  buf += d.toString("utf8");
  const nl = buf.indexOf("\\n");
  if (nl < 0 || buf.length - nl - 1 < payload.length) return;
  let greeting;
  try { greeting = JSON.parse(buf.slice(0, nl)); } catch { return finish("error", { error: "bad greeting: " + buf.slice(0, nl) }); }
  finish("replied", { greeting, echo: buf.slice(nl + 1) });
});
socket.on("error", (e) => {
  const code = e.code || e.message;
  const outcome = code === "ECONNREFUSED" ? "refused" : code === "ECONNRESET" ? "reset"
    : code === "EHOSTUNREACH" || code === "ENETUNREACH" ? "unreachable" : "error";
  finish(outcome, { error: code });
});
socket.on("close", () => finish(connected ? "closed" : "error", { error: "closed before connecting" }));
`;

// argv: name port host. Prints "listening <port>", then one "accepted <json>" line per connection.
const SERVER_SCRIPT = `
const net = require("node:net");
const [name, port, host] = process.argv.slice(1);
const server = net.createServer((s) => {
  s.on("error", () => undefined);
  const seen = { server: name, remoteAddress: s.remoteAddress, remotePort: s.remotePort,
    localAddress: s.localAddress, localPort: s.localPort };
  process.stdout.write("accepted " + JSON.stringify(seen) + "\\n");
  s.write(JSON.stringify(seen) + "\\n");
  s.pipe(s);
});
server.on("error", (e) => { process.stderr.write(String(e.message) + "\\n"); process.exit(3); });
server.listen(Number(port), host, () => process.stdout.write("listening " + server.address().port + "\\n"));
`;

/** The probe printed something that is not its result. */
export class TcpProbeError extends Error {
  override readonly name = "TcpProbeError";
}

/** Connect from inside namespace `netns` to host:port and report how far the connection got. */
export async function probeTcp(
  processes: NetnsProcesses,
  netns: string,
  host: string,
  port: number,
  opts: TcpProbeOptions = {},
): Promise<TcpProbeResult> {
  const timeoutMs = opts.timeoutMs ?? 3_000;
  const payload = opts.payload ?? "ping";
  const res = await processes.exec(
    netns,
    process.execPath,
    ["-e", CLIENT_SCRIPT, host, String(port), String(timeoutMs), payload],
    { timeoutMs: timeoutMs + 10_000 }, // node's own start-up comes on top of the probe's deadline
  );
  try {
    return JSON.parse(res.stdout.trim()) as TcpProbeResult;
  } catch {
    throw new TcpProbeError(`probe from ${netns} to ${host}:${port} printed ${JSON.stringify(res.stdout)}`);
  }
}

export interface TcpServer {
  readonly port: number;
  readonly process: NetnsProcess;
  /** The connections accepted so far, as the server saw them. */
  accepted(): TcpGreeting[];
  stop(): Promise<void>;
}

/** Start the greeting/echo server in namespace `netns`, listening on host:port (port 0: any). */
export async function serveTcp(
  processes: NetnsProcesses,
  netns: string,
  name: string,
  port: number,
  host = "0.0.0.0",
): Promise<TcpServer> {
  const proc = processes.spawn(netns, process.execPath, ["-e", SERVER_SCRIPT, name, String(port), host]);
  const listening = await proc.waitForOutput(/^listening (\d+)$/m, 10_000).catch(async (err: unknown) => {
    await proc.stop("SIGKILL");
    throw err;
  });
  return {
    port: Number(listening[1]),
    process: proc,
    accepted: () =>
      proc
        .stdout()
        .split("\n")
        .filter((l) => l.startsWith("accepted "))
        .map((l) => JSON.parse(l.slice("accepted ".length)) as TcpGreeting),
    stop: () => proc.stop("SIGKILL"),
  };
}
