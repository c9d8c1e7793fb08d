import { readFile } from "node:fs/promises";
import { ConfigError } from "./issues.js";

/** A config file's text; a file that cannot be read is reported like any other config issue. */
export async function readConfigText(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    throw new ConfigError([
      { file: path, field: "(file)", message: `cannot be read: ${(err as Error).message}` },
    ]);
  }
}
