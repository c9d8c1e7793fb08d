import assert from "node:assert/strict";
import { PassThrough, Writable } from "node:stream";
import { describe, it } from "node:test";
import { setImmediate as nextCheckPhase } from "node:timers/promises";
import { copyChunks, MAX_BUFFERED_BYTES } from "../../src/ztunnel/copy.js";

/** A writer that records each call it gets (write or writev) and completes it when told. */
function recordingWriter(opts: { holdCallbacks?: boolean } = {}) {
  const calls: number[][] = [];
  const pending: (() => void)[] = [];
  const writer = new Writable({
    writev(chunks, cb) {
      calls.push(chunks.map((c) => (c.chunk as Buffer).length));
      if (opts.holdCallbacks) pending.push(() => cb());
      else cb();
    },
    write(chunk: Buffer, _enc, cb) {
      calls.push([chunk.length]);
      if (opts.holdCallbacks) pending.push(() => cb());
      else cb();
    },
  });
  return { writer, calls, release: () => pending.splice(0).forEach((f) => f()) };
}

describe("copyChunks", () => {
  it("writes the chunks of one event-loop turn with one writev, and counts every byte", async () => {
    const from = new PassThrough();
    const { writer, calls } = recordingWriter();
    let counted = 0;
    copyChunks(from, writer, (n) => (counted += n));
    from.write(Buffer.alloc(100));
    from.write(Buffer.alloc(200));
    from.write(Buffer.alloc(300));
    await nextCheckPhase();
    await nextCheckPhase();
    assert.equal(counted, 600);
    assert.deepEqual(calls, [[100, 200, 300]]);

    from.write(Buffer.alloc(7));
    await nextCheckPhase();
    await nextCheckPhase();
    assert.deepEqual(calls, [[100, 200, 300], [7]], "a later turn is its own write");
  });

  it("pauses the reader only past MAX_BUFFERED_BYTES queued, and resumes it on drain", async () => {
    const from = new PassThrough({ highWaterMark: 4 * MAX_BUFFERED_BYTES });
    const { writer, release } = recordingWriter({ holdCallbacks: true });
    copyChunks(from, writer, () => undefined);
    const chunk = 64 * 1024;
    // Past the writer's own 16 KiB mark but below ours: still flowing.
    from.write(Buffer.alloc(chunk));
    from.write(Buffer.alloc(chunk));
    await nextCheckPhase();
    assert.equal(from.isPaused(), false);
    for (let sent = 2 * chunk; sent <= MAX_BUFFERED_BYTES; sent += chunk) from.write(Buffer.alloc(chunk));
    await nextCheckPhase();
    await nextCheckPhase();
    assert.equal(from.isPaused(), true, "paused once more than 1 MiB waits in the writer");
    while (writer.writableLength > 0) {
      release();
      await nextCheckPhase();
    }
    assert.equal(from.isPaused(), false, "resumed when the writer drained");
  });
});
