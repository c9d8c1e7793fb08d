import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import type { Server, Socket } from "node:net";
import { connectTcp, createListener } from "../sockets/index.js";
import { formatEndpoint } from "./echo.js";
import type { EchoGreeting } from "./echo.js";
import { LAB_ENV } from "./processes.js";
import { UDP_HELPER } from "./verify-udp.js";
import type { UdpAnswer } from "./verify-udp.js";

// Traffic of the lab's checks, made from inside its namespaces: TCP connections from a pod's or a
// node's namespace (the socket is created in that namespace, the rest is ordinary node:net), a TCP
// echo server in any namespace, and the UDP echo helper processes.

export const netnsFile = (netns: string): string => `/var/run/netns/${netns}`;

export type EchoExchange =
  | { readonly ok: true; readonly greeting: EchoGreeting; readonly echoed: string }
  | { readonly ok: false; readonly error: string; readonly greeting?: EchoGreeting };

/**
 * Connect from `netns` to an echo server, send `payload` and a newline, half-close, and read until
 * the server closes. ok when the greeting arrived and the payload came back.
 */
export async function tcpEcho(opts: {
  readonly netns: string;
  readonly host: string;
  readonly port: number;
  readonly payload: string;
  readonly timeoutMs?: number;
}): Promise<EchoExchange> {
  const timeoutMs = opts.timeoutMs ?? 3_000;
  let socket: Socket;
  try {
    socket = await connectTcp({
      host: opts.host,
      port: opts.port,
      netnsPath: netnsFile(opts.netns),
      timeoutMs,
    });
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
  return new Promise((resolve) => {
    let data = "";
    let failure: string | undefined;
    const timer = setTimeout(() => {
      failure = `no end of the exchange within ${timeoutMs} ms`;
      socket.destroy();
    }, timeoutMs);
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => (data += d));
    socket.on("error", (err) => (failure ??= err.message));
    socket.on("close", () => {
      clearTimeout(timer);
      const newline = data.indexOf("\n");
      const greeting = newline < 0 ? undefined : parseGreeting(data.slice(0, newline));
      const echoed = newline < 0 ? "" : data.slice(newline + 1);
      if (greeting && echoed.includes(opts.payload)) resolve({ ok: true, greeting, echoed });
      else
        resolve({
          ok: false,
          error:
            failure ??
            (greeting
              ? "the payload did not come back"
              : `no greeting (got ${JSON.stringify(data.slice(0, 80))})`),
          ...(greeting ? { greeting } : {}),
        });
    });
    socket.end(`${opts.payload}\n`);
  });
}

function parseGreeting(line: string): EchoGreeting | undefined {
  try {
    const g = JSON.parse(line) as Partial<EchoGreeting>;
    return typeof g.pod === "string" && typeof g.peer === "string" && typeof g.local === "string"
      ? { pod: g.pod, peer: g.peer, local: g.local }
      : undefined;
  } catch {
    return undefined;
  }
}

/** The IP of the peer a greeting names. */
export const peerIp = (g: EchoGreeting): string => g.peer.replace(/^\[?(.*?)\]?:\d+$/, "$1");

/** An echo server like the lab's workloads' (greeting, then echo) in any namespace, in this process. */
export async function startTcpEchoIn(
  netns: string,
  address: string,
  name: string,
): Promise<{ readonly port: number; close(): Promise<void> }> {
  const server: Server = await createListener({ address, port: 0, netnsPath: netnsFile(netns) });
  const sockets = new Set<Socket>();
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
    const greeting: EchoGreeting = {
      pod: name,
      peer: formatEndpoint(s.remoteAddress, s.remotePort),
      local: formatEndpoint(s.localAddress, s.localPort),
    };
    s.write(`${JSON.stringify(greeting)}\n`);
    s.pipe(s);
  });
  const port = (server.address() as { port: number }).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---- UDP ----------------------------------------------------------------------------------------

function helper(netns: string, stateDir: string, args: readonly string[]): ChildProcess {
  // The lab's marker in the environment: `lab down` removes a helper a crashed caller left behind.
  return spawn("ip", ["netns", "exec", netns, process.execPath, UDP_HELPER, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, [LAB_ENV]: stateDir },
  });
}

function collect(child: ChildProcess): { out: () => string; err: () => string } {
  let out = "";
  let err = "";
  child.stdout?.setEncoding("utf8");
  child.stderr?.setEncoding("utf8");
  child.stdout?.on("data", (s: string) => (out += s));
  child.stderr?.on("data", (s: string) => (err += s));
  return { out: () => out, err: () => err };
}

/** A UDP echo on `port` in `netns`, up until close() (or `lifetimeMs`, whichever comes first). */
export async function startUdpEcho(opts: {
  readonly netns: string;
  readonly port: number;
  readonly stateDir: string;
  readonly lifetimeMs?: number;
}): Promise<{ close(): void }> {
  const child = helper(opts.netns, opts.stateDir, [
    "serve",
    String(opts.port),
    String(opts.lifetimeMs ?? 30_000),
  ]);
  const io = collect(child);
  const close = (): void => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // gone already
      }
    }
  };
  const deadline = Date.now() + 5_000;
  while (!io.out().startsWith("ready")) {
    if (child.exitCode !== null || Date.now() > deadline) {
      close();
      throw new Error(
        `UDP echo on port ${opts.port} in ${opts.netns} did not start: ${io.err().trim() || "no answer"}`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { close };
}

/** Send `payload` from `netns` to a UDP echo and wait for its answer. */
export async function askUdpEchoFrom(opts: {
  readonly netns: string;
  readonly host: string;
  readonly port: number;
  readonly payload: string;
  readonly stateDir: string;
  readonly waitMs?: number;
}): Promise<UdpAnswer | { error: string }> {
  const waitMs = opts.waitMs ?? 3_000;
  const child = helper(opts.netns, opts.stateDir, [
    "ask",
    opts.host,
    String(opts.port),
    opts.payload,
    String(waitMs),
  ]);
  const io = collect(child);
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), waitMs + 5_000);
    child.once("close", (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  try {
    return JSON.parse(io.out().trim()) as UdpAnswer | { error: string };
  } catch {
    return { error: `the UDP client exited ${code}: ${io.err().trim() || io.out().trim() || "no output"}` };
  }
}
