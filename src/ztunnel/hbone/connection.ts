// One client HBONE connection: TCP to the peer's HBONE port, TLS 1.3 as the source workload with
// the server's identity checked, then an HTTP/2 client session with HBONE's settings.
import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";
import { errorText, HboneConnectionError } from "./errors.js";
import { formatAuthority } from "./headers.js";
import type { SocketAddress } from "./headers.js";
import { keepAlive } from "./keepalive.js";
import { sessionMemoryMegabytes } from "./settings.js";
import type { HboneSettings } from "./settings.js";
import { certificateIdentity, HBONE_ALPN } from "./tls.js";

/** Makes the TCP connection to an HBONE peer; the ztunnel substitutes its own (SO_MARK, source IP). */
export type ConnectSocket = (address: string, port: number, sourceIp?: string) => Promise<net.Socket>;

export const defaultConnectSocket: ConnectSocket = (address, port, sourceIp) =>
  new Promise((resolve, reject) => {
    const socket = net.connect({ host: address, port, ...(sourceIp ? { localAddress: sourceIp } : {}) });
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve(socket);
    });
  });

export interface OpenConnectionParams {
  readonly peer: SocketAddress;
  readonly sourceIp?: string;
  readonly secureContext: tls.SecureContext;
  readonly expectedIdentities: readonly string[];
  readonly settings: HboneSettings;
  readonly connectSocket: ConnectSocket;
}

/** A client HTTP/2 session over mTLS to one peer, with the bookkeeping the pool needs. */
export class ClientConnection {
  /** Streams open or reserved on this connection. */
  active = 0;
  /** The server's SETTINGS arrived: it accepted us and speaks HTTP/2. */
  settingsReceived = false;
  /** No new streams: GOAWAY received, idle, or superseded by a rotated certificate. */
  retired = false;
  idleTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly session: http2.ClientHttp2Session,
    readonly peerIdentity: string,
    private readonly maxStreams: number,
  ) {
    session.on("remoteSettings", () => (this.settingsReceived = true));
  }

  /** Whether a new stream may go on this connection now. */
  hasRoom(): boolean {
    if (this.retired || this.session.closed || this.session.destroyed) return false;
    const advertised = this.settingsReceived
      ? (this.session.remoteSettings.maxConcurrentStreams ?? Infinity)
      : Infinity;
    return this.active < Math.min(this.maxStreams, advertised);
  }
}

/** Connects, handshakes and verifies; failures are HboneConnectionErrors of kind connect, tls, identity or timeout. */
export async function openConnection(p: OpenConnectionParams): Promise<ClientConnection> {
  const { peer, settings } = p;
  let raw: net.Socket | undefined;
  let secure: tls.TLSSocket | undefined;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    secure?.destroy();
    raw?.destroy();
  }, settings.connectTimeoutMs);
  const timeoutError = (): HboneConnectionError =>
    new HboneConnectionError("timeout", `connection not established within ${settings.connectTimeoutMs} ms`);

  try {
    try {
      raw = await p.connectSocket(peer.address, peer.port, p.sourceIp);
    } catch (e) {
      throw timedOut ? timeoutError() : new HboneConnectionError("connect", errorText(e), e);
    }
    if (timedOut) {
      raw.destroy();
      throw timeoutError();
    }
    raw.setNoDelay(true);
    secure = await handshake(raw, p.secureContext).catch((e: unknown) => {
      throw timedOut ? timeoutError() : new HboneConnectionError("tls", `TLS handshake: ${errorText(e)}`, e);
    });
    if (secure.alpnProtocol !== HBONE_ALPN) {
      throw new HboneConnectionError(
        "tls",
        `the server did not agree on ALPN ${HBONE_ALPN} (got ${secure.alpnProtocol || "none"})`,
      );
    }
    const peerIdentity = serverIdentity(secure, p.expectedIdentities);
    const session = startSession(secure, peer, settings);
    return new ClientConnection(session, peerIdentity, settings.clientMaxStreamsPerConnection);
  } catch (e) {
    secure?.destroy();
    raw?.destroy();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

function handshake(raw: net.Socket, secureContext: tls.SecureContext): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    // No servername: HBONE connects by IP and upstream sends no SNI; the server picks its
    // certificate by the address we connected to. The chain is verified against the mesh roots
    // (rejectUnauthorized); the identity is checked by the caller instead of a host name.
    const socket = tls.connect({
      socket: raw,
      secureContext,
      ALPNProtocols: [HBONE_ALPN],
      rejectUnauthorized: true,
      checkServerIdentity: () => undefined,
    });
    const onError = (e: Error): void => {
      socket.off("close", onClose);
      reject(e);
    };
    const onClose = (): void => {
      socket.off("error", onError);
      reject(new Error("the connection closed during the TLS handshake"));
    };
    socket.once("error", onError);
    socket.once("close", onClose);
    socket.once("secureConnect", () => {
      socket.off("error", onError);
      socket.off("close", onClose);
      resolve(socket);
    });
  });
}

function serverIdentity(socket: tls.TLSSocket, expected: readonly string[]): string {
  const cert = socket.getPeerX509Certificate();
  if (!cert) throw new HboneConnectionError("identity", "the server presented no certificate");
  const found = certificateIdentity(cert.raw);
  if ("error" in found) throw new HboneConnectionError("identity", `server certificate: ${found.error}`);
  if (!expected.includes(found.identity)) {
    throw new HboneConnectionError(
      "identity",
      `the server is ${found.identity}, expected ${expected.length === 1 ? "" : "one of "}${expected.join(", ")}`,
    );
  }
  return found.identity;
}

function startSession(
  socket: tls.TLSSocket,
  peer: SocketAddress,
  settings: HboneSettings,
): http2.ClientHttp2Session {
  const session = http2.connect(`https://${formatAuthority(peer.address, peer.port)}`, {
    createConnection: () => socket,
    settings: {
      enablePush: false,
      initialWindowSize: settings.streamWindowBytes,
      maxFrameSize: settings.maxFrameBytes,
      maxHeaderListSize: settings.clientMaxHeaderListBytes,
    },
    maxSessionMemory: sessionMemoryMegabytes(settings),
    peerMaxConcurrentStreams: settings.clientMaxStreamsPerConnection,
  });
  // The connection window has no SETTINGS entry: it is raised with a WINDOW_UPDATE once the session runs.
  session.once("connect", () => session.setLocalWindowSize(settings.connectionWindowBytes));
  keepAlive(session, settings);
  return session;
}
