// When to renew a certificate and how long to wait after a failed request: pure decisions, so the
// manager's timers are thin and the arithmetic is tested on its own.

export interface BackoffPolicy {
  readonly initialMs: number;
  readonly maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 1_000, maxMs: 60_000 };

/** setTimeout fires at once for delays past this (2^31 - 1 ms, about 24.8 days). */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/** A backoff policy from partial options; throws a RangeError on nonsense. */
export function backoffPolicy(opts: { initialMs?: number; maxMs?: number } = {}): BackoffPolicy {
  const initialMs = opts.initialMs ?? DEFAULT_BACKOFF.initialMs;
  if (!Number.isFinite(initialMs) || initialMs <= 0) {
    throw new RangeError(`backoff.initialMs must be a positive number of milliseconds, not ${initialMs}`);
  }
  const maxMs = Math.max(initialMs, opts.maxMs ?? DEFAULT_BACKOFF.maxMs);
  if (!Number.isFinite(maxMs)) throw new RangeError(`backoff.maxMs must be finite, not ${opts.maxMs}`);
  return { initialMs, maxMs };
}

/**
 * The wait before retry number `failures` (1 after the first failure): the delay doubles from
 * `initialMs` up to `maxMs`, and a random half of it is dropped ("equal jitter"), so proxies that
 * failed together (a CA restart) do not all come back in the same instant.
 */
export function backoffDelayMs(failures: number, policy: BackoffPolicy, random: () => number): number {
  const exponent = Math.max(0, Math.min(failures - 1, 52));
  const ceiling = Math.min(policy.maxMs, policy.initialMs * 2 ** exponent);
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}

/**
 * The earliest renewal after a certificate arrives. A certificate with almost no life left (a CA
 * that caps leaves at its root's expiry, a clock far ahead) would otherwise be renewed in a loop.
 */
export const MIN_REFRESH_DELAY_MS = 1_000;

/**
 * When to renew a certificate received at `receivedAt`: halfway through the part of its life still
 * ahead of it, and not sooner than MIN_REFRESH_DELAY_MS. Upstream takes half of notBefore..notAfter;
 * our CA backdates notBefore by two minutes for clock skew, which for short lifetimes would put
 * that midpoint before the certificate even arrived. From the later of notBefore and arrival, a
 * 24 h certificate is still renewed after about 12 h.
 */
export function refreshAtMs(notBefore: Date, notAfter: Date, receivedAt: number): number {
  const from = Math.max(notBefore.getTime(), receivedAt);
  const halfway = from + Math.floor(Math.max(0, notAfter.getTime() - from) / 2);
  return Math.max(halfway, receivedAt + MIN_REFRESH_DELAY_MS);
}
