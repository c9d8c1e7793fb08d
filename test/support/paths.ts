import { fileURLToPath } from "node:url";
import { join } from "node:path";

/** The project root, whether a test runs from test/ (source) or dist/test/ (compiled). */
export const projectRoot = ((): string => {
  const here = fileURLToPath(new URL(".", import.meta.url));
  return here.includes("/dist/") ? join(here, "..", "..", "..") : join(here, "..", "..");
})();

export const fromRoot = (...parts: string[]): string => join(projectRoot, ...parts);
