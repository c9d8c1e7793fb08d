import koffi from "koffi";
import {
  assertSupportedPlatform,
  CLONE_NEWNET,
  O_CLOEXEC,
  O_RDONLY,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
} from "./constants.js";
import type { SocketOption } from "./constants.js";
import { SocketSyscallError } from "./errors.js";

// Thin adapters over libc through koffi: each makes one call, reads errno straight after it and
// turns a failure into a SocketSyscallError naming the call and what it was applied to. Nothing
// here decides anything; the callers in this folder do.

interface LibcBindings {
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, length: number): number;
  getsockopt(fd: number, level: number, name: number, value: Buffer, length: Buffer): number;
  bind(fd: number, address: Buffer, length: number): number;
  listen(fd: number, backlog: number): number;
  connect(fd: number, address: Buffer, length: number): number;
  close(fd: number): number;
  open(path: string, flags: number): number;
  setns(fd: number, nstype: number): number;
  strerror(errno: number): string;
  if_nametoindex(name: string): number;
}

let loaded: LibcBindings | undefined;

// Loaded on first use, so that importing the module never fails (e.g. for type checks on a
// platform where only the pure parts are used).
function libc(): LibcBindings {
  if (loaded) return loaded;
  assertSupportedPlatform();
  const lib = koffi.load("libc.so.6");
  loaded = {
    socket: lib.func("int socket(int domain, int type, int protocol)"),
    setsockopt: lib.func("int setsockopt(int fd, int level, int name, const void *value, uint32_t length)"),
    getsockopt: lib.func("int getsockopt(int fd, int level, int name, void *value, void *length)"),
    bind: lib.func("int bind(int fd, const void *address, uint32_t length)"),
    listen: lib.func("int listen(int fd, int backlog)"),
    connect: lib.func("int connect(int fd, const void *address, uint32_t length)"),
    close: lib.func("int close(int fd)"),
    // open(2) is variadic in libc; declaring it so keeps the call ABI-correct (mode is not passed).
    open: lib.func("int open(const char *path, int flags, ...)"),
    setns: lib.func("int setns(int fd, int nstype)"),
    strerror: lib.func("const char *strerror(int errno)"),
    if_nametoindex: lib.func("uint32_t if_nametoindex(const char *name)"),
  } as LibcBindings;
  return loaded;
}

function failure(syscall: string, target: string): SocketSyscallError {
  const errno = koffi.errno();
  return new SocketSyscallError(syscall, errno, target, describeErrno(errno));
}

/** libc's text for an errno value ("Connection refused"). */
export function describeErrno(errno: number): string {
  return libc().strerror(errno);
}

/** A non-blocking, close-on-exec TCP socket of `family` (AF_INET/AF_INET6) in the thread's netns. */
export function openTcpSocket(family: number, target: string): number {
  const fd = libc().socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw failure("socket", target);
  return fd;
}

export function setIntOption(fd: number, opt: SocketOption, value: number, target: string): void {
  const buf = Buffer.alloc(4);
  buf.writeUInt32LE(value >>> 0);
  if (libc().setsockopt(fd, opt.level, opt.name, buf, 4) !== 0) {
    throw failure("setsockopt", `${opt.label}=${value} on fd ${fd} (${target})`);
  }
}

/** The option's value as an unsigned 32-bit integer (marks are u32; flags and errno values are small). */
export function getIntOption(fd: number, opt: SocketOption, target: string): number {
  const value = Buffer.alloc(4);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(4);
  if (libc().getsockopt(fd, opt.level, opt.name, value, length) !== 0) {
    throw failure("getsockopt", `${opt.label} on fd ${fd} (${target})`);
  }
  return value.readUInt32LE(0);
}

export function bindSocket(fd: number, sockaddr: Buffer, target: string): void {
  if (libc().bind(fd, sockaddr, sockaddr.length) !== 0) throw failure("bind", target);
}

export function listenSocket(fd: number, backlog: number, target: string): void {
  if (libc().listen(fd, backlog) !== 0) throw failure("listen", target);
}

const EINPROGRESS = 115;
const EINTR = 4;

/**
 * Starts a connect on a non-blocking socket: "connected" if it completed at once (loopback may),
 * "pending" if the handshake goes on (EINPROGRESS; also EINTR, after which POSIX has the connect
 * continue asynchronously). Anything else is the connect's failure.
 */
export function startConnect(fd: number, sockaddr: Buffer, target: string): "connected" | "pending" {
  if (libc().connect(fd, sockaddr, sockaddr.length) === 0) return "connected";
  const errno = koffi.errno();
  if (errno === EINPROGRESS || errno === EINTR) return "pending";
  throw new SocketSyscallError("connect", errno, target, describeErrno(errno));
}

/** Closes `fd`. Linux releases the descriptor even when close reports an error, so there is nothing to retry. */
export function closeFd(fd: number): void {
  libc().close(fd);
}

export function openNetnsFile(path: string): number {
  const fd = libc().open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw failure("open", path);
  return fd;
}

/** Moves the calling thread (here: the JS thread) into the network namespace `fd` refers to. */
export function enterNetns(fd: number, path: string): void {
  if (libc().setns(fd, CLONE_NEWNET) !== 0) throw failure("setns", path);
}

/** The interface index of `name` in the thread's netns, for IPv6 zone ids. */
export function interfaceIndex(name: string): number | undefined {
  const index = libc().if_nametoindex(name);
  return index > 0 ? index : undefined;
}

export interface WritablePoll {
  close(): void;
}

// koffi's libuv poll (koffi.node.poll, undocumented in 3.3.4). Its index.d.ts declares the callback
// as (events), but src/koffi/src/uv.cc calls it with (status, events): status is a negative libuv
// error (UV_EBADF when the fd reports POLLERR, which is how a refused connect shows up).
type KoffiPoll = (
  fd: number,
  opts: { writable: boolean },
  callback: (status: number, events: { writable: boolean }) => void,
) => WritablePoll | null;

/**
 * Calls `onReady` once the event loop sees `fd` writable or in error. The handle must be closed
 * (it stays registered otherwise) before the fd is closed or handed to another libuv handle.
 */
export function pollWritable(fd: number, onReady: (status: number) => void): WritablePoll {
  libc();
  const poll = koffi.node.poll as unknown as KoffiPoll;
  const handle = poll(fd, { writable: true }, (status) => onReady(status));
  if (!handle) throw failure("uv_poll_start", `fd ${fd}`);
  return handle;
}
