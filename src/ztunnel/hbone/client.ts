// The HBONE client: a CONNECT stream to a destination through a pooled mTLS HTTP/2 connection to
// the ztunnel (port 15008) that serves it.
import * as http2 from "node:http2";
import * as tls from "node:tls";
import { pino } from "pino";
import type { Logger } from "pino";
import { defaultConnectSocket, openConnection } from "./connection.js";
import type { ClientConnection, ConnectSocket } from "./connection.js";
import { errorText, HboneConnectionError, HboneDialError } from "./errors.js";
import type { SocketAddress } from "./headers.js";
import { ConnectionPool, poolKey } from "./pool.js";
import type { Lease, PoolStats } from "./pool.js";
import { resolveHboneSettings } from "./settings.js";
import type { HboneSettings } from "./settings.js";
import { chainFingerprint, CredentialCache, hboneContextOptions } from "./tls.js";

export interface HboneClientOptions {
  readonly settings?: Partial<HboneSettings>;
  readonly log?: Logger;
  /** Makes the TCP connection (the ztunnel marks its sockets); default `net.connect`, bound to `sourceIp` if given. */
  readonly connectSocket?: ConnectSocket;
}

export interface HboneSource {
  /** The source workload's SPIFFE ID, the identity its certificate carries. */
  readonly identity: string;
  /** Leaf first. */
  readonly certChainPem: string;
  readonly keyPem: string;
  /** The address the connection leaves from, when it is not the node's (part of the pool key). */
  readonly sourceIp?: string;
}

export interface HboneDialRequest {
  /** Where to connect: the destination pod IP and the HBONE port (15008). */
  readonly peer: SocketAddress;
  /** The CONNECT target, `ip:port` (`formatAuthority`). */
  readonly authority: string;
  readonly source: HboneSource;
  /** The server must present one of these identities. */
  readonly expectedIdentities: readonly string[];
  /** The mesh roots the server's chain must verify against. */
  readonly rootsPem: string;
  /** Extra request headers (`connectRequestHeaders` formats upstream's); no pseudo-headers. */
  readonly headers?: Readonly<Record<string, string>>;
  /** For the whole dial; default the settings' `dialTimeoutMs`. */
  readonly timeoutMs?: number;
}

export interface HboneStreamInfo {
  readonly status: 200;
  readonly responseHeaders: http2.IncomingHttpHeaders;
  /** The server's identity, verified to be one of the expected ones. */
  readonly peerIdentity: string;
  /** The dial went over a connection that existed already (or that a concurrent dial set up). */
  readonly pooled: boolean;
}

/**
 * The tunnel: an HTTP/2 stream to write to and read from as a byte pipe (`end()` sends END_STREAM,
 * a TCP FIN at the far end). The caller must handle its 'error' event; `splice` does.
 */
export type HboneStream = http2.ClientHttp2Stream & HboneStreamInfo;

export class HboneClient {
  readonly settings: HboneSettings;
  private readonly log: Logger;
  private readonly connectSocket: ConnectSocket;
  private readonly pool: ConnectionPool;
  private readonly contexts = new CredentialCache<tls.SecureContext>();
  private readonly fingerprints = new Map<string, { readonly pem: string; readonly fingerprint: string }>();

  constructor(opts: HboneClientOptions = {}) {
    this.settings = resolveHboneSettings(opts.settings);
    this.log = (opts.log ?? pino({ level: "silent" })).child({ component: "hbone-client" });
    this.connectSocket = opts.connectSocket ?? defaultConnectSocket;
    this.pool = new ConnectionPool(this.settings, this.log);
  }

  /**
   * Opens a CONNECT stream for `req.authority`. Resolves once the server answered 200; every other
   * outcome rejects with an HboneDialError (a malformed request with a TypeError).
   */
  async dial(req: HboneDialRequest): Promise<HboneStream> {
    checkRequest(req);
    const timeoutMs = req.timeoutMs ?? this.settings.dialTimeoutMs;
    const attempt: DialAttempt = { timedOut: false, stream: undefined };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        attempt.timedOut = true;
        if (attempt.stream && !attempt.stream.closed) attempt.stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(dialError(req, "timeout", `no answer within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    const dialing = this.dialWithRetry(req, attempt);
    // Past the timeout the dial's own outcome has nobody to go to.
    dialing.catch(() => undefined);
    try {
      return await Promise.race([dialing, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  stats(): PoolStats {
    return this.pool.stats();
  }

  /** Closes every connection (resetting open streams); resolves when they are closed. */
  close(): Promise<void> {
    this.contexts.clear();
    return this.pool.close();
  }

  private async dialWithRetry(req: HboneDialRequest, attempt: DialAttempt): Promise<HboneStream> {
    const key = poolKey({
      sourceIdentity: req.source.identity,
      certFingerprint: this.fingerprint(req.source),
      expectedIdentities: req.expectedIdentities,
      peer: req.peer,
      ...(req.source.sourceIp !== undefined ? { sourceIp: req.source.sourceIp } : {}),
    });
    for (let tries = 1; ; tries++) {
      let lease: Lease;
      try {
        lease = await this.pool.acquire(key, () => this.open(req));
      } catch (e) {
        throw connectionFailure(req, e);
      }
      if (attempt.timedOut) {
        this.pool.release(lease.conn);
        throw dialError(req, "timeout", "timed out");
      }
      try {
        const { stream, headers } = await this.request(lease.conn, req, attempt);
        const info: HboneStreamInfo = {
          status: 200,
          responseHeaders: headers,
          peerIdentity: lease.conn.peerIdentity,
          pooled: lease.reused,
        };
        return Object.assign(stream, info);
      } catch (e) {
        // A stream refused by a GOAWAY that crossed it was never seen by the server: safe to repeat once.
        if (e instanceof RefusedStream && tries === 1 && !attempt.timedOut) continue;
        throw e instanceof RefusedStream ? e.error : e;
      }
    }
  }

  private open(req: HboneDialRequest): Promise<ClientConnection> {
    const secureContext = this.contexts.get(req.source.identity, req.source, req.rootsPem, (cred, roots) =>
      tls.createSecureContext(hboneContextOptions(cred, roots)),
    );
    return openConnection({
      peer: req.peer,
      ...(req.source.sourceIp !== undefined ? { sourceIp: req.source.sourceIp } : {}),
      secureContext,
      expectedIdentities: req.expectedIdentities,
      settings: this.settings,
      connectSocket: this.connectSocket,
    });
  }

  private request(
    conn: ClientConnection,
    req: HboneDialRequest,
    attempt: DialAttempt,
  ): Promise<{ stream: http2.ClientHttp2Stream; headers: http2.IncomingHttpHeaders }> {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = conn.session.request(
        { ...req.headers, ":method": "CONNECT", ":authority": req.authority },
        { endStream: false },
      );
    } catch (e) {
      this.pool.release(conn);
      return Promise.reject(dialError(req, "h2", `cannot open a stream: ${errorText(e)}`, undefined, e));
    }
    stream.once("close", () => this.pool.release(conn));
    attempt.stream = stream;
    return new Promise((resolve, reject) => {
      const finish = (): void => {
        stream.off("response", onResponse);
        stream.off("error", onError);
        stream.off("close", onClose);
      };
      const fail = (e: Error): void => {
        finish();
        // The stream is abandoned; whatever it reports later has been reported already.
        stream.on("error", () => undefined);
        if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(e);
      };
      const onResponse = (headers: http2.IncomingHttpHeaders): void => {
        const status = Number(headers[":status"]);
        if (status === 200) {
          finish();
          resolve({ stream, headers });
          return;
        }
        fail(dialError(req, "status", `the server answered ${status}`, status));
      };
      const onError = (e: Error): void => fail(this.streamFailure(conn, stream, req, e));
      const onClose = (): void => fail(this.streamFailure(conn, stream, req, undefined));
      stream.once("response", onResponse);
      stream.once("error", onError);
      stream.once("close", onClose);
    });
  }

  private streamFailure(
    conn: ClientConnection,
    stream: http2.ClientHttp2Stream,
    req: HboneDialRequest,
    e: Error | undefined,
  ): Error {
    const detail = e ? `: ${errorText(e)}` : "";
    if (!conn.settingsReceived) {
      // The server never spoke HTTP/2: it closed the connection after the TLS handshake, which is
      // how it refuses a client certificate it does not trust (TLS 1.3 finishes the client's
      // handshake before the server has checked it).
      return dialError(
        req,
        "tls",
        `the server closed the connection before HTTP/2 settings (it refused this client)${detail}`,
        undefined,
        e,
      );
    }
    const error = dialError(
      req,
      "h2",
      `the stream closed before an answer (code ${stream.rstCode})${detail}`,
      undefined,
      e,
    );
    return stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM ? new RefusedStream(error) : error;
  }

  private fingerprint(source: HboneSource): string {
    const hit = this.fingerprints.get(source.identity);
    if (hit?.pem === source.certChainPem) return hit.fingerprint;
    const fingerprint = chainFingerprint(source.certChainPem);
    this.fingerprints.set(source.identity, { pem: source.certChainPem, fingerprint });
    return fingerprint;
  }
}

interface DialAttempt {
  timedOut: boolean;
  stream: http2.ClientHttp2Stream | undefined;
}

class RefusedStream extends Error {
  constructor(readonly error: HboneDialError) {
    super(error.message);
  }
}

function checkRequest(req: HboneDialRequest): void {
  if (req.expectedIdentities.length === 0) {
    throw new TypeError("HBONE dial: expectedIdentities is empty; the server could never be verified");
  }
  if (req.authority === "") throw new TypeError("HBONE dial: authority is empty");
  for (const name of Object.keys(req.headers ?? {})) {
    if (name.startsWith(":")) throw new TypeError(`HBONE dial: header ${name} is a pseudo-header`);
  }
  if (req.timeoutMs !== undefined && (!Number.isInteger(req.timeoutMs) || req.timeoutMs <= 0)) {
    throw new TypeError(`HBONE dial: timeoutMs must be a positive integer, got ${req.timeoutMs}`);
  }
}

function dialError(
  req: HboneDialRequest,
  kind: HboneDialError["kind"],
  reason: string,
  status?: number,
  cause?: unknown,
): HboneDialError {
  return new HboneDialError(kind, req.peer, req.authority, reason, status, cause);
}

function connectionFailure(req: HboneDialRequest, e: unknown): HboneDialError {
  if (e instanceof HboneConnectionError) return dialError(req, e.kind, e.reason, undefined, e.cause);
  return dialError(req, "h2", errorText(e), undefined, e);
}
