import { ConfigError, formatIssue } from "../configfile/issues.js";

/** Exit codes of every offmesh command. */
export const EXIT = { ok: 0, invalid: 1, usage: 2 } as const;

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

export const processIo: Io = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
};

/** Print a failure the way every command does: each config issue on its own line, or the error. */
export function reportFailure(io: Io, err: unknown, json: boolean): number {
  if (err instanceof ConfigError) {
    if (json) io.out(JSON.stringify({ ok: false, issues: err.issues }, null, 2) + "\n");
    else for (const issue of err.issues) io.err(`error: ${formatIssue(issue)}\n`);
    return EXIT.invalid;
  }
  throw err;
}

/** Left-aligned text table; the last column is not padded. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}
