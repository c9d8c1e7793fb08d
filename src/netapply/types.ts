/** One change a backend made (or, in a dry run, would make) to the kernel. */
export interface Change {
  /** `iptables`, `ipset`, `rule`, `route`, `link`, `sysctl`. */
  readonly backend: string;
  /** `add`, `delete`, `replace`, `set`, `create`, `restore` … */
  readonly action: string;
  /** What, as an operator would recognise it: a rule text, a route, `10.244.0.5`, a sysctl key. */
  readonly detail: string;
}

export interface BackendResult {
  readonly changes: readonly Change[];
  /** Commands run that modify the kernel. Zero when the kernel already matched. */
  readonly writes: number;
}

export const NO_CHANGE: BackendResult = { changes: [], writes: 0 };

export function combine(results: readonly BackendResult[]): BackendResult {
  return {
    changes: results.flatMap((r) => r.changes),
    writes: results.reduce((n, r) => n + r.writes, 0),
  };
}

/**
 * A reconcile step that failed. Steps that are atomic in the kernel (an iptables-restore per table,
 * an ipset swap) leave the previous state; an `ip -batch` stops at the failing line, which the
 * message names, and the next reconcile converges the rest.
 */
export class ApplyError extends Error {
  constructor(
    readonly backend: string,
    message: string,
    override readonly cause?: unknown,
  ) {
    super(`${backend}: ${message}`);
    this.name = "ApplyError";
  }
}
