// The client's connection pool. A connection is shared by dials with the same key — upstream's
// {source identity, destination identity set, destination socket address, source IP}, plus the
// fingerprint of the source certificate so that a rotated certificate is used for new connections.
import type { Logger } from "pino";
import { canonicalIp } from "../../configfile/net.js";
import type { ClientConnection } from "./connection.js";
import { HboneConnectionError } from "./errors.js";
import type { SocketAddress } from "./headers.js";
import type { HboneSettings } from "./settings.js";

export interface PoolKey {
  /** Everything but the certificate: dials of one source to one destination. */
  readonly family: string;
  readonly fingerprint: string;
  readonly key: string;
}

export interface PoolKeyParts {
  readonly sourceIdentity: string;
  readonly certFingerprint: string;
  readonly expectedIdentities: readonly string[];
  readonly peer: SocketAddress;
  readonly sourceIp?: string;
}

export function poolKey(p: PoolKeyParts): PoolKey {
  const ids = [...new Set(p.expectedIdentities)].sort();
  const address = canonicalIp(p.peer.address)?.ip ?? p.peer.address;
  const sourceIp = p.sourceIp === undefined ? "" : (canonicalIp(p.sourceIp)?.ip ?? p.sourceIp);
  const family = JSON.stringify([p.sourceIdentity, ids, address, p.peer.port, sourceIp]);
  return { family, fingerprint: p.certFingerprint, key: `${family}#${p.certFingerprint}` };
}

export interface Lease {
  readonly conn: ClientConnection;
  /** The connection existed before this dial (or was being set up by another one). */
  readonly reused: boolean;
}

export interface PoolStats {
  /** Open connections, including retired ones still finishing their streams. */
  readonly connections: number;
  /** Streams open (or about to be) over all connections. */
  readonly streams: number;
  /** Connections being set up. */
  readonly connecting: number;
}

interface Entry {
  readonly conns: Set<ClientConnection>;
  connecting: Promise<ClientConnection> | undefined;
}

export class ConnectionPool {
  private readonly entries = new Map<string, Entry>();
  /** The certificate fingerprint in use per family. */
  private readonly currentFingerprint = new Map<string, string>();
  private readonly all = new Set<ClientConnection>();
  private connecting = 0;
  private closed = false;

  constructor(
    private readonly settings: HboneSettings,
    private readonly log: Logger,
  ) {}

  /**
   * A connection with room for one more stream, the slot reserved (give it back with `release`).
   * Dials that find no room wait for a connection another dial is setting up for the same key
   * rather than opening their own; if that setup fails, they fail with its error.
   */
  async acquire(k: PoolKey, open: () => Promise<ClientConnection>): Promise<Lease> {
    this.supersedeOldCertificates(k);
    for (;;) {
      if (this.closed) throw new HboneConnectionError("h2", "the HBONE client is closed");
      const entry = this.entryFor(k.key);
      for (const conn of entry.conns) {
        if (conn.hasRoom()) {
          this.reserve(conn);
          return { conn, reused: true };
        }
      }
      if (entry.connecting) {
        // Whoever started the setup takes its first slot; the rest look again for room.
        await entry.connecting;
        continue;
      }
      const setup = this.setUp(k, entry, open);
      entry.connecting = setup;
      const conn = await setup;
      if (conn.hasRoom()) {
        this.reserve(conn);
        return { conn, reused: false };
      }
    }
  }

  /** Gives back a slot taken by `acquire`, once its stream has closed. */
  release(conn: ClientConnection): void {
    conn.active = Math.max(0, conn.active - 1);
    if (conn.active > 0 || conn.retired || this.closed) return;
    clearTimeout(conn.idleTimer);
    conn.idleTimer = setTimeout(() => this.retire(conn, "idle"), this.settings.poolIdleTimeoutMs);
    conn.idleTimer.unref();
  }

  stats(): PoolStats {
    let streams = 0;
    for (const c of this.all) streams += c.active;
    return { connections: this.all.size, streams, connecting: this.connecting };
  }

  /** Destroys every connection (open streams are reset) and resolves once all are closed. */
  async close(): Promise<void> {
    this.closed = true;
    const closing = [...this.all].map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.session.destroyed) return resolve();
          c.session.once("close", () => resolve());
          c.session.destroy();
        }),
    );
    await Promise.all(closing);
  }

  private async setUp(
    k: PoolKey,
    entry: Entry,
    open: () => Promise<ClientConnection>,
  ): Promise<ClientConnection> {
    this.connecting++;
    try {
      const conn = await open();
      if (this.closed) {
        conn.session.destroy();
        throw new HboneConnectionError("h2", "the HBONE client closed while connecting");
      }
      this.adopt(k, entry, conn);
      return conn;
    } finally {
      this.connecting--;
      entry.connecting = undefined;
      this.dropIfEmpty(k.key, entry);
    }
  }

  private adopt(k: PoolKey, entry: Entry, conn: ClientConnection): void {
    this.all.add(conn);
    entry.conns.add(conn);
    // A certificate rotated while this connection was being set up: it serves the dials that
    // waited for it, then goes.
    if (this.currentFingerprint.get(k.family) !== k.fingerprint) conn.retired = true;
    const { session } = conn;
    session.on("error", (e: Error) =>
      this.log.debug({ err: e, peer: conn.peerIdentity }, "HBONE connection failed"),
    );
    // GOAWAY(NO_ERROR) makes Node close the session gracefully; other codes destroy it.
    session.on("goaway", (code: number) => {
      this.log.debug({ peer: conn.peerIdentity, code }, "HBONE connection got GOAWAY");
      this.retire(conn, "goaway");
    });
    session.once("close", () => {
      clearTimeout(conn.idleTimer);
      this.all.delete(conn);
      entry.conns.delete(conn);
      this.dropIfEmpty(k.key, entry);
    });
  }

  private reserve(conn: ClientConnection): void {
    conn.active++;
    clearTimeout(conn.idleTimer);
    conn.idleTimer = undefined;
  }

  /** No new streams on `conn`; it closes (GOAWAY) once its open streams have finished. */
  private retire(conn: ClientConnection, why: "idle" | "goaway" | "rotated"): void {
    conn.retired = true;
    clearTimeout(conn.idleTimer);
    if (why !== "goaway") this.log.debug({ peer: conn.peerIdentity, why }, "HBONE connection retired");
    if (!conn.session.closed && !conn.session.destroyed) conn.session.close();
  }

  /** A dial with a new certificate for a family retires the connections made with the old one. */
  private supersedeOldCertificates(k: PoolKey): void {
    const current = this.currentFingerprint.get(k.family);
    if (current === k.fingerprint) return;
    this.currentFingerprint.set(k.family, k.fingerprint);
    if (current === undefined) return;
    const old = this.entries.get(`${k.family}#${current}`);
    for (const conn of old?.conns ?? []) this.retire(conn, "rotated");
  }

  private entryFor(key: string): Entry {
    let entry = this.entries.get(key);
    if (!entry) {
      entry = { conns: new Set(), connecting: undefined };
      this.entries.set(key, entry);
    }
    return entry;
  }

  private dropIfEmpty(key: string, entry: Entry): void {
    if (entry.conns.size > 0 || entry.connecting || this.entries.get(key) !== entry) return;
    this.entries.delete(key);
    const family = key.slice(0, key.lastIndexOf("#"));
    const fingerprint = key.slice(key.lastIndexOf("#") + 1);
    if (this.currentFingerprint.get(family) === fingerprint && !this.hasFamily(family)) {
      this.currentFingerprint.delete(family);
    }
  }

  private hasFamily(family: string): boolean {
    for (const key of this.entries.keys()) if (key.startsWith(`${family}#`)) return true;
    return false;
  }
}
