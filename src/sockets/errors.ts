import { constants } from "node:os";

// Typed failures of the socket layer. Each carries the errno's symbolic name (`code`, as Node
// spells it: "ECONNREFUSED") so callers branch on names, never on numbers or message text.

const errnoNames: ReadonlyMap<number, string> = (() => {
  const names = new Map<number, string>();
  // First name wins for aliases (EAGAIN before EWOULDBLOCK, EDEADLK before EDEADLOCK).
  for (const [name, value] of Object.entries(constants.errno)) if (!names.has(value)) names.set(value, name);
  return names;
})();

/** The symbolic name of a Linux errno value ("ECONNREFUSED"), or "ERRNO_<n>" if Node has none. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `ERRNO_${errno}`;
}

/** A libc call failed. `target` names what it was applied to (an address, an fd and option, a path). */
export class SocketSyscallError extends Error {
  override readonly name = "SocketSyscallError";
  readonly code: string;
  constructor(
    readonly syscall: string,
    readonly errno: number,
    readonly target: string,
    description: string,
  ) {
    const code = errnoName(errno);
    super(`${syscall} ${target}: ${code} (${description})`);
    this.code = code;
  }
}

export const isSocketSyscallError = (e: unknown): e is SocketSyscallError => e instanceof SocketSyscallError;

/**
 * The JS thread could not switch back to its own network namespace after creating a socket in
 * another one. Every later socket this process creates would land in the wrong namespace, so the
 * layer refuses all further socket creation with this same error; the process should exit.
 */
export class NetnsRestoreError extends Error {
  override readonly name = "NetnsRestoreError";
  constructor(
    readonly netnsPath: string,
    override readonly cause: unknown,
  ) {
    super(
      `could not return the JS thread to its own network namespace after entering ${netnsPath}: ` +
        `${cause instanceof Error ? cause.message : String(cause)}; no further sockets can be created safely`,
    );
  }
}

/** The step of an outgoing connection that failed. */
export type ConnectStage = "options" | "netns" | "socket" | "setsockopt" | "bind" | "connect";

/**
 * An outgoing TCP connection was not established. `code` is an errno name — ECONNREFUSED,
 * ETIMEDOUT (also our own deadline), EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL, EPERM (missing
 * CAP_NET_ADMIN for a mark or a spoofed source), ECANCELED (the caller's AbortSignal fired),
 * EINVAL/EAFNOSUPPORT for unusable options — so a proxy can answer 503 and log the cause.
 */
export class ConnectError extends Error {
  override readonly name = "ConnectError";
  constructor(
    readonly code: string,
    readonly stage: ConnectStage,
    readonly host: string,
    readonly port: number,
    readonly localAddress: string | undefined,
    /** What happened, naming the code (e.g. "ECONNREFUSED (Connection refused)"). */
    detail: string,
    override readonly cause?: unknown,
  ) {
    const from = localAddress === undefined ? "" : ` from ${localAddress}`;
    super(`connect to ${formatHostPort(host, port)}${from} failed at ${stage}: ${detail}`);
  }
}

export const isConnectError = (e: unknown): e is ConnectError => e instanceof ConnectError;

/** A node socket or server without a usable file descriptor (not open yet, or already closed). */
export class SocketHandleError extends Error {
  override readonly name = "SocketHandleError";
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
