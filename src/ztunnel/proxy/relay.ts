import type { Duplex } from "node:stream";
import { copyChunks } from "../copy.js";

// The byte pipe between the two legs of a proxied connection. Each direction is copied with
// back-pressure (a full writer pauses its reader, see ../copy.ts) and ends on its own: one side's
// FIN is passed on as the other's end() while the opposite direction keeps flowing (half-close),
// as TCP proxies must for request/response protocols that shut down their sending side first.

export interface RelayOptions {
  /** No byte in either direction for this long closes both legs. 0: never. */
  readonly idleTimeoutMs?: number;
  /** Bytes read from `downstream` and written upstream, as they pass (telemetry while it runs). */
  readonly onUpstreamBytes?: (n: number) => void;
  /** Bytes read from `upstream` and written downstream. */
  readonly onDownstreamBytes?: (n: number) => void;
}

export interface RelayResult {
  /** Bytes the downstream (the client side) sent, i.e. passed upstream. */
  readonly sentUpstream: number;
  /** Bytes the upstream sent, passed downstream. */
  readonly sentDownstream: number;
  /** Why the relay ended early; undefined when both directions finished with a FIN. */
  readonly error?: string;
}

/**
 * Copy between `downstream` and `upstream` until both directions have ended, either side fails, or
 * the connection idles out. Both legs are destroyed when it resolves, so no socket outlives it.
 */
export function relay(downstream: Duplex, upstream: Duplex, opts: RelayOptions = {}): Promise<RelayResult> {
  return new Promise((resolve) => {
    let sentUpstream = 0;
    let sentDownstream = 0;
    let ended = 0;
    let done = false;
    let idleTimer: NodeJS.Timeout | undefined;
    let lastActivity = Date.now();
    const idleMs = opts.idleTimeoutMs ?? 0;

    const finish = (error?: string): void => {
      if (done) return;
      done = true;
      if (idleTimer) clearInterval(idleTimer);
      downstream.off("close", onDownstreamClose);
      upstream.off("close", onUpstreamClose);
      // Swallow errors raised while tearing down: the result already says what happened.
      downstream.on("error", () => undefined);
      upstream.on("error", () => undefined);
      // A failed connection is reset on both sides, as a TCP proxy's peers expect: a FIN would
      // tell the other end the data was complete.
      abort(downstream, error !== undefined);
      abort(upstream, error !== undefined);
      resolve({ sentUpstream, sentDownstream, ...(error !== undefined ? { error } : {}) });
    };

    const copy = (from: Duplex, to: Duplex, count: (n: number) => void): void => {
      copyChunks(from, to, (n) => {
        lastActivity = Date.now();
        count(n);
      });
      from.on("end", () => {
        to.end();
        // A direction is finished when its writer has flushed the FIN.
        if (to.writableFinished) directionDone();
        else to.once("finish", directionDone);
      });
    };
    const directionDone = (): void => {
      ended += 1;
      if (ended === 2) finish();
    };
    const onError = (side: string) => (err: Error) => finish(`${side}: ${err.message}`);
    // A leg that closes without having both received and sent its FIN was reset or destroyed;
    // one that closed cleanly leaves the other direction to finish flushing.
    const closedEarly = (side: string, leg: Duplex) => (): void => {
      if (!leg.readableEnded || !leg.writableFinished)
        finish(`${side} closed before the connection finished`);
    };
    const onDownstreamClose = closedEarly("downstream", downstream);
    const onUpstreamClose = closedEarly("upstream", upstream);

    copy(downstream, upstream, (n) => {
      sentUpstream += n;
      opts.onUpstreamBytes?.(n);
    });
    copy(upstream, downstream, (n) => {
      sentDownstream += n;
      opts.onDownstreamBytes?.(n);
    });
    downstream.on("error", onError("downstream"));
    upstream.on("error", onError("upstream"));
    downstream.on("close", onDownstreamClose);
    upstream.on("close", onUpstreamClose);

    // A leg that failed before the relay began emits nothing more.
    if (downstream.destroyed) finish("downstream closed before the relay started");
    else if (upstream.destroyed) finish("upstream closed before the relay started");

    if (idleMs > 0 && !done) {
      // One coarse timer per connection instead of re-arming a timeout on every chunk.
      idleTimer = setInterval(
        () => {
          if (Date.now() - lastActivity >= idleMs) finish(`idle for ${idleMs} ms`);
        },
        Math.min(idleMs, 1000),
      );
      idleTimer.unref();
    }
  });
}

function abort(leg: Duplex, reset: boolean): void {
  const socket = leg as Duplex & { resetAndDestroy?: () => void; close?: (code?: number) => void };
  if (reset && typeof socket.resetAndDestroy === "function" && !leg.destroyed) socket.resetAndDestroy();
  else leg.destroy();
}
