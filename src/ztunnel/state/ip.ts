// IP addresses as the workload API carries them (4 or 16 raw bytes) and as sockets report them
// (text). Lookups key addresses by their canonical text: IPv4-mapped IPv6 (::ffff:a.b.c.d, what a
// dual-stack socket reports for an IPv4 peer) is the IPv4 address, as upstream ztunnel's
// `to_canonical` makes it, and IPv6 is written per RFC 5952 (lower case, longest zero run
// compressed).

import { ipv4Bytes } from "../../configfile/net.js";

/** Raw bytes of `text` (4 for IPv4, 16 for IPv6), not canonicalized; undefined if it is not an IP. */
export function parseIp(text: string): Uint8Array | undefined {
  return text.includes(":") ? parseIPv6(text) : ipv4Bytes(text);
}

/** IPv4-mapped IPv6 bytes as the 4 IPv4 bytes; anything else unchanged. */
export function canonicalIpBytes(bytes: Uint8Array): Uint8Array {
  return isV4Mapped(bytes) ? bytes.slice(12) : bytes;
}

/** Text of 4 or 16 address bytes, as written (no mapping to IPv4); undefined for other lengths. */
export function formatIp(bytes: Uint8Array): string | undefined {
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  if (bytes.length === 16) return formatIPv6(bytes);
  return undefined;
}

/** Canonical text of address bytes; undefined unless 4 or 16 bytes. */
export function canonicalIpText(bytes: Uint8Array): string | undefined {
  return formatIp(canonicalIpBytes(bytes));
}

/** Canonical text of a textual address; undefined if it is not an IP. */
export function canonicalizeIpText(text: string): string | undefined {
  // Dotted quads are already canonical when they parse; only IPv6 needs rewriting.
  if (!text.includes(":")) return ipv4Bytes(text) === undefined ? undefined : text;
  const bytes = parseIPv6(text);
  return bytes === undefined ? undefined : canonicalIpText(bytes);
}

/** Key of an address within a network: `<network>/<canonical ip>` (upstream's alias form). */
export const networkAddressKey = (network: string, canonicalIp: string): string =>
  `${network}/${canonicalIp}`;

/**
 * The key of a textual address for index lookups. The common case (a dotted quad from a socket)
 * costs one concatenation: a malformed dotted string simply finds nothing.
 */
export function lookupKey(network: string, ip: string): string | undefined {
  if (!ip.includes(":")) return networkAddressKey(network, ip);
  const canonical = canonicalizeIpText(ip);
  return canonical === undefined ? undefined : networkAddressKey(network, canonical);
}

/** `ip:port`, IPv6 in brackets. */
export const formatSocketAddress = (ip: string, port: number): string =>
  ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;

export const ipFamilyOfBytes = (bytes: Uint8Array): 4 | 6 => (bytes.length === 4 ? 4 : 6);

function isV4Mapped(bytes: Uint8Array): boolean {
  if (bytes.length !== 16 || bytes[10] !== 0xff || bytes[11] !== 0xff) return false;
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Hex groups of one side of "::", the last possibly a dotted quad; undefined if malformed. */
function parseGroups(side: string, mayEndInIPv4: boolean): number[] | undefined {
  if (side === "") return [];
  const parts = side.split(":");
  const groups: number[] = [];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    if (mayEndInIPv4 && i === parts.length - 1 && part.includes(".")) {
      const v4 = ipv4Bytes(part);
      if (v4 === undefined) return undefined;
      groups.push(((v4[0] as number) << 8) | (v4[1] as number), ((v4[2] as number) << 8) | (v4[3] as number));
      continue;
    }
    if (!/^[0-9a-fA-F]{1,4}$/.test(part)) return undefined;
    groups.push(parseInt(part, 16));
  }
  return groups;
}

function parseIPv6(text: string): Uint8Array | undefined {
  // A zone (fe80::1%eth0) names an interface, not an address of the mesh.
  if (text.includes("%")) return undefined;
  const gap = text.indexOf("::");
  if (gap >= 0 && text.indexOf("::", gap + 1) >= 0) return undefined;
  let groups: number[];
  if (gap < 0) {
    const all = parseGroups(text, true);
    if (all === undefined || all.length !== 8) return undefined;
    groups = all;
  } else {
    const head = parseGroups(text.slice(0, gap), false);
    const tail = parseGroups(text.slice(gap + 2), true);
    if (head === undefined || tail === undefined || head.length + tail.length > 7) return undefined;
    groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  }
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

function formatIPv6(bytes: Uint8Array): string {
  if (isV4Mapped(bytes)) return `::ffff:${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] as number) << 8) | (bytes[i + 1] as number));
  // RFC 5952 4.2: compress the longest run of two or more zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number): string =>
    groups
      .slice(from, to)
      .map((g) => g.toString(16))
      .join(":");
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}
