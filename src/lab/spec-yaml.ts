import { z } from "zod";
import { closest, nodeAt } from "../configfile/yamldoc.js";
import type { YamlSource } from "../configfile/yamldoc.js";
import { AT_KEY, fieldName } from "./spec-path.js";
import type { SpecPath, SpecProblem } from "./spec-path.js";

// Turns problems found on plain values (zod issues, cross-field rules) back into issues at the
// line and column of the YAML node they are about.

export function reportZodIssues(src: YamlSource, error: z.ZodError, schema: z.ZodType): void {
  for (const issue of error.issues) {
    const path = issue.path.map((p) => (typeof p === "symbol" ? String(p) : p));
    if (issue.code === "unrecognized_keys") {
      // Each unknown key on its own: a typo is the usual cause, and the key is what to fix.
      for (const key of issue.keys) {
        const allowed = allowedKeys(schema, path);
        const near = closest(key, allowed);
        src.report(
          nodeAt(src, [...path, key], true),
          fieldName([...path, key]),
          `unknown key "${key}"${near ? ` (did you mean "${near}"?)` : ""}; allowed keys: ${allowed.join(", ")}`,
        );
      }
      continue;
    }
    const atKey = issue.code === "custom" && issue.params?.["at"] === AT_KEY.at;
    const present = path.length === 0 || src.doc.hasIn(path);
    const message = issue.code === "invalid_type" && !present ? "is missing" : issue.message;
    src.report(nodeAt(src, path, atKey), fieldName(path), message);
  }
}

export function reportProblems(src: YamlSource, problems: readonly SpecProblem[]): void {
  for (const p of problems) src.report(nodeAt(src, p.path), fieldName(p.path), p.message);
}

/** The keys the schema allows at `path`, for "did you mean" hints. */
function allowedKeys(schema: z.ZodType, path: SpecPath): string[] {
  let s: unknown = unwrap(schema);
  for (const p of path) {
    if (typeof p === "number" && s instanceof z.ZodArray) s = unwrap(s.element as z.ZodType);
    else if (typeof p === "string" && s instanceof z.ZodObject)
      s = unwrap((s.shape as Record<string, z.ZodType>)[p] ?? z.never());
    else return [];
  }
  return s instanceof z.ZodObject ? Object.keys(s.shape as object) : [];
}

function unwrap(schema: unknown): unknown {
  let s = schema;
  for (;;) {
    if (s instanceof z.ZodOptional || s instanceof z.ZodDefault || s instanceof z.ZodPrefault)
      s = (s as z.ZodOptional<z.ZodType>).unwrap();
    else if (s instanceof z.ZodPipe) s = s.in instanceof z.ZodTransform ? s.out : s.in;
    else return s;
  }
}
