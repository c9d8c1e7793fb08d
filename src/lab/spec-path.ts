// Where in lab.yaml a problem is: paths as zod and the YAML library use them, and their spelling
// in messages (`pairs[0].cpu.ip`, `namespaces[1].labels["istio.io/dataplane-mode"]`).

export type SpecPath = readonly (string | number)[];

export interface SpecProblem {
  readonly path: SpecPath;
  readonly message: string;
}

/** Param of custom zod issues that are about a mapping key, so they point at the key itself. */
export const AT_KEY = { at: "key" } as const;

export function fieldName(path: SpecPath): string {
  if (path.length === 0) return "(file)";
  return path
    .map((p, i) =>
      typeof p === "number"
        ? `[${p}]`
        : /^[A-Za-z_][\w-]*$/.test(p)
          ? `${i === 0 ? "" : "."}${p}`
          : `[${JSON.stringify(p)}]`,
    )
    .join("");
}
