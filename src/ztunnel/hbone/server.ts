// The HBONE server: takes TCP connections accepted on the inbound port (one transparent listener
// for every local pod IP), answers TLS as the workload whose address the client connected to, and
// serves CONNECT streams through the caller's handler.
import * as http2 from "node:http2";
import { isIPv4 } from "node:net";
import type * as net from "node:net";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import { pino } from "pino";
import type { Logger } from "pino";
import { errorText } from "./errors.js";
import { parseAuthority } from "./headers.js";
import type { ParsedAuthority } from "./headers.js";
import { keepAlive } from "./keepalive.js";
import { resolveHboneSettings, sessionMemoryMegabytes } from "./settings.js";
import type { HboneSettings } from "./settings.js";
import { splice } from "./splice.js";
import type { SpliceObserver, SpliceResult } from "./splice.js";
import { certificateIdentity, CredentialCache, HBONE_ALPN, hboneContextOptions } from "./tls.js";
import type { WorkloadCredential } from "./tls.js";

export interface HbonePeer {
  /** The client's SPIFFE ID, from its verified certificate (in this server's trust domain). */
  readonly identity: string;
  readonly address: string;
  readonly port: number;
}

export interface HboneRequest {
  /** `:authority` as sent. */
  readonly authority: string;
  /** `:authority` parsed; requests whose authority does not parse are answered 400 before the handler. */
  readonly target: ParsedAuthority;
  readonly headers: http2.IncomingHttpHeaders;
  readonly peer: HbonePeer;
  /** The address the client connected to (the destination pod IP). */
  readonly localAddress: string;
  readonly localPort: number;
}

export type HboneHandlerResult =
  | {
      readonly status: 200;
      /** Connected to the target; half-open connections should be allowed (`allowHalfOpen: true`). */
      readonly upstream: Duplex;
      readonly responseHeaders?: Readonly<Record<string, string>>;
      /** Bytes as they pass, and the outcome once both sides closed (for metrics and logs). */
      readonly observer?: SpliceObserver & { finished?(outcome: SpliceResult): void };
    }
  | { readonly status: 400 | 401 | 503; readonly reason: string };

/**
 * Decides a CONNECT: 200 with a connected upstream once the target is a served workload, the
 * authorization policy allows `peer.identity`, and the upstream connection succeeded; otherwise
 * 400 (not a workload this proxy serves), 401 (denied) or 503 (unknown workload, upstream failed).
 * A handler that throws is answered 503.
 */
export type HboneHandler = (req: HboneRequest) => Promise<HboneHandlerResult>;

export interface HboneServerOptions {
  /** The credential of the workload at a local address; undefined closes the connection. */
  readonly credentialFor: (localAddress: string) => Promise<WorkloadCredential | undefined>;
  /** The mesh roots client chains must verify against; a function is read for each connection. */
  readonly rootsPem: string | (() => string);
  /** Clients must hold an identity in this trust domain. */
  readonly trustDomain: string;
  readonly handler: HboneHandler;
  readonly settings?: Partial<HboneSettings>;
  readonly log?: Logger;
}

export interface HboneServerStats {
  /** HTTP/2 sessions open. */
  readonly connections: number;
  /** CONNECT streams open (being decided or piping). */
  readonly streams: number;
  /** Connections accepted that have no session yet (credential lookup or TLS handshake). */
  readonly handshakes: number;
}

interface Accepted {
  readonly raw: net.Socket;
  session: http2.ServerHttp2Session | undefined;
}

export class HboneServer {
  readonly settings: HboneSettings;
  private readonly log: Logger;
  private state: "serving" | "draining" | "closed" = "serving";
  /**
   * Accepted connections by TCP 4-tuple, until their socket closes. The TLS layer hands back its
   * own socket object, not the accepted one; the 4-tuple names one live connection on both.
   */
  private readonly accepted = new Map<string, Accepted>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private streams = 0;
  /** One TLS server (context and client verification) per local address, rebuilt on rotation. */
  private readonly tlsServers = new CredentialCache<tls.Server>();
  private emptyWaiters: (() => void)[] = [];

  constructor(private readonly opts: HboneServerOptions) {
    this.settings = resolveHboneSettings(opts.settings);
    this.log = (opts.log ?? pino({ level: "silent" })).child({ component: "hbone-server" });
  }

  /** Serves one accepted TCP connection; the certificate is chosen by the address it was accepted on. */
  handleConnection(socket: net.Socket): void {
    const key = tupleOf(socket);
    if (this.state !== "serving" || key === undefined) {
      this.log.debug({ state: this.state }, "HBONE connection closed: not accepting connections");
      socket.destroy();
      return;
    }
    const record: Accepted = { raw: socket, session: undefined };
    this.accepted.set(key, record);
    socket.on("error", (e: Error) => this.log.debug({ err: e }, "HBONE connection failed"));
    socket.once("close", () => {
      if (this.accepted.get(key) === record) this.accepted.delete(key);
      this.notifyIfEmpty();
    });
    void this.startTls(socket, key);
  }

  /**
   * Graceful shutdown: GOAWAY on every session (new streams go to a new connection, which the
   * listener should now hand to another server), no new connections; resolves once every open
   * stream has finished and every connection has closed.
   */
  drain(): Promise<void> {
    if (this.state === "serving") this.state = "draining";
    for (const session of this.sessions) session.close();
    return this.whenEmpty();
  }

  /** Closes every connection at once, resetting open streams; resolves when all are closed. */
  close(): Promise<void> {
    this.state = "closed";
    for (const { raw, session } of this.accepted.values()) {
      session?.destroy();
      raw.destroy();
    }
    this.tlsServers.clear();
    return this.whenEmpty();
  }

  stats(): HboneServerStats {
    let handshakes = 0;
    for (const a of this.accepted.values()) if (a.session === undefined) handshakes++;
    return { connections: this.sessions.size, streams: this.streams, handshakes };
  }

  private async startTls(socket: net.Socket, key: string): Promise<void> {
    const local = unmapIpv4(socket.localAddress ?? "");
    let cred: WorkloadCredential | undefined;
    let rootsPem: string;
    try {
      cred = await this.opts.credentialFor(local);
      rootsPem = typeof this.opts.rootsPem === "function" ? this.opts.rootsPem() : this.opts.rootsPem;
    } catch (e) {
      this.log.error({ err: e, localAddress: local }, "HBONE connection closed: credential lookup failed");
      socket.destroy();
      return;
    }
    if (socket.destroyed || this.state === "closed") {
      socket.destroy();
      return;
    }
    if (!cred) {
      this.tlsServers.delete(local);
      this.log.warn(
        { localAddress: local, remoteAddress: socket.remoteAddress },
        "HBONE connection closed: no workload certificate for the address it was accepted on",
      );
      socket.destroy();
      return;
    }
    let server: tls.Server;
    try {
      server = this.tlsServers.get(local, cred, rootsPem, (c, roots) => this.tlsServer(c, roots));
    } catch (e) {
      this.log.error(
        { err: e, localAddress: local },
        "HBONE connection closed: the workload credential is unusable",
      );
      socket.destroy();
      return;
    }
    if (!this.accepted.has(key)) return;
    server.emit("connection", socket);
  }

  private tlsServer(cred: WorkloadCredential, rootsPem: string): tls.Server {
    const server = tls.createServer({
      ...hboneContextOptions(cred, rootsPem),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: [HBONE_ALPN],
      handshakeTimeout: this.settings.handshakeTimeoutMs,
    });
    server.on("secureConnection", (socket: tls.TLSSocket) => this.onSecure(socket));
    server.on("tlsClientError", (err: Error, socket: tls.TLSSocket) => {
      this.log.info(
        {
          err,
          certificateError: socket.authorizationError,
          remoteAddress: socket.remoteAddress,
          localAddress: socket.localAddress,
        },
        "HBONE TLS handshake failed",
      );
    });
    return server;
  }

  private onSecure(socket: tls.TLSSocket): void {
    const key = tupleOf(socket);
    const record = key === undefined ? undefined : this.accepted.get(key);
    const localAddress = unmapIpv4(socket.localAddress ?? "");
    const remote = { remoteAddress: unmapIpv4(socket.remoteAddress ?? ""), localAddress };
    const refuse = (why: string, extra: object = {}): void => {
      this.log.warn({ ...remote, ...extra }, `HBONE connection closed: ${why}`);
      socket.destroy();
    };
    if (!record || this.state === "closed") return refuse("the server is closed");
    if (socket.alpnProtocol !== HBONE_ALPN) {
      return refuse(`the client did not negotiate ALPN ${HBONE_ALPN}`, { alpn: socket.alpnProtocol });
    }
    if (!socket.authorized) {
      return refuse("the client certificate does not verify", { error: socket.authorizationError });
    }
    const cert = socket.getPeerX509Certificate();
    const found = cert ? certificateIdentity(cert.raw) : { error: "the client presented no certificate" };
    if ("error" in found) return refuse(`client certificate: ${found.error}`);
    if (found.id.trustDomain !== this.opts.trustDomain) {
      return refuse(`the client's trust domain is not ${this.opts.trustDomain}`, {
        identity: found.identity,
      });
    }

    const session = http2.performServerHandshake(socket, {
      settings: {
        maxConcurrentStreams: this.settings.serverMaxConcurrentStreams,
        initialWindowSize: this.settings.streamWindowBytes,
        maxFrameSize: this.settings.maxFrameBytes,
        maxHeaderListSize: this.settings.serverMaxHeaderListBytes,
      },
      maxSessionMemory: sessionMemoryMegabytes(this.settings),
    });
    record.session = session;
    this.sessions.add(session);
    session.setLocalWindowSize(this.settings.connectionWindowBytes);
    keepAlive(session, this.settings);
    const peer: HbonePeer = {
      identity: found.identity,
      address: remote.remoteAddress,
      port: socket.remotePort ?? 0,
    };
    const localPort = socket.localPort ?? 0;
    session.on("error", (e: Error) =>
      this.log.debug({ err: e, peer: peer.identity }, "HBONE session failed"),
    );
    session.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) =>
      this.onStream(stream, headers, peer, localAddress, localPort),
    );
    session.once("close", () => {
      this.sessions.delete(session);
      this.notifyIfEmpty();
    });
    // Accepted before a drain began: serve no stream on it, the client retries elsewhere.
    if (this.state === "draining") session.close();
  }

  private onStream(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    peer: HbonePeer,
    localAddress: string,
    localPort: number,
  ): void {
    this.streams++;
    stream.once("close", () => {
      this.streams--;
      this.notifyIfEmpty();
    });
    stream.on("error", (e: Error) => this.log.debug({ err: e, peer: peer.identity }, "HBONE stream failed"));
    const method = headers[":method"];
    if (method !== "CONNECT")
      return this.refuse(stream, 400, `method ${String(method)} is not CONNECT`, peer);
    const authority = headers[":authority"];
    const target = typeof authority === "string" ? parseAuthority(authority) : undefined;
    if (authority === undefined || target === undefined) {
      return this.refuse(stream, 400, `authority ${JSON.stringify(authority)} is not ip:port`, peer);
    }
    void this.answer(stream, { authority, target, headers, peer, localAddress, localPort });
  }

  private async answer(stream: http2.ServerHttp2Stream, req: HboneRequest): Promise<void> {
    let result: HboneHandlerResult;
    try {
      result = await this.opts.handler(req);
    } catch (e) {
      this.log.error({ err: e, authority: req.authority }, "HBONE handler failed");
      result = { status: 503, reason: `handler failed: ${errorText(e)}` };
    }
    if (result.status !== 200) return this.refuse(stream, result.status, result.reason, req.peer);
    const { upstream } = result;
    if (stream.closed || stream.destroyed) {
      upstream.destroy();
      return;
    }
    try {
      stream.respond({ ...result.responseHeaders, ":status": 200 });
    } catch (e) {
      this.log.error({ err: e, authority: req.authority }, "HBONE response could not be sent");
      upstream.destroy();
      stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    const outcome = await splice(stream, upstream, result.observer);
    result.observer?.finished?.(outcome);
    this.log.debug(
      { authority: req.authority, peer: req.peer.identity, ...outcome },
      "HBONE stream finished",
    );
  }

  private refuse(
    stream: http2.ServerHttp2Stream,
    status: 400 | 401 | 503,
    reason: string,
    peer: HbonePeer,
  ): void {
    this.log.info({ status, reason, peer: peer.identity }, "HBONE request refused");
    if (stream.closed || stream.destroyed) return;
    stream.respond({ ":status": status }, { endStream: true });
    // The client may still be sending; RST_STREAM(NO_ERROR) after our END_STREAM stops it.
    if (!stream.endAfterHeaders) stream.close(http2.constants.NGHTTP2_NO_ERROR);
  }

  private whenEmpty(): Promise<void> {
    return new Promise((resolve) => {
      this.emptyWaiters.push(resolve);
      this.notifyIfEmpty();
    });
  }

  private notifyIfEmpty(): void {
    if (this.accepted.size > 0 || this.sessions.size > 0 || this.streams > 0) return;
    const waiters = this.emptyWaiters;
    this.emptyWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

function tupleOf(socket: net.Socket): string | undefined {
  const { localAddress, localPort, remoteAddress, remotePort } = socket;
  if (!localAddress || !localPort || !remoteAddress || !remotePort) return undefined;
  return `${unmapIpv4(localAddress)}|${localPort}|${unmapIpv4(remoteAddress)}|${remotePort}`;
}

/** `::ffff:10.0.0.1` (an IPv4 client on a dual-stack socket) as `10.0.0.1`. */
function unmapIpv4(address: string): string {
  const tail = address.startsWith("::ffff:") ? address.slice(7) : "";
  return isIPv4(tail) ? tail : address;
}
