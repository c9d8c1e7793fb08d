import type { Readable, Writable } from "node:stream";

// The one byte copy under both of the ztunnel's pipes (the TCP relay and the HBONE splice). It
// decides two things the kernel's cost depends on:
// - Back-pressure: a reader is paused only past a real backlog. An HTTP/2 stream or a socket says
//   "wait" after 16 KiB, which would otherwise stop and restart the reading socket (two epoll_ctl
//   calls) on every 64 KiB read.
// - Write size: bulk chunks that arrive in one turn of the event loop go out as one writev. A TLS
//   socket hands over what it decrypted 8–16 KiB at a time; written one by one, each becomes its
//   own TCP segment and its own wake-up of the receiving application. A small chunk with no batch
//   open (a request, a reply) is written at once: holding it would only add work (a corked write
//   allocates more, and every young-generation GC it hastens delays the requests it lands on).

/** How much one direction may have queued in its writer before its reader is paused. */
export const MAX_BUFFERED_BYTES = 1024 * 1024;

/** A chunk this big opens a batch: the reader is moving bulk data. */
export const BATCH_FROM_BYTES = 8 * 1024;

/**
 * Copy every chunk `from` emits into `to`, with the rules above; `counted` is told each chunk's
 * size as it passes. Ends, errors and closes are the caller's: this only moves data.
 */
export function copyChunks(from: Readable, to: Writable, counted: (bytes: number) => void): void {
  let batching = false;
  const flush = (): void => {
    batching = false;
    to.uncork();
  };
  from.on("data", (chunk: Buffer) => {
    counted(chunk.length);
    if (!batching && chunk.length >= BATCH_FROM_BYTES && !to.writableCorked) {
      // Held until the event loop's check phase, i.e. after every read this turn has delivered.
      to.cork();
      batching = true;
      setImmediate(flush);
    }
    if (!to.write(chunk) && to.writableLength >= MAX_BUFFERED_BYTES) from.pause();
  });
  to.on("drain", () => from.resume());
}
