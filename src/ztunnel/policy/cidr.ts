import type { AuthzAddress } from "../../xds/types.js";
import { canonicalIpBytes, parseIp } from "../state/ip.js";

// CIDR matching on 32-bit words (one for IPv4, four for IPv6), so a test is a few integer
// comparisons. Families never match each other: an IPv4 connection is not in an IPv6 range, not
// even an IPv4-mapped one (::ffff:10.0.0.0/104), as in upstream ztunnel, which canonicalizes the
// connection's addresses and compares them with the ranges as sent.

export interface IpWords {
  readonly family: 4 | 6;
  readonly words: readonly number[];
}

export interface CompiledCidr {
  readonly family: 4 | 6;
  /** The network, host bits cleared. */
  readonly network: readonly number[];
  readonly masks: readonly number[];
}

function words(bytes: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bytes.length; i += 4) {
    out.push(
      (((bytes[i] as number) << 24) |
        ((bytes[i + 1] as number) << 16) |
        ((bytes[i + 2] as number) << 8) |
        (bytes[i + 3] as number)) >>>
        0,
    );
  }
  return out;
}

/** A connection address as words, IPv4-mapped IPv6 read as IPv4; undefined if not an IP. */
export function ipWords(text: string): IpWords | undefined {
  const bytes = parseIp(text);
  if (bytes === undefined) return undefined;
  const canonical = canonicalIpBytes(bytes);
  return { family: canonical.length === 4 ? 4 : 6, words: words(canonical) };
}

/** A policy range; the caller has checked it (validate.ts addressProblem). */
export function compileCidr(address: AuthzAddress): CompiledCidr {
  const family = address.address.length === 4 ? 4 : 6;
  const network = words(address.address);
  const masks = network.map((_, k) => {
    const bits = Math.min(32, Math.max(0, address.length - 32 * k));
    return bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  });
  return {
    family,
    network: network.map((w, k) => (w & (masks[k] as number)) >>> 0),
    masks,
  };
}

export function cidrContains(cidr: CompiledCidr, ip: IpWords): boolean {
  if (cidr.family !== ip.family) return false;
  for (let k = 0; k < cidr.network.length; k++) {
    if (((ip.words[k] as number) & (cidr.masks[k] as number)) >>> 0 !== cidr.network[k]) return false;
  }
  return true;
}
