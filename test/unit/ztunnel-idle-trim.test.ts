import assert from "node:assert/strict";
import { describe, it, mock } from "node:test";
import { pino } from "pino";
import {
  decideIdleTrim,
  INITIAL_IDLE_TRIM_STATE,
  LAST_RELEASING_QUIET_TICK,
  startIdleTrimmer,
} from "../../src/ztunnel/memory/idle-trim.js";
import type { IdleTrimState } from "../../src/ztunnel/memory/idle-trim.js";
import { loadMallocTrim } from "../../src/ztunnel/memory/malloc-trim.js";

/** The ticks (1-based) at which decideIdleTrim releases, for activity readings in tick order. */
function releasingTicks(readings: readonly number[]): number[] {
  return decisions(readings).release;
}

function decisions(readings: readonly number[]): { release: number[]; collect: number[] } {
  let state: IdleTrimState = INITIAL_IDLE_TRIM_STATE;
  const release: number[] = [];
  const collect: number[] = [];
  readings.forEach((activity, i) => {
    const d = decideIdleTrim(state, activity);
    state = d.next;
    if (d.release) release.push(i + 1);
    if (d.collect) collect.push(i + 1);
  });
  return { release, collect };
}

describe("decideIdleTrim", () => {
  it("releases on quiet ticks 1, 2, 4 and 8 of a spell, then no more", () => {
    // Tick 1 has nothing to compare with; ticks 2… are quiet ticks 1….
    assert.deepEqual(releasingTicks(Array<number>(20).fill(7)), [2, 3, 5, 9]);
    assert.equal(LAST_RELEASING_QUIET_TICK, 8);
  });

  it("never releases while the activity count moves", () => {
    assert.deepEqual(releasingTicks(Array.from({ length: 30 }, (_, i) => i * 1000)), []);
  });

  it("starts a new spell after activity, so traffic that came and went is released again", () => {
    const readings = [...Array<number>(12).fill(0), 50, 80, ...Array<number>(5).fill(80)];
    // First spell: quiet ticks 1, 2, 4, 8 at ticks 2, 3, 5, 9. Activity at ticks 13 and 14, then
    // quiet ticks 1, 2, 4 at ticks 15, 16, 18.
    assert.deepEqual(releasingTicks(readings), [2, 3, 5, 9, 15, 16, 18]);
  });

  it("collects garbage only before the first release of each spell", () => {
    const readings = [...Array<number>(12).fill(0), 50, ...Array<number>(5).fill(50)];
    assert.deepEqual(decisions(readings), { release: [2, 3, 5, 9, 14, 15, 17], collect: [2, 14] });
  });
});

describe("startIdleTrimmer", () => {
  it("releases on the quiet ticks of its interval, logs each release, and stops", (t) => {
    t.mock.timers.enable({ apis: ["setInterval"] });
    let activity = 0;
    const release = mock.fn(() => true);
    const lines: Record<string, unknown>[] = [];
    const log = pino(
      { level: "debug" },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    let rss = 100 * 2 ** 20;
    const collectGarbage = mock.fn();
    const trimmer = startIdleTrimmer({
      collectGarbage,
      quietMs: 5_000,
      activity: () => activity,
      release: () => {
        rss -= 10 * 2 ** 20;
        return release();
      },
      log,
      rss: () => rss,
    });
    t.mock.timers.tick(4_999);
    assert.equal(release.mock.callCount(), 0);
    t.mock.timers.tick(1); // tick 1: first reading
    t.mock.timers.tick(5_000); // quiet 1
    assert.equal(release.mock.callCount(), 1);
    assert.equal(collectGarbage.mock.callCount(), 1);
    t.mock.timers.tick(5_000); // quiet 2: a release without a collection
    assert.equal(release.mock.callCount(), 2);
    assert.equal(collectGarbage.mock.callCount(), 1);
    activity += 10;
    t.mock.timers.tick(5_000); // activity: no release
    assert.equal(release.mock.callCount(), 2);
    t.mock.timers.tick(5_000); // quiet 1 of a new spell
    assert.equal(release.mock.callCount(), 3);
    assert.equal(collectGarbage.mock.callCount(), 2);
    assert.equal(lines.length, 3);
    assert.equal(lines[0]?.["msg"], "freed memory returned to the kernel");
    assert.equal(lines[0]?.["why"], "quiet");
    assert.equal(lines[0]?.["released"], true);
    assert.equal(lines[0]?.["collected"], true);
    assert.equal(lines[1]?.["collected"], false);
    assert.equal(lines[0]?.["rssBeforeMb"], 100);
    assert.equal(lines[0]?.["rssAfterMb"], 90);
    trimmer.stop();
    t.mock.timers.tick(60_000);
    assert.equal(release.mock.callCount(), 3);
  });

  it("releases on demand, collecting first, whatever the traffic; not once stopped", () => {
    const release = mock.fn(() => false);
    const collectGarbage = mock.fn();
    const lines: Record<string, unknown>[] = [];
    const log = pino(
      { level: "debug" },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    let activity = 0;
    const trimmer = startIdleTrimmer({
      quietMs: 60_000,
      activity: () => ++activity,
      release,
      collectGarbage,
      log,
    });
    trimmer.releaseNow("ready");
    assert.equal(collectGarbage.mock.callCount(), 1);
    assert.equal(release.mock.callCount(), 1);
    assert.equal(lines[0]?.["why"], "ready");
    assert.equal(lines[0]?.["released"], false);
    trimmer.stop();
    trimmer.releaseNow("late");
    assert.equal(release.mock.callCount(), 1);
  });
});

describe("loadMallocTrim", () => {
  it("binds glibc's malloc_trim here (Debian), and calling it answers whether memory went back", () => {
    const release = loadMallocTrim();
    assert.equal(typeof release, "function", JSON.stringify(release));
    if (typeof release !== "function") return;
    assert.equal(typeof release(), "boolean");
  });
});
