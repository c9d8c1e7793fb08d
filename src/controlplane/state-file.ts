import { writeNewFile } from "../fsutil/atomic.js";

// The control plane's state directory (CA root, token key) is created once and never overwritten:
// a file that appears while this process creates it means two control planes share the directory.

export const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** Create `path`, never over one another process just created; failures go through `wrap`. */
export async function createStateFile(
  path: string,
  content: string,
  mode: number,
  wrap: (why: string, cause: unknown) => Error,
): Promise<void> {
  try {
    await writeNewFile(path, content, mode);
  } catch (e) {
    const why =
      (e as NodeJS.ErrnoException).code === "EEXIST"
        ? "appeared while this process was creating it (is another control plane using this directory?)"
        : `cannot be written: ${errorText(e)}`;
    throw wrap(why, e);
  }
}
