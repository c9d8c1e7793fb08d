import type { Logger } from "pino";
import type { ReleaseFreeMemory } from "./malloc-trim.js";

// Give freed memory back to the kernel once the ztunnel has gone quiet, and never while traffic
// flows (trimming walks every arena, which a busy data path should not pay for). What a burst of
// traffic leaves is mostly read buffers, freed only when V8 collects their JS objects, which an
// idle process does late or not at all: so the first release of a quiet spell runs a full garbage
// collection first (when node exposes gc(); ~10 ms, once per spell), and the spell releases again
// after 2, 4 and 8 quiet ticks for what V8 frees on its own later. Then nothing until traffic has
// come and gone.

/** The last quiet tick (counted from the last activity) that releases. */
export const LAST_RELEASING_QUIET_TICK = 8;

export interface IdleTrimState {
  /** The activity count at the previous tick (NaN before the first). */
  readonly lastActivity: number;
  /** Ticks in a row without activity. */
  readonly quietTicks: number;
}

export const INITIAL_IDLE_TRIM_STATE: IdleTrimState = { lastActivity: Number.NaN, quietTicks: 0 };

export interface IdleTrimDecision {
  /** Return free memory to the kernel now. */
  readonly release: boolean;
  /** Collect garbage first (the spell's first release). */
  readonly collect: boolean;
  readonly next: IdleTrimState;
}

/**
 * One tick. `activity` is a count that every connection and every byte moves on; a tick that sees
 * it unchanged is quiet. Releases on quiet ticks 1, 2, 4 and 8 of a spell, collecting garbage
 * before the first. Start-up counts as activity, so its leftovers are released too.
 */
export function decideIdleTrim(state: IdleTrimState, activity: number): IdleTrimDecision {
  const quietTicks = activity === state.lastActivity ? state.quietTicks + 1 : 0;
  const release = isPowerOfTwo(quietTicks) && quietTicks <= LAST_RELEASING_QUIET_TICK;
  return { release, collect: quietTicks === 1, next: { lastActivity: activity, quietTicks } };
}

const isPowerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

export interface IdleTrimmerOptions {
  /** The tick interval: how long without traffic before the first release. */
  readonly quietMs: number;
  /** The count that moves with every connection and byte (ZtunnelMetrics.activity). */
  readonly activity: () => number;
  readonly release: ReleaseFreeMemory;
  /**
   * A full garbage collection (V8's gc(), when node runs with --expose-gc), run before the first
   * release of a spell and before releaseNow's.
   */
  readonly collectGarbage?: () => void;
  readonly log: Logger;
  /** Resident memory in bytes, for the debug line; default process.memoryUsage.rss. */
  readonly rss?: () => number;
}

export interface IdleTrimmer {
  /** Collect and release now, whatever the traffic: once start-up is done, its garbage is known dead. */
  releaseNow(why: string): void;
  stop(): void;
}

export function startIdleTrimmer(opts: IdleTrimmerOptions): IdleTrimmer {
  const rss = opts.rss ?? (() => process.memoryUsage.rss());
  let state = INITIAL_IDLE_TRIM_STATE;
  let stopped = false;
  const releaseMemory = (collect: boolean, why: string): void => {
    const before = rss();
    const started = performance.now();
    const collected = collect && opts.collectGarbage !== undefined;
    if (collected) opts.collectGarbage?.();
    const released = opts.release();
    opts.log.debug(
      {
        why,
        collected,
        released,
        rssBeforeMb: round(before / 2 ** 20),
        rssAfterMb: round(rss() / 2 ** 20),
        tookMs: round(performance.now() - started),
      },
      "freed memory returned to the kernel",
    );
  };
  const timer = setInterval(() => {
    const { release, collect, next } = decideIdleTrim(state, opts.activity());
    state = next;
    if (release) releaseMemory(collect, "quiet");
  }, opts.quietMs);
  // Never what keeps the process alive.
  timer.unref();
  return {
    releaseNow: (why) => {
      if (!stopped) releaseMemory(true, why);
    },
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}

const round = (x: number): number => Math.round(x * 10) / 10;
