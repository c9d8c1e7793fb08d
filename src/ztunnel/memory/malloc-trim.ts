import koffi from "koffi";

// glibc's malloc_trim(3) through koffi. A busy ztunnel reads into 64 KiB buffers by the thousand;
// glibc keeps the freed ones in its arenas, and nothing hands them back to the kernel while the
// process sits idle: after one bulk stream a ztunnel stayed at ~110 MB for as long as it was left
// alone, against ~80 MB once trimmed (bench/results/ztunnel.md). malloc_trim(0) returns every free
// page of every arena.

/** Returns whether memory was given back. */
export type ReleaseFreeMemory = () => boolean;

/**
 * malloc_trim from the C library, or the reason it cannot be had (a libc other than glibc, such as
 * musl, has no malloc_trim: the ztunnel then runs without idle trimming).
 */
export function loadMallocTrim(): ReleaseFreeMemory | { readonly unavailable: string } {
  try {
    const trim = koffi.load("libc.so.6").func("int malloc_trim(size_t pad)") as (pad: number) => number;
    return () => trim(0) === 1;
  } catch (err) {
    return { unavailable: `malloc_trim from libc.so.6: ${(err as Error).message}` };
  }
}
