import net from "node:net";
import { applySettings, createTcpSocket } from "./create.js";
import { formatHostPort } from "./errors.js";
import { bindSocket, closeFd, listenSocket } from "./libc.js";
import { assertPort, encodeSockaddr } from "./sockaddr.js";
import { listenerSettings, SocketOptionsError } from "./settings.js";

export interface ListenerOptions {
  /** IP literal to bind ("0.0.0.0", "::", "127.0.0.1", "fe80::1%eth0"). */
  address: string;
  /** 0 lets the kernel choose; `server.address()` then reports the chosen port. */
  port: number;
  /** IP_TRANSPARENT / IPV6_TRANSPARENT: accept TPROXY'd connections for foreign addresses. */
  transparent?: boolean;
  /** IP_FREEBIND / IPV6_FREEBIND: bind an address the namespace does not (yet) have. */
  freebind?: boolean;
  /** SO_MARK, inherited by every accepted connection. */
  mark?: number;
  reusePort?: boolean;
  /** listen(2) backlog; default 511, as node's own servers. */
  backlog?: number;
  /** Create the socket inside this network namespace (e.g. /var/run/netns/<name>, /proc/<pid>/ns/net). */
  netnsPath?: string;
}

export const DEFAULT_BACKLOG = 511;

/**
 * A listening TCP socket made with the given options, served by a `net.Server` (which owns and
 * closes the descriptor from then on). Accepted sockets report, for TPROXY'd connections, the
 * original destination as `localAddress`/`localPort`.
 */
export async function createListener(opts: ListenerOptions): Promise<net.Server> {
  assertPort(opts.port);
  const backlog = opts.backlog ?? DEFAULT_BACKLOG;
  if (!Number.isInteger(backlog) || backlog < 1) throw new SocketOptionsError(`not a backlog: ${backlog}`);
  const where = opts.netnsPath === undefined ? "" : ` in ${opts.netnsPath}`;
  const target = `listener ${formatHostPort(opts.address, opts.port)}${where}`;
  const { fd, address } = createTcpSocket(opts.address, undefined, opts.netnsPath, target);
  try {
    applySettings(fd, listenerSettings(address.family, opts), target);
    bindSocket(fd, encodeSockaddr(address, opts.port), target);
    // Listening before node sees the fd leaves node's own listen(2) nothing that can fail (it only
    // updates the backlog), so node never has to report an error for an fd whose ownership is unclear.
    listenSocket(fd, backlog, target);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return serveFd(fd, backlog);
}

function serveFd(fd: number, backlog: number): Promise<net.Server> {
  const server = net.createServer();
  return new Promise((resolve, reject) => {
    const onError = (e: Error): void => {
      server.off("listening", onListening);
      server.close();
      reject(e);
    };
    const onListening = (): void => {
      server.off("error", onError);
      resolve(server);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    try {
      server.listen({ fd, backlog });
    } catch (e) {
      // Thrown before node made a handle for the fd (argument validation), so it is still ours.
      server.off("error", onError);
      server.off("listening", onListening);
      closeFd(fd);
      reject(e);
    }
  });
}
