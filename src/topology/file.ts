import { ConfigError } from "../configfile/issues.js";
import { readConfigText } from "../configfile/read.js";
import { parseTopology } from "./parse.js";
import type { Topology } from "./types.js";

/** Read and validate a cluster-conf.yaml; throws ConfigError listing every problem. */
export async function loadTopologyFile(path: string): Promise<Topology> {
  const parsed = parseTopology(await readConfigText(path), path);
  if (!parsed.ok) throw new ConfigError(parsed.issues);
  return parsed.value;
}
