import { readFile } from "node:fs/promises";
import { ConfigError } from "../configfile/issues.js";
import { parseTopology } from "./parse.js";
import type { Topology } from "./types.js";

/** Read and validate a cluster-conf.yaml; throws ConfigError listing every problem. */
export async function loadTopologyFile(path: string): Promise<Topology> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new ConfigError([
      { file: path, field: "(file)", message: `cannot be read: ${(err as Error).message}` },
    ]);
  }
  const parsed = parseTopology(text, path);
  if (!parsed.ok) throw new ConfigError(parsed.issues);
  return parsed.value;
}
