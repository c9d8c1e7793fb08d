// The byte pipe behind an answered CONNECT: an HTTP/2 stream joined to a TCP connection (the
// upstream at the server, the captured application connection at the client), with TCP's
// half-close and reset carried across (RFC 9113 §8.5).
import { constants as h2 } from "node:http2";
import type { Http2Stream } from "node:http2";
import { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { copyChunks } from "../copy.js";

/** The byte stream closed without ending its readable side (and without an error of its own). */
export class SpliceAbortError extends Error {
  constructor() {
    super("the connection closed without ending its data");
    this.name = "SpliceAbortError";
  }
}

export interface SpliceResult {
  /** Bytes that came out of the HTTP/2 stream (and went into the other side). */
  readonly fromStream: number;
  /** Bytes that went into the HTTP/2 stream. */
  readonly toStream: number;
  /** The first error of either side; absent when both directions ended cleanly. */
  readonly error?: Error;
}

/**
 * Copies `stream` and `other` into each other (../copy.ts: back-pressure, batched writes) until
 * both are closed:
 * - END_STREAM from the peer ends `other`'s writable side (a TCP FIN), and the end of `other`'s
 *   readable side ends the stream; each direction closes on its own.
 * - `other` failing or closing without ending its readable side resets the stream
 *   (RST_STREAM INTERNAL_ERROR, see `failStream`); the stream reset, aborted or failing resets
 *   `other` (a TCP RST for a socket).
 * - `other` closing after a clean end while the peer may still send: our END_STREAM is flushed,
 *   then RST_STREAM(NO_ERROR) tells the peer to stop — there is nobody left to deliver to.
 * `other` should allow half-open connections (`allowHalfOpen: true`), or its FIN ends the other
 * direction too early. The promise never rejects.
 */
/** Told of bytes as they pass (telemetry of long connections moves while they run). */
export interface SpliceObserver {
  fromStream?(bytes: number): void;
  toStream?(bytes: number): void;
}

export function splice(
  stream: Http2Stream,
  other: Duplex,
  observer: SpliceObserver = {},
): Promise<SpliceResult> {
  return new Promise((resolve) => {
    let fromStream = 0;
    let toStream = 0;
    let error: Error | undefined;
    let otherFailed = false;
    let streamClosed = false;
    let otherClosed = false;
    let settled = false;

    const settle = (): void => {
      if (settled || !streamClosed || !otherClosed) return;
      settled = true;
      resolve(error ? { fromStream, toStream, error } : { fromStream, toStream });
    };
    // RFC 9113 §8.5 asks for CONNECT_ERROR, but Node's `close(code)` first ends the writable side,
    // flushing an END_STREAM that the peer would take for a clean FIN before the reset arrives.
    // `destroy(err)` sends the RST_STREAM alone (code INTERNAL_ERROR).
    const failStream = (cause: Error): void => {
      if (!stream.destroyed) stream.destroy(cause);
    };
    const resetOther = (): void => {
      if (other.destroyed) return;
      if (other instanceof Socket && !other.connecting) {
        try {
          other.resetAndDestroy();
          return;
        } catch {
          // Not a TCP handle (a pipe): a plain close is all there is.
        }
      }
      other.destroy();
    };

    const onStreamClose = (): void => {
      streamClosed = true;
      const clean = !wasReset(stream) && stream.writableFinished && stream.readableEnded;
      if (!clean) resetOther();
      else if (!other.destroyed) {
        // Both directions are done; `other` was ended by us and only has to flush.
        if (other.writableFinished) other.destroy();
        else other.once("finish", () => other.destroy());
      }
      settle();
    };
    const onOtherClose = (): void => {
      otherClosed = true;
      if (otherFailed || !other.readableEnded) failStream(error ?? new SpliceAbortError());
      // Our END_STREAM is queued (`other`'s end ended the stream), so this RST follows it.
      else if (!stream.readableEnded && !stream.closed) stream.close(h2.NGHTTP2_NO_ERROR);
      settle();
    };

    stream.on("error", (e: Error) => {
      error ??= e;
      resetOther();
    });
    other.on("error", (e: Error) => {
      error ??= e;
      otherFailed = true;
      failStream(e);
    });
    stream.once("close", onStreamClose);
    other.once("close", onOtherClose);
    copyChunks(stream, other, (n) => {
      fromStream += n;
      observer.fromStream?.(n);
    });
    copyChunks(other, stream, (n) => {
      toStream += n;
      observer.toStream?.(n);
    });
    // Node emits 'end' on a stream destroyed by RST_STREAM too (before 'close'), so a reset must
    // not become a FIN: the end is passed on only when it was an END_STREAM.
    stream.once("end", () => {
      if (wasReset(stream)) resetOther();
      else other.end();
    });
    other.once("end", () => stream.end());

    // Either side may already be gone, in which case its 'close' has been or is about to be emitted.
    if (stream.destroyed) {
      streamClosed = true;
      resetOther();
    }
    if (other.destroyed) {
      otherClosed = true;
      failStream(new SpliceAbortError());
    }
    settle();
  });
}

/** Closed by RST_STREAM (other than NO_ERROR) or aborted before our side ended. */
function wasReset(stream: Http2Stream): boolean {
  return stream.aborted || (stream.closed && stream.rstCode !== h2.NGHTTP2_NO_ERROR);
}
