import type { SocketAddress } from "./headers.js";

/**
 * Why a dial failed:
 * - `connect`: the TCP connection to the peer failed;
 * - `tls`: the TLS handshake failed, the peer did not agree on `h2`, or it closed the connection
 *   before speaking HTTP/2 (what a server does when it refuses the client certificate);
 * - `identity`: the server's certificate verified but names none of the expected identities;
 * - `h2`: the HTTP/2 connection or stream failed before an answer;
 * - `status`: the server answered with a status other than 200 (`status`);
 * - `timeout`: no answer within the dial's timeout.
 */
export type HboneDialErrorKind = "connect" | "tls" | "identity" | "h2" | "status" | "timeout";

export class HboneDialError extends Error {
  constructor(
    readonly kind: HboneDialErrorKind,
    readonly peer: SocketAddress,
    readonly authority: string,
    readonly reason: string,
    readonly status?: number,
    override readonly cause?: unknown,
  ) {
    super(`HBONE dial ${authority} via ${peer.address}:${peer.port} failed (${kind}): ${reason}`);
    this.name = "HboneDialError";
  }
}

export const isHboneDialError = (e: unknown): e is HboneDialError => e instanceof HboneDialError;

/** A failure of a connection shared by several dials, re-labelled per dial by `HboneDialError`. */
export class HboneConnectionError extends Error {
  constructor(
    readonly kind: Exclude<HboneDialErrorKind, "status">,
    readonly reason: string,
    override readonly cause?: unknown,
  ) {
    super(reason);
    this.name = "HboneConnectionError";
  }
}

export function errorText(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return typeof code === "string" && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}
