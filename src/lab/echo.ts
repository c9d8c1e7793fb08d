import { createServer as createHttpServer } from "node:http";
import type { IncomingMessage, Server as HttpServer, ServerResponse } from "node:http";
import { createServer as createTcpServer } from "node:net";
import type { AddressInfo, Server as TcpServer, Socket } from "node:net";

// The program every lab workload pod runs. Each answer says which peer address the server saw:
// whether the mesh kept the client's source address (or replaced it with a proxy's) is exactly
// what the lab's walks check.

export interface EchoOptions {
  /** 0 picks a free port (tests). */
  readonly tcpPort: number;
  readonly httpPort: number;
  /** Named in every answer, so a client knows which pod answered. */
  readonly podName: string;
  /** Default 0.0.0.0: lab pods are IPv4, and a v4 socket shows peers without a `::ffff:` prefix. */
  readonly host?: string;
}

export interface EchoGreeting {
  readonly pod: string;
  /** `ip:port` of the connection's other end as this server saw it. */
  readonly peer: string;
  /** `ip:port` the connection arrived at. */
  readonly local: string;
}

export interface EchoServer {
  readonly tcpPort: number;
  readonly httpPort: number;
  close(): Promise<void>;
}

/** `ip:port`, with IPv6 in brackets and v4-mapped IPv6 shown as the IPv4 address it is. */
export function formatEndpoint(address: string | undefined, port: number | undefined): string {
  const ip = (address ?? "").replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, "");
  return ip.includes(":") ? `[${ip}]:${port ?? 0}` : `${ip}:${port ?? 0}`;
}

function greeting(pod: string, socket: Socket): EchoGreeting {
  return {
    pod,
    peer: formatEndpoint(socket.remoteAddress, socket.remotePort),
    local: formatEndpoint(socket.localAddress, socket.localPort),
  };
}

function listen(server: TcpServer | HttpServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closeServer(server: TcpServer | HttpServer): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function startTcp(podName: string): { server: TcpServer; sockets: Set<Socket> } {
  const sockets = new Set<Socket>();
  // allowHalfOpen: a client that has finished sending still gets the rest of its echo; the
  // server ends its side only once everything the client sent has been written back.
  const server = createTcpServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // A peer that resets is its own business; the server carries on with the others.
    socket.on("error", () => socket.destroy());
    socket.write(`${JSON.stringify(greeting(podName, socket))}\n`);
    socket.pipe(socket);
  });
  return { server, sockets };
}

function startHttp(podName: string): HttpServer {
  return createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? "/").split("?")[0];
    const send = (status: number, body: string, type = "application/json"): void => {
      res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body) });
      res.end(body);
    };
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      send(405, `${JSON.stringify({ error: `method ${req.method ?? ""} not allowed` })}\n`);
      return;
    }
    if (path === "/") send(200, `${JSON.stringify(greeting(podName, req.socket))}\n`);
    else if (path === "/healthz") send(200, "ok\n", "text/plain");
    else send(404, `${JSON.stringify({ error: `no such path ${path}` })}\n`);
  });
}

/** Start the TCP echo and the HTTP "who am I" server; both listen before this resolves. */
export async function startEchoServer(opts: EchoOptions): Promise<EchoServer> {
  const host = opts.host ?? "0.0.0.0";
  const tcp = startTcp(opts.podName);
  const http = startHttp(opts.podName);
  let tcpPort: number;
  let httpPort: number;
  try {
    tcpPort = await listen(tcp.server, opts.tcpPort, host);
    httpPort = await listen(http, opts.httpPort, host);
  } catch (err) {
    if (tcp.server.listening) await closeServer(tcp.server);
    throw new Error(
      `echo server of pod ${opts.podName}: cannot listen on ${host} ` +
        `(tcp ${opts.tcpPort}, http ${opts.httpPort}): ${(err as Error).message}`,
      { cause: err },
    );
  }
  let closing: Promise<void> | undefined;
  return {
    tcpPort,
    httpPort,
    close: () => {
      closing ??= (async () => {
        const done = Promise.all([closeServer(tcp.server), closeServer(http)]);
        for (const s of tcp.sockets) s.destroy();
        http.closeAllConnections();
        await done;
      })();
      return closing;
    },
  };
}

export interface EchoCommandOptions extends EchoOptions {
  /** Where the ready and stop lines go; default stdout. */
  readonly log?: (line: string) => void;
}

/** `offmesh lab echo`: serve until SIGTERM or SIGINT, then close and resolve. */
export async function runEchoCommand(opts: EchoCommandOptions): Promise<void> {
  const log = opts.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const server = await startEchoServer(opts);
  log(`echo: pod ${opts.podName} serving tcp ${server.tcpPort} and http ${server.httpPort}`);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    const on = (s: NodeJS.Signals): void => {
      process.off("SIGTERM", on);
      process.off("SIGINT", on);
      resolve(s);
    };
    process.on("SIGTERM", on);
    process.on("SIGINT", on);
  });
  await server.close();
  log(`echo: pod ${opts.podName} stopped (${signal})`);
}
