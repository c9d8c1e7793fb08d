import { isIPv4, isIPv6 } from "node:net";
import { AF_INET, AF_INET6 } from "./constants.js";

// IP literals and their `struct sockaddr_in` / `struct sockaddr_in6` encodings. Pure: the only
// effect, resolving an IPv6 zone name ("%eth0") to an interface index, is passed in.

export type IpFamily = 4 | 6;

export interface IpAddress {
  /** The literal as given (zone included). */
  readonly text: string;
  readonly family: IpFamily;
  /** 4 or 16 bytes, network order. */
  readonly bytes: Uint8Array;
  /** sin6_scope_id: the interface of a link-local IPv6 address, else 0. */
  readonly scopeId: number;
}

export class AddressError extends Error {
  override readonly name = "AddressError";
}

/** `zone` → interface index, or undefined when no such interface exists. */
export type ZoneResolver = (zone: string) => number | undefined;

const noZones: ZoneResolver = () => undefined;

export function parseIpAddress(text: string, resolveZone: ZoneResolver = noZones): IpAddress {
  if (isIPv4(text))
    return { text, family: 4, bytes: Uint8Array.from(text.split(".").map(Number)), scopeId: 0 };
  if (!isIPv6(text)) throw new AddressError(`not an IP address: ${JSON.stringify(text)}`);
  const percent = text.indexOf("%");
  const bare = percent < 0 ? text : text.slice(0, percent);
  const bytes = ipv6Bytes(bare);
  if (!bytes) throw new AddressError(`not an IPv6 address: ${JSON.stringify(text)}`);
  const scopeId = percent < 0 ? 0 : zoneIndex(text.slice(percent + 1), resolveZone, text);
  return { text, family: 6, bytes, scopeId };
}

function zoneIndex(zone: string, resolveZone: ZoneResolver, text: string): number {
  if (/^\d+$/.test(zone)) return Number(zone);
  const index = resolveZone(zone);
  if (index === undefined || index <= 0)
    throw new AddressError(`unknown interface in ${JSON.stringify(text)}`);
  return index;
}

function ipv6Bytes(text: string): Uint8Array | undefined {
  const gap = text.indexOf("::");
  const head = gap < 0 ? text : text.slice(0, gap);
  const tail = gap < 0 ? "" : text.slice(gap + 2);
  const headWords = ipv6Words(head);
  const tailWords = ipv6Words(tail);
  if (!headWords || !tailWords) return undefined;
  const zeros = 8 - headWords.length - tailWords.length;
  if (gap < 0 ? zeros !== 0 : zeros < 1) return undefined;
  const words = [...headWords, ...new Array<number>(gap < 0 ? 0 : zeros).fill(0), ...tailWords];
  const bytes = new Uint8Array(16);
  words.forEach((word, i) => {
    bytes[2 * i] = word >> 8;
    bytes[2 * i + 1] = word & 0xff;
  });
  return bytes;
}

/** 16-bit words of colon-separated groups; a trailing dotted quad counts as two words. */
function ipv6Words(groups: string): number[] | undefined {
  if (groups === "") return [];
  const words: number[] = [];
  for (const group of groups.split(":")) {
    if (isIPv4(group)) {
      const [a = 0, b = 0, c = 0, d = 0] = group.split(".").map(Number);
      words.push((a << 8) | b, (c << 8) | d);
    } else if (/^[0-9a-fA-F]{1,4}$/.test(group)) {
      words.push(parseInt(group, 16));
    } else {
      return undefined;
    }
  }
  return words;
}

export function sameAddress(a: IpAddress, b: IpAddress): boolean {
  return a.family === b.family && a.scopeId === b.scopeId && a.bytes.every((byte, i) => byte === b.bytes[i]);
}

export const addressFamily = (address: IpAddress): number => (address.family === 4 ? AF_INET : AF_INET6);

export function assertPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new AddressError(`not a TCP port: ${port}`);
}

/**
 * The sockaddr the kernel expects for `address`:`port`. sa_family and the IPv6 scope id are host
 * order (little-endian on the supported platforms), port, address and flowinfo network order.
 */
export function encodeSockaddr(address: IpAddress, port: number): Buffer {
  assertPort(port);
  if (address.family === 4) {
    const buf = Buffer.alloc(16); // sockaddr_in: family, port, addr, 8 bytes of zero
    buf.writeUInt16LE(AF_INET, 0);
    buf.writeUInt16BE(port, 2);
    buf.set(address.bytes, 4);
    return buf;
  }
  const buf = Buffer.alloc(28); // sockaddr_in6: family, port, flowinfo, addr, scope id
  buf.writeUInt16LE(AF_INET6, 0);
  buf.writeUInt16BE(port, 2);
  buf.set(address.bytes, 8);
  buf.writeUInt32LE(address.scopeId, 24);
  return buf;
}
