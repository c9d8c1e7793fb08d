// Linux ABI numbers for the socket layer. They are the same on x86_64 and arm64: both use the
// generic <asm-generic/socket.h> and <asm-generic/fcntl.h> values (the architectures that differ —
// alpha, mips, parisc, sparc — are refused by `assertSupportedPlatform`). Checked against
// <linux/in.h>, <linux/in6.h>, <asm-generic/socket.h>, <asm-generic/fcntl.h>, <linux/sched.h>,
// <linux/tcp.h> and glibc's <bits/socket_type.h>.

export const AF_INET = 2;
export const AF_INET6 = 10;

export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000; // = O_NONBLOCK
export const SOCK_CLOEXEC = 0o2000000; // = O_CLOEXEC

export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_ERROR = 4;
export const SO_REUSEPORT = 15;
export const SO_MARK = 36;

export const SOL_IP = 0;
export const IP_FREEBIND = 15;
export const IP_TRANSPARENT = 19;

export const SOL_IPV6 = 41;
export const IPV6_TRANSPARENT = 75;
export const IPV6_FREEBIND = 78;

export const O_RDONLY = 0;
export const O_CLOEXEC = 0o2000000;

export const CLONE_NEWNET = 0x40000000;

/** A socket option the layer sets, with the name used in error messages. */
export interface SocketOption {
  readonly label: string;
  readonly level: number;
  readonly name: number;
}

const option = (label: string, level: number, name: number): SocketOption => ({ label, level, name });

export const SocketOptions = {
  reuseAddr: option("SO_REUSEADDR", SOL_SOCKET, SO_REUSEADDR),
  reusePort: option("SO_REUSEPORT", SOL_SOCKET, SO_REUSEPORT),
  mark: option("SO_MARK", SOL_SOCKET, SO_MARK),
  error: option("SO_ERROR", SOL_SOCKET, SO_ERROR),
  transparent4: option("IP_TRANSPARENT", SOL_IP, IP_TRANSPARENT),
  freebind4: option("IP_FREEBIND", SOL_IP, IP_FREEBIND),
  transparent6: option("IPV6_TRANSPARENT", SOL_IPV6, IPV6_TRANSPARENT),
  freebind6: option("IPV6_FREEBIND", SOL_IPV6, IPV6_FREEBIND),
} as const;

/** Largest mark SO_MARK accepts (a u32). */
export const MAX_MARK = 0xffff_ffff;

export class UnsupportedPlatformError extends Error {
  override readonly name = "UnsupportedPlatformError";
  constructor(
    readonly platform: string,
    readonly arch: string,
  ) {
    super(`transparent sockets need Linux on x64 or arm64 (little-endian); this is ${platform}/${arch}`);
  }
}

/** Throws unless the constants above and the little-endian encodings in this folder hold here. */
export function assertSupportedPlatform(): void {
  if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) {
    throw new UnsupportedPlatformError(process.platform, process.arch);
  }
}
