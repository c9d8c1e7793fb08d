import net from "node:net";
import { applySettings, createTcpSocket } from "./create.js";
import { ConnectError, errnoName, formatHostPort, NetnsRestoreError, SocketSyscallError } from "./errors.js";
import type { ConnectStage } from "./errors.js";
import { SocketOptions } from "./constants.js";
import { bindSocket, closeFd, describeErrno, getIntOption, pollWritable, startConnect } from "./libc.js";
import type { WritablePoll } from "./libc.js";
import { AddressError, encodeSockaddr, sameAddress } from "./sockaddr.js";
import type { IpAddress } from "./sockaddr.js";
import { SocketOptionsError, upstreamSettings } from "./settings.js";

export interface ConnectOptions {
  /** IP literal of the peer (no name resolution: the proxy always knows the address). */
  host: string;
  port: number;
  /** A source address to spoof (the client pod's IP): IP_TRANSPARENT + IP_FREEBIND, bind(addr:0). */
  localAddress?: string;
  /** SO_MARK, set before the SYN leaves. */
  mark?: number;
  /** Deadline for the whole connect; default 10 000 ms. */
  timeoutMs?: number;
  /** TCP_NODELAY on the returned socket (default false, as node). */
  noDelay?: boolean;
  /** SO_KEEPALIVE on the returned socket (default false, as node). */
  keepAlive?: boolean;
  /** Create the socket inside this network namespace. */
  netnsPath?: string;
  /** Aborting rejects with ConnectError code ECANCELED and closes the half-made socket. */
  signal?: AbortSignal;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/**
 * An established TCP connection as a `net.Socket` (already connected: no 'connect' event follows).
 * The connect is non-blocking: connect(2) on a non-blocking socket sends the SYN, the event loop
 * watches the fd for writability (a libuv poll handle), SO_ERROR tells the outcome, and only then
 * is the fd handed to node. Until the hand-off this function owns the fd and closes it on every
 * failure, timeout and abort.
 *
 * Rejects with ConnectError (see its `code`), or with NetnsRestoreError, which is not a connect
 * failure but a broken process (see errors.ts).
 */
export async function connectTcp(opts: ConnectOptions): Promise<net.Socket> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  try {
    checkOptions(opts, timeoutMs);
    const target = `${formatHostPort(opts.host, opts.port)}${opts.netnsPath ? ` in ${opts.netnsPath}` : ""}`;
    const { fd, peer } = prepareSocket(opts, target);
    let socket: net.Socket;
    try {
      if (startConnect(fd, encodeSockaddr(peer, opts.port), target) === "pending") {
        await whenConnected(fd, timeoutMs, opts.signal, target);
      }
      socket = new net.Socket({ fd, readable: true, writable: true });
    } catch (e) {
      closeFd(fd); // also when node refused the fd: its handle never owned it
      throw e;
    }
    if (opts.noDelay) socket.setNoDelay(true);
    if (opts.keepAlive) socket.setKeepAlive(true);
    return socket;
  } catch (e) {
    throw asConnectError(e, opts);
  }
}

function connectError(
  opts: ConnectOptions,
  code: string,
  stage: ConnectStage,
  why: string,
  cause?: unknown,
): ConnectError {
  return new ConnectError(code, stage, opts.host, opts.port, opts.localAddress, `${code} (${why})`, cause);
}

function checkOptions(opts: ConnectOptions, timeoutMs: number): void {
  if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 0xffff) {
    throw connectError(opts, "EINVAL", "options", `not a destination port: ${opts.port}`);
  }
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw connectError(opts, "EINVAL", "options", `not a timeout: ${timeoutMs}`);
  }
  if (opts.signal?.aborted) {
    throw connectError(opts, "ECANCELED", "options", "aborted before start", opts.signal.reason);
  }
}

/** A socket in the right namespace with mark, transparency and spoofed source, not yet connecting. */
function prepareSocket(opts: ConnectOptions, target: string): { fd: number; peer: IpAddress } {
  const {
    fd,
    address: peer,
    other: local,
  } = createTcpSocket(opts.host, opts.localAddress, opts.netnsPath, target);
  try {
    if (local !== undefined && local.family !== peer.family) {
      const why = `local address ${opts.localAddress} is not of the family of ${opts.host}`;
      throw connectError(opts, "EAFNOSUPPORT", "options", why);
    }
    // Connecting a pod to itself: the source is already the destination, nothing to spoof.
    const spoof = local !== undefined && !sameAddress(local, peer);
    applySettings(fd, upstreamSettings(peer.family, { spoof, mark: opts.mark }), target);
    if (spoof) bindSocket(fd, encodeSockaddr(local, 0), `${opts.localAddress} (source for ${target})`);
    return { fd, peer };
  } catch (e) {
    closeFd(fd);
    throw e;
  }
}

/** Why a pending connect did not complete; becomes a ConnectError at stage "connect". */
class ConnectWaitFailure extends Error {
  constructor(
    readonly code: string,
    readonly why: string,
    override readonly cause?: unknown,
  ) {
    super(`${code} (${why})`);
  }
}

/** Resolves once the handshake completed; never closes the fd (the caller owns it). */
function whenConnected(
  fd: number,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  target: string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let poll: WritablePoll | undefined;
    let settled = false;
    const done = (failure: Error | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      poll?.close(); // before the caller closes the fd or gives it to node's own handle
      if (failure) reject(failure);
      else resolve();
    };
    const timer = setTimeout(
      () => done(new ConnectWaitFailure("ETIMEDOUT", `no connection within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const onAbort = (): void =>
      done(new ConnectWaitFailure("ECANCELED", "aborted by the caller", signal?.reason));
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      poll = pollWritable(fd, (status) => done(handshakeFailure(fd, status, target)));
    } catch (e) {
      done(e as Error);
    }
  });
}

function handshakeFailure(fd: number, status: number, target: string): Error | undefined {
  let soError: number;
  try {
    soError = getIntOption(fd, SocketOptions.error, target);
  } catch (e) {
    return e as Error;
  }
  if (soError !== 0) return new ConnectWaitFailure(errnoName(soError), describeErrno(soError));
  // libuv saw an error the socket does not report: do not trust the connection.
  if (status < 0) return new ConnectWaitFailure(errnoName(-status), `event loop poll status ${status}`);
  return undefined;
}

const stageOfSyscall: Readonly<Record<string, ConnectStage>> = {
  open: "netns",
  setns: "netns",
  socket: "socket",
  setsockopt: "setsockopt",
  bind: "bind",
  connect: "connect",
  getsockopt: "connect",
  uv_poll_start: "connect",
};

function asConnectError(e: unknown, opts: ConnectOptions): unknown {
  if (e instanceof ConnectError || e instanceof NetnsRestoreError) return e;
  if (e instanceof ConnectWaitFailure) return connectError(opts, e.code, "connect", e.why, e.cause);
  if (e instanceof SocketSyscallError) {
    const stage = stageOfSyscall[e.syscall] ?? "connect";
    return new ConnectError(e.code, stage, opts.host, opts.port, opts.localAddress, e.message, e);
  }
  if (e instanceof AddressError || e instanceof SocketOptionsError) {
    return connectError(opts, "EINVAL", "options", e.message, e);
  }
  return e; // not a connect outcome but a bug: let it surface unchanged
}
