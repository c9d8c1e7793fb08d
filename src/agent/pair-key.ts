import { readFile, stat } from "node:fs/promises";

/** Shortest accepted key: 32 bytes, e.g. `openssl rand -hex 32` (64 characters) is well above it. */
export const MIN_PAIR_KEY_BYTES = 32;

export class PairKeyError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`pair key file ${path}: ${message}`);
    this.name = "PairKeyError";
  }
}

export interface PairKey {
  readonly key: Buffer;
  /** Something the operator should fix that does not stop the agent (a readable-by-others file). */
  readonly warning?: string;
}

/**
 * The key the CPU and DPU agents of a pair share: the file's bytes without trailing whitespace
 * (so `echo`/`openssl rand -hex 32 >` files work). Too short or unreadable is an error: a pair
 * channel with a guessable key would let anyone on the node network make the DPU capture pods.
 */
export async function readPairKey(path: string): Promise<PairKey> {
  let raw: Buffer;
  let mode: number;
  try {
    raw = await readFile(path);
    mode = (await stat(path)).mode;
  } catch (err) {
    throw new PairKeyError(path, (err as NodeJS.ErrnoException).code ?? (err as Error).message);
  }
  let end = raw.length;
  while (end > 0 && isSpace(raw[end - 1] ?? 0)) end--;
  const key = raw.subarray(0, end);
  if (key.length < MIN_PAIR_KEY_BYTES)
    throw new PairKeyError(
      path,
      `holds ${key.length} bytes; at least ${MIN_PAIR_KEY_BYTES} are needed (e.g. openssl rand -hex 32)`,
    );
  const warning =
    (mode & 0o077) !== 0
      ? `pair key file ${path} is readable by others (mode ${(mode & 0o777).toString(8)}); make it 0600`
      : undefined;
  return { key: Buffer.from(key), ...(warning ? { warning } : {}) };
}

const isSpace = (byte: number): boolean => byte === 0x0a || byte === 0x0d || byte === 0x20 || byte === 0x09;
