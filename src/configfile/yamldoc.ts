import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Document, Node as YamlNode, Pair, YAMLMap, YAMLSeq } from "yaml";
import type { ConfigIssue } from "./issues.js";

const MAX_SYNTAX_ERRORS = 5;

/**
 * A parsed YAML document plus the means to report issues against it by node. Validators walk the
 * YAML AST rather than plain JS values so that every issue can name its line and column.
 */
export class YamlSource {
  readonly issues: ConfigIssue[] = [];
  private readonly lines = new LineCounter();
  readonly doc: Document.Parsed;

  constructor(
    readonly file: string,
    text: string,
  ) {
    // Duplicate keys are found by `findDuplicateKeys` instead of the parser, so that the message
    // can name the repeated field rather than just "map keys must be unique".
    this.doc = parseDocument(text, { lineCounter: this.lines, uniqueKeys: false, prettyErrors: false });
    // One stray bracket can make the parser report every token after it; the first few errors
    // locate the problem, the rest are noise.
    for (const err of this.doc.errors.slice(0, MAX_SYNTAX_ERRORS)) {
      const pos = this.lines.linePos(err.pos[0]);
      this.issues.push({
        file,
        field: "(yaml)",
        message: `not well-formed YAML: ${err.message.split("\n")[0] ?? err.code}`,
        line: pos.line,
        column: pos.col,
      });
    }
    if (this.doc.errors.length > MAX_SYNTAX_ERRORS) {
      this.issues.push({
        file,
        field: "(yaml)",
        message: `${this.doc.errors.length - MAX_SYNTAX_ERRORS} more syntax errors follow from the ones above; fix those first`,
      });
    }
    if (this.doc.errors.length === 0) this.findDuplicateKeys(this.doc.contents, "");
  }

  private findDuplicateKeys(node: unknown, field: string): void {
    if (isSeq(node)) {
      node.items.forEach((item, i) => this.findDuplicateKeys(item, `${field}[${i}]`));
      return;
    }
    if (!isMap(node)) return;
    const seen = new Map<string, number | undefined>();
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : undefined;
      const path = key === undefined ? field : field === "" ? key : `${field}.${key}`;
      if (key !== undefined && seen.has(key)) {
        this.report(
          pair.key as YamlNode,
          path,
          `duplicate key "${key}": it is already set on line ${seen.get(key)} of this mapping`,
        );
      } else if (key !== undefined) {
        seen.set(key, this.lineOf(pair.key as YamlNode));
      }
      this.findDuplicateKeys(pair.value, path);
    }
  }

  /** False when the text is not YAML or repeats a key; validators stop before reading values then. */

  get wellFormed(): boolean {
    return this.issues.length === 0;
  }

  report(node: YamlNode | null | undefined, field: string, message: string): void {
    const offset = node?.range?.[0];
    if (offset === undefined) {
      this.issues.push({ file: this.file, field, message });
      return;
    }
    const pos = this.lines.linePos(offset);
    this.issues.push({ file: this.file, line: pos.line, column: pos.col, field, message });
  }

  lineOf(node: YamlNode | null | undefined): number | undefined {
    const offset = node?.range?.[0];
    return offset === undefined ? undefined : this.lines.linePos(offset).line;
  }
}

export function asMap(src: YamlSource, node: unknown, field: string): YAMLMap | undefined {
  if (isMap(node)) return node;
  src.report(node as YamlNode, field, `must be a mapping (key: value), found ${describe(node)}`);
  return undefined;
}

export function asSeq(src: YamlSource, node: unknown, field: string): YAMLSeq | undefined {
  if (isSeq(node)) return node;
  src.report(node as YamlNode, field, `must be a list, found ${describe(node)}`);
  return undefined;
}

/** The map's entries keyed by their (string) key; reports non-scalar keys and keys outside `allowed`. */
export function entries(
  src: YamlSource,
  map: YAMLMap,
  field: string,
  allowed: readonly string[],
): Map<string, Pair<unknown, unknown>> {
  const out = new Map<string, Pair<unknown, unknown>>();
  for (const pair of map.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : undefined;
    if (key === undefined) {
      src.report(pair.key as YamlNode, field === "" ? "(file)" : field, "keys must be plain strings");
      continue;
    }
    if (!allowed.includes(key)) {
      const hint = closest(key, allowed);
      src.report(
        pair.key as YamlNode,
        `${field === "" ? "" : field + "."}${key}`,
        `unknown key "${key}"${hint ? ` (did you mean "${hint}"?)` : ""}; allowed keys: ${allowed.join(", ")}`,
      );
      continue;
    }
    out.set(key, pair);
  }
  return out;
}

/**
 * A scalar's text as the user wrote it. Plain numbers keep their source spelling so a node named
 * `0123` or `1e3` is not silently turned into a different string.
 */
export function scalarText(node: unknown): string | undefined {
  if (!isScalar(node)) return undefined;
  if (node.value === null || node.value === undefined) return undefined;
  if (typeof node.value === "string") return node.value;
  if (typeof node.value === "number" || typeof node.value === "boolean") {
    return node.source !== undefined ? String(node.source) : String(node.value);
  }
  return undefined;
}

export function describe(node: unknown): string {
  if (node === null || node === undefined) return "nothing";
  if (isMap(node)) return "a mapping";
  if (isSeq(node)) return "a list";
  if (isScalar(node)) {
    if (node.value === null) return "an empty value";
    return `${typeof node.value} ${JSON.stringify(node.value)}`;
  }
  return "an unsupported YAML node";
}

/** Suggest the allowed key nearest to a typo (edit distance ≤ 3, case-insensitive). */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDist = 4;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDist) {
      bestDist = d;
      best = c;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0] ?? 0;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j] ?? 0;
      row[j] = Math.min(cur + 1, (row[j - 1] ?? 0) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length] ?? 0;
}

/** A path into a YAML document: mapping keys and sequence indexes. */
export type YamlPath = readonly (string | number)[];

/**
 * The node at `path`, or its nearest ancestor that exists, so a missing key is reported at its
 * parent mapping. With `keyNode`, the key of the last step rather than its value.
 */
export function nodeAt(src: YamlSource, path: YamlPath, keyNode = false): YamlNode | undefined {
  if (keyNode && path.length > 0) {
    const parent = path.length === 1 ? src.doc.contents : src.doc.getIn(path.slice(0, -1), true);
    if (isMap(parent)) {
      // Compare as text: YAML reads a key like `1500:` or `true:` as a number or a boolean.
      const pair = parent.items.find(
        (p) => isScalar(p.key) && String(p.key.value) === String(path[path.length - 1]),
      );
      if (pair && isScalar(pair.key)) return pair.key;
    }
  }
  for (let n = path.length; n >= 0; n--) {
    const node = n === 0 ? src.doc.contents : src.doc.getIn(path.slice(0, n), true);
    if (node && typeof node === "object" && "range" in node) return node as YamlNode;
  }
  return undefined;
}
