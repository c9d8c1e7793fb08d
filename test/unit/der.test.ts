import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  bitString,
  boolean,
  children,
  contextTag,
  DerError,
  element,
  ia5,
  integer,
  octetString,
  oid,
  readBoolean,
  readOid,
  readOne,
  readTime,
  readTlv,
  sequence,
  setOf,
  TAG,
} from "../../src/identity/der.js";

const bytes = (...b: number[]): Uint8Array => Uint8Array.from(b);
const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const fromHex = (h: string): Uint8Array => Uint8Array.from(Buffer.from(h.replace(/\s/g, ""), "hex"));
const ascii = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, "latin1"));

/** `depth` SEQUENCEs around a NULL, written in one buffer (nesting with sequence() copies O(n²)). */
function nestedSequences(depth: number): Uint8Array {
  const headerOf = (length: number): number[] =>
    length < 0x80
      ? [0x30, length]
      : length < 0x100
        ? [0x30, 0x81, length]
        : length < 0x10000
          ? [0x30, 0x82, length >> 8, length & 0xff]
          : [0x30, 0x83, length >> 16, (length >> 8) & 0xff, length & 0xff];
  const headers: number[][] = [];
  let size = 2;
  for (let i = 0; i < depth; i++) {
    const header = headerOf(size);
    headers.push(header);
    size += header.length;
  }
  const out = new Uint8Array(size);
  let pos = 0;
  for (const header of headers.reverse()) {
    out.set(header, pos);
    pos += header.length;
  }
  out.set([0x05, 0x00], pos);
  return out;
}

describe("DER reader", () => {
  it("reads short and long lengths and gives the contents as a view", () => {
    const short = readTlv(bytes(0x04, 0x02, 0xaa, 0xbb, 0xff));
    assert.deepEqual(
      { tag: short.tag, value: hex(short.value), start: short.start, end: short.end },
      { tag: 0x04, value: "aabb", start: 0, end: 4 },
    );
    const long = new Uint8Array(3 + 200);
    long.set([0x04, 0x81, 200]);
    assert.equal(readTlv(long).value.length, 200);
    const longer = new Uint8Array(4 + 300);
    longer.set([0x04, 0x82, 0x01, 0x2c]);
    assert.equal(readTlv(longer).end, 304);
    assert.equal(readTlv(bytes(0x05, 0x00, 0x02, 0x01, 0x07), 2).value[0], 7, "at an offset");
  });

  it("refuses truncated input", () => {
    assert.throws(() => readTlv(bytes()), /found the end/);
    assert.throws(() => readTlv(bytes(0x30)), /ends before its length/);
    assert.throws(() => readTlv(bytes(0x04, 0x82, 0x01)), /ends inside its length/);
    assert.throws(() => readTlv(bytes(0x04, 0x03, 0xaa, 0xbb)), /claims 3 octets but only 2 follow/);
    assert.throws(() => readTlv(bytes(0x04, 0x81, 0x80, 0x00)), /claims 128 octets but only 1 follow/);
  });

  it("refuses indefinite lengths, oversized lengths and multi-octet tags", () => {
    assert.throws(() => readTlv(bytes(0x30, 0x80, 0x00, 0x00)), /indefinite length/);
    assert.throws(() => readTlv(bytes(0x04, 0x85, 1, 0, 0, 0, 0)), /5-octet length/);
    // Four octets of 0xff are 4 GiB: a length overflow is caught against the bytes there, not trusted.
    assert.throws(() => readTlv(bytes(0x04, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00)), /claims 4294967295 octets/);
    assert.throws(() => readTlv(bytes(0x1f, 0x81, 0x00, 0x00)), /multi-octet tag/);
    for (const e of [bytes(0x30, 0x80), bytes(0x04, 0x85, 1, 0, 0, 0, 0)]) {
      assert.throws(() => readTlv(e), DerError);
    }
  });

  it("readOne refuses trailing bytes and the wrong tag", () => {
    assert.equal(hex(readOne(bytes(0x02, 0x01, 0x05), TAG.INTEGER, "n").value), "05");
    assert.throws(() => readOne(bytes(0x02, 0x01, 0x05, 0x00), TAG.INTEGER, "n"), /n: 1 octets follow/);
    assert.throws(() => readOne(bytes(0x04, 0x00), TAG.INTEGER, "n"), /n: expected tag 0x02, found 0x04/);
  });

  it("children walks exactly one level and refuses what does not fill the contents", () => {
    const seq = readTlv(fromHex("30 05 02 01 01 30 01"));
    assert.throws(
      () => children(seq, "outer"),
      /outer: element at offset 3 claims 1 octets but only 0 follow/,
    );
    const ok = readTlv(fromHex("30 08 02 01 01 30 03 02 01 02"));
    const [a, b] = children(ok, "outer");
    assert.equal(a?.tag, TAG.INTEGER);
    assert.equal(b?.tag, TAG.SEQUENCE);
    assert.equal(hex(b!.value), "020102", "the inner sequence is not read until asked");
    assert.throws(() => children(readTlv(bytes(0x04, 0x00)), "s"), /not a constructed element/);
    assert.deepEqual(children(readTlv(bytes(0x30, 0x00)), "empty"), []);
  });

  it("reads deep nesting without recursion", () => {
    // 100 000 nested SEQUENCEs: each level is one call by the caller, not a stack frame per level.
    const depth = 100_000;
    const der = nestedSequences(depth);
    let tlv = readOne(der, TAG.SEQUENCE, "top");
    let levels = 1;
    while (tlv.tag === TAG.SEQUENCE) {
      tlv = children(tlv, "level")[0]!;
      levels++;
    }
    assert.equal(levels, depth + 1);
  });

  it("reads BOOLEANs strictly", () => {
    assert.equal(readBoolean(readTlv(bytes(0x01, 0x01, 0xff)), "b"), true);
    assert.equal(readBoolean(readTlv(bytes(0x01, 0x01, 0x00)), "b"), false);
    assert.throws(() => readBoolean(readTlv(bytes(0x01, 0x01, 0x01)), "b"), /not a DER BOOLEAN/);
    assert.throws(() => readBoolean(readTlv(bytes(0x01, 0x02, 0xff, 0xff)), "b"), /not a DER BOOLEAN/);
    assert.throws(() => readBoolean(readTlv(bytes(0x01, 0x00)), "b"), /not a DER BOOLEAN/);
  });

  it("reads OBJECT IDENTIFIERs", () => {
    const read = (h: string): string => readOid(readTlv(fromHex(h)), "oid");
    assert.equal(read("06 03 55 1d 11"), "2.5.29.17");
    assert.equal(read("06 08 2a 86 48 ce 3d 04 03 02"), "1.2.840.10045.4.3.2");
    assert.equal(read("06 01 00"), "0.0");
    assert.equal(read("06 02 88 37"), "2.999");
    assert.throws(() => read("06 00"), /empty OBJECT IDENTIFIER/);
    assert.throws(() => read("06 02 2a 86"), /ends inside an arc/);
    assert.throws(() => read("06 03 2a 80 01"), /leading 0x80/);
    assert.throws(() => read("06 0a 2a ff ff ff ff ff ff ff ff 7f"), /arc too large/);
  });

  it("reads UTCTime and GeneralizedTime as RFC 5280 writes them", () => {
    const time = (tag: number, s: string): Date => readTime(readTlv(element(tag, ascii(s))), "t");
    assert.equal(time(TAG.UTC_TIME, "300101000000Z").toISOString(), "2030-01-01T00:00:00.000Z");
    assert.equal(time(TAG.UTC_TIME, "491231235959Z").toISOString(), "2049-12-31T23:59:59.000Z");
    assert.equal(time(TAG.UTC_TIME, "500101000000Z").toISOString(), "1950-01-01T00:00:00.000Z");
    assert.equal(time(TAG.UTC_TIME, "991231235959Z").toISOString(), "1999-12-31T23:59:59.000Z");
    assert.equal(time(TAG.GENERALIZED_TIME, "20500101000000Z").toISOString(), "2050-01-01T00:00:00.000Z");
    assert.equal(time(TAG.GENERALIZED_TIME, "99991231235959Z").toISOString(), "9999-12-31T23:59:59.000Z");
    assert.equal(time(TAG.GENERALIZED_TIME, "00500615120000Z").getUTCFullYear(), 50, "not read as 1950");
    assert.equal(time(TAG.GENERALIZED_TIME, "20240229000000Z").toISOString(), "2024-02-29T00:00:00.000Z");

    for (const bad of [
      "300101000000",
      "3001010000Z",
      "300101000000+0100",
      "3001010000000Z",
      "30010100000aZ",
    ]) {
      assert.throws(() => time(TAG.UTC_TIME, bad), /not a time as RFC 5280 writes it/, bad);
    }
    for (const bad of ["20500101000000.5Z", "205001010000Z", "20500101000000", "2050010100000Z"]) {
      assert.throws(() => time(TAG.GENERALIZED_TIME, bad), /not a time as RFC 5280 writes it/, bad);
    }
    for (const bad of [
      "301301000000Z",
      "300230000000Z",
      "230229000000Z",
      "300101240000Z",
      "300101006000Z",
      "300101000060Z",
      "300100000000Z",
    ]) {
      assert.throws(() => time(TAG.UTC_TIME, bad), /not a valid date and time/, bad);
    }
    assert.throws(() => time(TAG.OCTET_STRING, "300101000000Z"), /expected UTCTime or GeneralizedTime/);
    assert.throws(() => readTime(readTlv(element(TAG.UTC_TIME, new Uint8Array(100_000))), "t"), /too long/);
  });
});

describe("DER writer", () => {
  it("encodes lengths in the fewest octets", () => {
    assert.equal(hex(octetString(new Uint8Array(0))), "0400");
    assert.equal(hex(octetString(new Uint8Array(127)).subarray(0, 2)), "047f");
    assert.equal(hex(octetString(new Uint8Array(128)).subarray(0, 3)), "048180");
    assert.equal(hex(octetString(new Uint8Array(256)).subarray(0, 4)), "04820100");
    assert.equal(hex(octetString(new Uint8Array(65536)).subarray(0, 5)), "0483010000");
  });

  it("encodes INTEGERs minimally, keeping the sign bit clear", () => {
    assert.equal(hex(integer(0)), "020100");
    assert.equal(hex(integer(127)), "02017f");
    assert.equal(hex(integer(128)), "02020080");
    assert.equal(hex(integer(256)), "02020100");
    assert.equal(hex(integer(0xffffffffffffffffn)), "020900ffffffffffffffff");
    assert.throws(() => integer(-1), RangeError);
  });

  it("encodes OBJECT IDENTIFIERs, and reads back what it writes", () => {
    assert.equal(hex(oid("2.5.29.17")), "0603551d11");
    assert.equal(hex(oid("1.2.840.113549.1.9.14")), "06092a864886f70d01090e");
    assert.equal(hex(oid("1.2.840.10045.4.3.2")), "06082a8648ce3d040302");
    assert.equal(hex(oid("2.999")), "06028837");
    for (const o of ["1.3.6.1.4.1.311.20.2.3", "0.0", "2.5.4.3", "1.2.9007199254740991"]) {
      assert.equal(readOid(readTlv(oid(o)), "o"), o);
    }
    assert.throws(() => oid("1"), TypeError);
    assert.throws(() => oid("3.1"), TypeError);
    assert.throws(() => oid("1.40"), RangeError);
    assert.throws(() => oid("1.2.99999999999999999999"), RangeError);
  });

  it("writes the constructed forms and strings", () => {
    assert.equal(hex(sequence()), "3000");
    assert.equal(hex(sequence(integer(1), boolean(true))), "3006020101" + "0101ff");
    assert.equal(hex(boolean(false)), "010100");
    assert.equal(hex(bitString(bytes(0xab))), "030200ab");
    assert.equal(hex(element(contextTag(0, true), integer(2))), "a003020102");
    assert.equal(hex(ia5(contextTag(6, false), "a:b")), "8603613a62");
    assert.throws(() => ia5(contextTag(6, false), "spiffe://é"), /not IA5/);
    assert.throws(() => contextTag(31, false), RangeError);
    // SET OF in DER order: by encoding, whatever order given.
    assert.equal(hex(setOf(integer(2), integer(1))), "3106020101020102");
  });
});
