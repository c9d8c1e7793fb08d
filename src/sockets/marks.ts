import type net from "node:net";
import { AF_INET, SocketOptions } from "./constants.js";
import { SocketHandleError } from "./errors.js";
import { closeFd, getIntOption, openTcpSocket, setIntOption } from "./libc.js";
import { jsThreadNetns } from "./netns.js";
import { assertMark } from "./settings.js";

// Options on sockets node already owns, and the startup check that the process may set them.

interface HandleWithFd {
  fd?: unknown;
}

/**
 * The descriptor behind a node socket or server. Node keeps it on the libuv handle (`_handle.fd`,
 * not a public API but stable across node versions for TCP wraps); -1 or no handle means the
 * socket is not open.
 */
export function socketFd(socket: net.Socket | net.Server): number {
  const handle = (socket as unknown as { _handle?: HandleWithFd | null })._handle;
  const fd = handle?.fd;
  if (typeof fd !== "number" || !Number.isInteger(fd) || fd < 0) {
    throw new SocketHandleError("socket has no file descriptor (not connected yet, or already closed)");
  }
  return fd;
}

export function setSocketMark(socket: net.Socket | net.Server, mark: number): void {
  assertMark(mark);
  const fd = socketFd(socket);
  setIntOption(fd, SocketOptions.mark, mark, `node socket fd ${fd}`);
}

export function socketMark(socket: net.Socket | net.Server): number {
  const fd = socketFd(socket);
  return getIntOption(fd, SocketOptions.mark, `node socket fd ${fd}`);
}

export interface Capabilities {
  /** IP_TRANSPARENT can be set (TPROXY listeners, spoofed sources). */
  transparent: boolean;
  /** SO_MARK can be set. */
  mark: boolean;
  /** Why not, when either is false (the kernel's errors; both need CAP_NET_ADMIN). */
  reason?: string;
}

/** Tries IP_TRANSPARENT and SO_MARK on a throwaway socket in the JS thread's namespace. */
export function probeCapabilities(): Capabilities {
  let fd: number;
  try {
    fd = jsThreadNetns.run(undefined, () => openTcpSocket(AF_INET, "capability probe"));
  } catch (e) {
    return { transparent: false, mark: false, reason: (e as Error).message };
  }
  const problems: string[] = [];
  const attempt = (set: () => void): boolean => {
    try {
      set();
      return true;
    } catch (e) {
      problems.push((e as Error).message);
      return false;
    }
  };
  try {
    const transparent = attempt(() => setIntOption(fd, SocketOptions.transparent4, 1, "capability probe"));
    const mark = attempt(() => setIntOption(fd, SocketOptions.mark, 1, "capability probe"));
    return problems.length === 0 ? { transparent, mark } : { transparent, mark, reason: problems.join("; ") };
  } finally {
    closeFd(fd);
  }
}
