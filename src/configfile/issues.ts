/** One problem found in a configuration file, located precisely enough for an editor to jump to it. */
export interface ConfigIssue {
  readonly file: string;
  /** 1-based; absent when the problem is about the file as a whole. */
  readonly line?: number;
  readonly column?: number;
  /** Dotted path of the offending field, e.g. `pairs[1].dpuNodeIP`; `(file)` for the whole document. */
  readonly field: string;
  readonly message: string;
}

export function formatIssue(issue: ConfigIssue): string {
  const where = issue.line === undefined ? issue.file : `${issue.file}:${issue.line}:${issue.column ?? 1}`;
  return `${where}: ${issue.field}: ${issue.message}`;
}

/** Raised by loaders when a file cannot be used; carries every issue found, not just the first. */
export class ConfigError extends Error {
  constructor(readonly issues: readonly ConfigIssue[]) {
    super(issues.map(formatIssue).join("\n"));
    this.name = "ConfigError";
  }
}

export type Result<T> = { ok: true; value: T } | { ok: false; issues: ConfigIssue[] };
