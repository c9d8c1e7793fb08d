import assert from "node:assert/strict";
import { PassThrough, Writable } from "node:stream";
import { describe, it } from "node:test";
import { setImmediate as nextCheckPhase } from "node:timers/promises";
import { BATCH_FROM_BYTES, copyChunks, MAX_BUFFERED_BYTES } from "../../src/ztunnel/copy.js";

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
  it("writes the bulk chunks of one event-loop turn with one writev, and counts every byte", async () => {
    const from = new PassThrough();
    const { writer, calls } = recordingWriter();
    let counted = 0;
    copyChunks(from, writer, (n) => (counted += n));
    const big = BATCH_FROM_BYTES;
    from.write(Buffer.alloc(big));
    from.write(Buffer.alloc(big + 1));
    from.write(Buffer.alloc(100)); // small, but a batch is open: it joins it
    await nextCheckPhase();
    await nextCheckPhase();
    assert.equal(counted, 2 * big + 101);
    assert.deepEqual(calls, [[big, big + 1, 100]]);

    from.write(Buffer.alloc(big));
    await nextCheckPhase();
    await nextCheckPhase();
    assert.deepEqual(calls, [[big, big + 1, 100], [big]], "a later turn is its own write");
  });

  it("writes a small chunk at once when no batch is open", async () => {
    const from = new PassThrough();
    const { writer, calls } = recordingWriter();
    copyChunks(from, writer, () => undefined);
    from.write(Buffer.alloc(1024));
    await new Promise((r) => process.nextTick(r));
    await new Promise((r) => process.nextTick(r));
    assert.deepEqual(calls, [[1024]], "written before the check phase");
    assert.equal(writer.writableCorked, 0);
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
