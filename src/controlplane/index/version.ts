// A resource's version: a 64-bit FNV-1a of its encoded bytes, as 16 hex digits. Change detection,
// not security: equal bytes give equal versions, so a resource rebuilt unchanged is not pushed.

const HEX = "0123456789abcdef";
const hex = (nibble: number): number => HEX.charCodeAt(nibble & 15);

/** 64-bit FNV-1a of `bytes[start, end)`, as 16 lowercase hex digits. */
export function fnv1a64(bytes: Uint8Array, start = 0, end = bytes.length): string {
  // The state in four 16-bit limbs (a3 most significant), so that every partial product stays
  // below 2^53 and the loop allocates nothing. The prime is 2^40 + 0x1b3:
  // state * prime = state * 0x1b3 + (state << 40), where state << 40 (mod 2^64) adds a0 at bit 40
  // and the low byte of a1 at bit 56.
  let a0 = 0x2325;
  let a1 = 0x8422;
  let a2 = 0x9ce4;
  let a3 = 0xcbf2;
  for (let i = start; i < end; i++) {
    a0 ^= bytes[i] ?? 0;
    const t0 = a0 * 0x1b3;
    const t1 = a1 * 0x1b3 + (t0 >>> 16);
    const t2 = a2 * 0x1b3 + (t1 >>> 16) + ((a0 & 0xff) << 8);
    const t3 = a3 * 0x1b3 + (t2 >>> 16) + (a0 >>> 8) + ((a1 & 0xff) << 8);
    a0 = t0 & 0xffff;
    a1 = t1 & 0xffff;
    a2 = t2 & 0xffff;
    a3 = t3 & 0xffff;
  }
  // One flat string, built without the intermediate strings of toString/padStart/concatenation.
  return String.fromCharCode(
    hex(a3 >>> 12),
    hex(a3 >>> 8),
    hex(a3 >>> 4),
    hex(a3),
    hex(a2 >>> 12),
    hex(a2 >>> 8),
    hex(a2 >>> 4),
    hex(a2),
    hex(a1 >>> 12),
    hex(a1 >>> 8),
    hex(a1 >>> 4),
    hex(a1),
    hex(a0 >>> 12),
    hex(a0 >>> 8),
    hex(a0 >>> 4),
    hex(a0),
  );
}
