import assert from "node:assert/strict";
import { formatIssue } from "../../src/configfile/issues.js";
import type { ConfigIssue, Result } from "../../src/configfile/issues.js";

// Assertions shared by the tests of every config-file parser.

export interface ExpectedIssue {
  field: string;
  /** `undefined` asserts that the issue carries no position (whole-file problems). */
  line: number | undefined;
  column?: number;
  /** Every pattern must match the message. */
  message: readonly RegExp[];
  /** No pattern may match the message. */
  notMessage?: readonly RegExp[];
}

export function expectAccepted<T>(result: Result<T>, what: string): T {
  if (!result.ok)
    assert.fail(`expected ${what} to be accepted, got:\n${result.issues.map(formatIssue).join("\n")}`);
  return result.value;
}

/** The parser must reject with at least one issue, each naming `file`. */
export function expectRejected<T>(result: Result<T>, file: string, what: string): ConfigIssue[] {
  assert.equal(result.ok, false, `expected ${what} to be rejected`);
  if (result.ok) throw new Error("unreachable");
  assert.ok(result.issues.length > 0, "a rejected file must carry at least one issue");
  for (const issue of result.issues) assert.equal(issue.file, file, "every issue names the file");
  return result.issues;
}

export function assertIssue(issue: ConfigIssue | undefined, expected: ExpectedIssue): void {
  assert.ok(issue, `expected an issue for ${expected.field}`);
  const shown = formatIssue(issue);
  assert.equal(issue.field, expected.field, `field of: ${shown}`);
  assert.equal(issue.line, expected.line, `line of: ${shown}`);
  if (expected.column !== undefined) assert.equal(issue.column, expected.column, `column of: ${shown}`);
  for (const pattern of expected.message) assert.match(issue.message, pattern, `message of: ${shown}`);
  for (const pattern of expected.notMessage ?? [])
    assert.doesNotMatch(issue.message, pattern, `message of: ${shown}`);
}

/** Exactly one issue, matching `expected`. */
export function assertOneIssue(issues: readonly ConfigIssue[], expected: ExpectedIssue): ConfigIssue {
  assert.equal(issues.length, 1, `expected exactly one issue, got:\n${issues.map(formatIssue).join("\n")}`);
  assertIssue(issues[0], expected);
  return issues[0] as ConfigIssue;
}

/** The one issue whose field is `field`; fails when there is none or more than one. */
export function issueFor(issues: readonly ConfigIssue[], field: string): ConfigIssue {
  const matching = issues.filter((i) => i.field === field);
  assert.equal(
    matching.length,
    1,
    `expected one issue for ${field}, got:\n${issues.map(formatIssue).join("\n")}`,
  );
  return matching[0] as ConfigIssue;
}
