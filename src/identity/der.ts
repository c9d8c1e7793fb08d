// Just enough DER to read X.509 certificates and write a PKCS#10 request, without an ASN.1 library:
// @peculiar/x509 and its dependencies cost the ztunnel 10–12 MB of memory for a few fields.
//
// The reader takes one TLV at a time and never descends by itself, so a deeply nested input cannot
// exhaust the stack; callers walk the fixed shape they expect. Only definite lengths are accepted
// (DER has no others), every length is checked against the bytes actually there, and anything
// unexpected is a DerError saying what and where.

/** Universal tags (identifier octets) this module reads or writes. */
export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OID: 0x06,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

const CONSTRUCTED = 0x20;
const CONTEXT = 0x80;
// Four length octets allow 4 GiB, far beyond anything a certificate holds; more is surely garbage.
const MAX_LENGTH_OCTETS = 4;

/** The identifier octet of context-specific tag [n] (n < 31). */
export function contextTag(n: number, constructed: boolean): number {
  if (!Number.isInteger(n) || n < 0 || n > 30)
    throw new RangeError(`context tag [${n}] is out of range 0..30`);
  return CONTEXT | (constructed ? CONSTRUCTED : 0) | n;
}

/** Input that is not the DER this module expects. */
export class DerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DerError";
  }
}

/** One tag-length-value element of `input`. */
export interface Tlv {
  /** The identifier octet: class, constructed bit and tag number. */
  readonly tag: number;
  /** The contents octets (a view into the input, not a copy). */
  readonly value: Uint8Array;
  /** Where the element starts in the input it was read from. */
  readonly start: number;
  /** Where the next element starts. */
  readonly end: number;
}

export const isConstructed = (tlv: Tlv): boolean => (tlv.tag & CONSTRUCTED) !== 0;

const hexTag = (tag: number): string => `0x${tag.toString(16).padStart(2, "0")}`;

/** The element at `offset` of `input`. */
export function readTlv(input: Uint8Array, offset = 0): Tlv {
  if (offset >= input.length) throw new DerError(`expected an element at offset ${offset}, found the end`);
  const tag = input[offset]!;
  // Tag numbers of 31 and up take more octets; nothing in a certificate or a CSR uses them.
  if ((tag & 0x1f) === 0x1f) throw new DerError(`multi-octet tag at offset ${offset} is not supported`);
  let pos = offset + 1;
  if (pos >= input.length) throw new DerError(`element at offset ${offset} ends before its length`);
  const first = input[pos++]!;
  let length: number;
  if (first < 0x80) {
    length = first;
  } else if (first === 0x80) {
    throw new DerError(`element at offset ${offset} has an indefinite length, which DER does not allow`);
  } else {
    const count = first & 0x7f;
    if (count > MAX_LENGTH_OCTETS) {
      throw new DerError(
        `element at offset ${offset} has a ${count}-octet length, more than ${MAX_LENGTH_OCTETS}`,
      );
    }
    if (pos + count > input.length) throw new DerError(`element at offset ${offset} ends inside its length`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + input[pos++]!;
  }
  const end = pos + length;
  if (end > input.length) {
    throw new DerError(
      `element at offset ${offset} claims ${length} octets but only ${input.length - pos} follow`,
    );
  }
  return { tag, value: input.subarray(pos, end), start: offset, end };
}

/** `input` as exactly one element of tag `tag`; trailing octets are an error. */
export function readOne(input: Uint8Array, tag: number, what: string): Tlv {
  const tlv = expectTag(readTlv(input), tag, what);
  if (tlv.end !== input.length) {
    throw new DerError(`${what}: ${input.length - tlv.end} octets follow the element`);
  }
  return tlv;
}

/** The elements that make up the contents of a constructed element, in order. */
export function children(tlv: Tlv, what: string): Tlv[] {
  if (!isConstructed(tlv)) throw new DerError(`${what}: ${hexTag(tlv.tag)} is not a constructed element`);
  const out: Tlv[] = [];
  let offset = 0;
  try {
    while (offset < tlv.value.length) {
      const child = readTlv(tlv.value, offset);
      out.push(child);
      offset = child.end;
    }
  } catch (e) {
    throw new DerError(`${what}: ${(e as Error).message}`);
  }
  return out;
}

/** `tlv`, if it has tag `tag`. */
export function expectTag(tlv: Tlv | undefined, tag: number, what: string): Tlv {
  if (tlv === undefined) throw new DerError(`${what}: missing (expected tag ${hexTag(tag)})`);
  if (tlv.tag !== tag) throw new DerError(`${what}: expected tag ${hexTag(tag)}, found ${hexTag(tlv.tag)}`);
  return tlv;
}

/** A BOOLEAN's value; DER allows only 0x00 and 0xff. */
export function readBoolean(tlv: Tlv, what: string): boolean {
  expectTag(tlv, TAG.BOOLEAN, what);
  const [v, ...rest] = tlv.value;
  if (rest.length > 0 || (v !== 0x00 && v !== 0xff)) throw new DerError(`${what}: not a DER BOOLEAN`);
  return v === 0xff;
}

/** An OBJECT IDENTIFIER in dotted form. */
export function readOid(tlv: Tlv, what: string): string {
  expectTag(tlv, TAG.OID, what);
  const bytes = tlv.value;
  if (bytes.length === 0) throw new DerError(`${what}: empty OBJECT IDENTIFIER`);
  const arcs: number[] = [];
  let arc = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (arc === 0 && b === 0x80) throw new DerError(`${what}: OBJECT IDENTIFIER arc with a leading 0x80`);
    arc = arc * 128 + (b & 0x7f);
    if (arc > Number.MAX_SAFE_INTEGER) throw new DerError(`${what}: OBJECT IDENTIFIER arc too large`);
    if ((b & 0x80) === 0) {
      arcs.push(arc);
      arc = 0;
    } else if (i === bytes.length - 1) {
      throw new DerError(`${what}: OBJECT IDENTIFIER ends inside an arc`);
    }
  }
  const first = arcs[0]!;
  const top = first < 80 ? Math.floor(first / 40) : 2;
  return [top, first - top * 40, ...arcs.slice(1)].join(".");
}

const TIME_PATTERN = {
  [TAG.UTC_TIME]: /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/,
  [TAG.GENERALIZED_TIME]: /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/,
} as const;
type TimeFields = [year: number, month: number, day: number, hour: number, minute: number, second: number];

/**
 * A certificate time (RFC 5280 §4.1.2.5): UTCTime YYMMDDHHMMSSZ, years 50–99 being 19xx and 00–49
 * 20xx, or GeneralizedTime YYYYMMDDHHMMSSZ. Fractions and time zones are not allowed there.
 */
export function readTime(tlv: Tlv, what: string): Date {
  if (tlv.tag !== TAG.UTC_TIME && tlv.tag !== TAG.GENERALIZED_TIME) {
    throw new DerError(`${what}: expected UTCTime or GeneralizedTime, found ${hexTag(tlv.tag)}`);
  }
  if (tlv.value.length > 32) throw new DerError(`${what}: ${tlv.value.length} octets is too long for a time`);
  const text = String.fromCharCode(...tlv.value);
  const m = TIME_PATTERN[tlv.tag].exec(text);
  if (!m) throw new DerError(`${what}: ${JSON.stringify(text)} is not a time as RFC 5280 writes it`);
  const [yy, month, day, hour, minute, second] = m.slice(1).map(Number) as TimeFields;
  const year = tlv.tag === TAG.UTC_TIME ? (yy >= 50 ? 1900 + yy : 2000 + yy) : yy;
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day); // not Date.UTC, which reads years 0–99 as 19xx
  date.setUTCHours(hour, minute, second, 0);
  // Out-of-range fields roll over in Date arithmetic; a time that does not read back is not one.
  if (
    date.getUTCFullYear() !== year ||
    date.getUTCMonth() !== month - 1 ||
    date.getUTCDate() !== day ||
    date.getUTCHours() !== hour ||
    date.getUTCMinutes() !== minute ||
    date.getUTCSeconds() !== second
  ) {
    throw new DerError(`${what}: ${JSON.stringify(text)} is not a valid date and time`);
  }
  return date;
}

// ---------------------------------------------------------------------------------------------
// Writers. Each returns one complete element.

function encodeLength(length: number): number[] {
  if (length < 0x80) return [length];
  const octets: number[] = [];
  for (let n = length; n > 0; n = Math.floor(n / 256)) octets.unshift(n % 256);
  return [0x80 | octets.length, ...octets];
}

/** An element of tag `tag` whose contents are `parts`, concatenated. */
export function element(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const length = parts.reduce((n, p) => n + p.length, 0);
  const header = [tag, ...encodeLength(length)];
  const out = new Uint8Array(header.length + length);
  out.set(header, 0);
  let pos = header.length;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

export const sequence = (...items: Uint8Array[]): Uint8Array => element(TAG.SEQUENCE, ...items);

/** A SET OF: DER orders the elements by their encodings (X.690 §11.6). */
export function setOf(...items: Uint8Array[]): Uint8Array {
  return element(TAG.SET, ...[...items].sort((a, b) => Buffer.compare(a, b)));
}

export const boolean = (value: boolean): Uint8Array =>
  element(TAG.BOOLEAN, Uint8Array.of(value ? 0xff : 0x00));

/** A non-negative INTEGER, in the fewest octets (a leading 0x00 only to keep the sign bit clear). */
export function integer(value: number | bigint): Uint8Array {
  let n = BigInt(value);
  if (n < 0n) throw new RangeError(`integer(${value}): negative integers are not supported`);
  const octets: number[] = [];
  do {
    octets.unshift(Number(n & 0xffn));
    n >>= 8n;
  } while (n > 0n);
  if (octets[0]! & 0x80) octets.unshift(0);
  return element(TAG.INTEGER, Uint8Array.from(octets));
}

/** An OBJECT IDENTIFIER from its dotted form. */
export function oid(dotted: string): Uint8Array {
  if (!/^[0-2](\.\d+)+$/.test(dotted)) throw new TypeError(`${JSON.stringify(dotted)} is not a dotted OID`);
  const arcs = dotted.split(".").map(Number);
  if (arcs.some((a) => !Number.isSafeInteger(a))) throw new RangeError(`OID ${dotted} has an arc too large`);
  const [top, second, ...rest] = arcs as [number, number, ...number[]];
  if (top < 2 && second >= 40) throw new RangeError(`OID ${dotted}: the second arc must be below 40`);
  const out: number[] = [];
  for (const arc of [top * 40 + second, ...rest]) {
    const base128: number[] = [];
    let n = arc;
    do {
      base128.unshift((n % 128) | (base128.length > 0 ? 0x80 : 0));
      n = Math.floor(n / 128);
    } while (n > 0);
    out.push(...base128);
  }
  return element(TAG.OID, Uint8Array.from(out));
}

export const octetString = (contents: Uint8Array): Uint8Array => element(TAG.OCTET_STRING, contents);

/** A BIT STRING of whole octets (no unused bits), as signatures and keys are. */
export const bitString = (contents: Uint8Array): Uint8Array =>
  element(TAG.BIT_STRING, Uint8Array.of(0), contents);

/** IA5 text (7-bit ASCII) as the contents of an implicitly tagged element, such as a URI SAN [6]. */
export function ia5(tag: number, text: string): Uint8Array {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0x7f) throw new TypeError(`${JSON.stringify(text)} is not IA5 (7-bit ASCII) text`);
    bytes[i] = c;
  }
  return element(tag, bytes);
}
