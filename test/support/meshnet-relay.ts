import { spawn } from "node:child_process";
import { connect } from "node:net";
import type { Server, Socket } from "node:net";

// Making a service of the test process reachable from inside a test namespace without giving the
// root namespace any address: a short-lived child entered into the namespace creates a listening
// socket there and hands it to this process over the IPC channel (SCM_RIGHTS). A socket keeps the
// namespace it was created in, so this process then accepts connections that arrive in that
// namespace, and relays each one to a loopback port of its own namespace.

/** The listening socket could not be created in the namespace. */
export class NetnsListenError extends Error {
  override readonly name = "NetnsListenError";
  constructor(
    readonly netns: string,
    readonly address: string,
    reason: string,
  ) {
    super(`cannot listen on ${address} in netns ${netns}: ${reason}`);
  }
}

// CommonJS (`node -e`): argv[1] is the host, argv[2] the port. Exits once the handle is sent; the
// socket lives on in this process, which holds the other reference to it.
const LISTENER_SCRIPT = `
const net = require("node:net");
const [host, port] = process.argv.slice(1);
const server = net.createServer();
server.on("error", (e) => { process.stderr.write(String(e && e.message) + "\\n"); process.exit(3); });
server.listen(Number(port), host, () => {
  process.send({ port: server.address().port }, server, (e) => process.exit(e ? 4 : 0));
});
`;

/** A listening TCP socket on `host:port` (port 0: any) inside the named namespace, owned by this process. */
export function listenInNetns(
  netns: string,
  host: string,
  port: number,
  timeoutMs = 10_000,
): Promise<Server> {
  const address = `${host}:${port}`;
  return new Promise((resolve, reject) => {
    const child = spawn(
      "ip",
      ["netns", "exec", netns, process.execPath, "-e", LISTENER_SCRIPT, host, String(port)],
      {
        stdio: ["ignore", "ignore", "pipe", "ipc"],
      },
    );
    let stderr = "";
    let done = false;
    const finish = (settle: () => void): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      settle();
    };
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
      finish(() => reject(new NetnsListenError(netns, address, `no socket within ${timeoutMs} ms`)));
    }, timeoutMs);
    child.stderr?.on("data", (b: Buffer) => void (stderr += b.toString("utf8")));
    child.on("message", (_message, handle) => {
      if (handle && typeof (handle as Server).address === "function") finish(() => resolve(handle as Server));
    });
    child.on("error", (e) => finish(() => reject(new NetnsListenError(netns, address, e.message))));
    // A message can still be in the channel when the helper has exited: fail only once the channel
    // is closed too (and stderr read), so a sent socket is never mistaken for a failure.
    let exitCode: number | null | undefined;
    let disconnected = false;
    const failIfGone = (): void => {
      if (exitCode === undefined || !disconnected) return;
      finish(() =>
        reject(
          new NetnsListenError(
            netns,
            address,
            `helper exited ${exitCode}: ${stderr.trim() || "no socket sent"}`,
          ),
        ),
      );
    };
    child.on("disconnect", () => {
      disconnected = true;
      failIfGone();
    });
    child.on("close", (code) => {
      exitCode = code;
      failIfGone();
    });
  });
}

export interface TcpRelay {
  /** Connections relayed so far. */
  readonly accepted: () => number;
  /** Stop listening and cut every relayed connection. */
  close(): Promise<void>;
}

/** Relay every connection `server` accepts to `target` (a port of this process's namespace). */
export function relayTcp(server: Server, target: { host: string; port: number }): TcpRelay {
  const open = new Set<Socket>();
  let accepted = 0;
  server.on("connection", (downstream: Socket) => {
    accepted++;
    const upstream = connect(target.port, target.host);
    const cut = (): void => {
      downstream.destroy();
      upstream.destroy();
      open.delete(downstream);
      open.delete(upstream);
    };
    open.add(downstream);
    open.add(upstream);
    downstream.on("error", cut).on("close", cut);
    upstream.on("error", cut).on("close", cut);
    downstream.pipe(upstream).pipe(downstream);
  });
  return {
    accepted: () => accepted,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        open.clear();
        if (!server.listening) return resolve();
        server.close(() => resolve());
      }),
  };
}
