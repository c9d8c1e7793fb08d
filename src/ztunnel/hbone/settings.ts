// HBONE's tunables, defaulting to upstream ztunnel's values so that an offmesh ztunnel and an
// upstream one pool, flow-control and keep alive the same way on a shared connection.

const KiB = 1024;
const MiB = 1024 * KiB;

export interface HboneSettings {
  /** The inbound HBONE port on every pod IP. */
  readonly port: number;
  /** SETTINGS_INITIAL_WINDOW_SIZE: how much a peer may send on one stream before a WINDOW_UPDATE. */
  readonly streamWindowBytes: number;
  /** The connection-level receive window, opened with a WINDOW_UPDATE right after the preface. */
  readonly connectionWindowBytes: number;
  /** SETTINGS_MAX_FRAME_SIZE. */
  readonly maxFrameBytes: number;
  /** Streams the client puts on one connection before it opens another. */
  readonly clientMaxStreamsPerConnection: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS the server advertises. */
  readonly serverMaxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE the client advertises (it receives only response headers). */
  readonly clientMaxHeaderListBytes: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE the server advertises. */
  readonly serverMaxHeaderListBytes: number;
  /** A PING goes out on every connection this often (both ends). */
  readonly pingIntervalMs: number;
  /** A connection whose PING has not been answered this long after it was sent is dropped. */
  readonly pingTimeoutMs: number;
  /** A pooled client connection without streams for this long is closed. */
  readonly poolIdleTimeoutMs: number;
  /** TCP connect + TLS handshake of a new client connection. */
  readonly connectTimeoutMs: number;
  /** A whole dial (connection, if one is needed, and the CONNECT answer), unless the dial says otherwise. */
  readonly dialTimeoutMs: number;
  /** The server's TLS handshake. */
  readonly handshakeTimeoutMs: number;
}

export const DEFAULT_HBONE_SETTINGS: HboneSettings = Object.freeze({
  port: 15008,
  streamWindowBytes: 4 * MiB,
  connectionWindowBytes: 16 * MiB,
  maxFrameBytes: 1 * MiB,
  clientMaxStreamsPerConnection: 100,
  serverMaxConcurrentStreams: 200,
  clientMaxHeaderListBytes: 16 * KiB,
  serverMaxHeaderListBytes: 64 * KiB,
  pingIntervalMs: 10_000,
  pingTimeoutMs: 20_000,
  poolIdleTimeoutMs: 5 * 60_000,
  connectTimeoutMs: 10_000,
  dialTimeoutMs: 10_000,
  handshakeTimeoutMs: 10_000,
});

// RFC 9113 §6.5.2 / §6.9.1: windows are 31-bit, frames 2^14 … 2^24-1 bytes.
const MAX_WINDOW = 2 ** 31 - 1;
const MIN_FRAME = 2 ** 14;
const MAX_FRAME = 2 ** 24 - 1;
const MAX_TIMER_MS = 2 ** 31 - 1;

type Bounds = readonly [min: number, max: number];

const BOUNDS: { readonly [K in keyof HboneSettings]: Bounds } = {
  port: [1, 65535],
  streamWindowBytes: [65535, MAX_WINDOW],
  connectionWindowBytes: [65535, MAX_WINDOW],
  maxFrameBytes: [MIN_FRAME, MAX_FRAME],
  clientMaxStreamsPerConnection: [1, 2 ** 31 - 1],
  serverMaxConcurrentStreams: [1, 2 ** 31 - 1],
  clientMaxHeaderListBytes: [1 * KiB, 2 ** 31 - 1],
  serverMaxHeaderListBytes: [1 * KiB, 2 ** 31 - 1],
  pingIntervalMs: [1, MAX_TIMER_MS],
  pingTimeoutMs: [1, MAX_TIMER_MS],
  poolIdleTimeoutMs: [1, MAX_TIMER_MS],
  connectTimeoutMs: [1, MAX_TIMER_MS],
  dialTimeoutMs: [1, MAX_TIMER_MS],
  handshakeTimeoutMs: [1, MAX_TIMER_MS],
};

/** The defaults with `overrides` applied; a value that is not an integer in its range is a RangeError. */
export function resolveHboneSettings(overrides: Partial<HboneSettings> = {}): HboneSettings {
  const merged: HboneSettings = { ...DEFAULT_HBONE_SETTINGS, ...definedOnly(overrides) };
  for (const name of Object.keys(BOUNDS) as (keyof HboneSettings)[]) {
    const [min, max] = BOUNDS[name];
    const value = merged[name];
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new RangeError(`HBONE setting ${name} must be an integer from ${min} to ${max}, got ${value}`);
    }
  }
  return Object.freeze(merged);
}

/**
 * Node's per-session memory cap (MB) for these windows: a peer may legitimately have a whole
 * connection window in flight to us, plus what we have queued towards it, so Node's 10 MB default
 * would refuse streams under load with 16 MiB windows.
 */
export function sessionMemoryMegabytes(settings: HboneSettings): number {
  return Math.max(10, Math.ceil((settings.connectionWindowBytes * 3) / MiB));
}

function definedOnly(o: Partial<HboneSettings>): Partial<HboneSettings> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<HboneSettings>;
}
