import { isIPv4, isIPv6 } from "node:net";

export type IpFamily = 4 | 6;

/** Canonical text of an IP address (lower-case, compressed IPv6), or undefined when it does not parse. */
export function canonicalIp(text: string): { ip: string; family: IpFamily } | undefined {
  if (isIPv4(text)) return { ip: text, family: 4 };
  // A zone index (fe80::1%eth0) names an interface, not a node; URL parsing would also reject it.
  if (isIPv6(text) && !text.includes("%"))
    return { ip: new URL(`http://[${text}]`).hostname.slice(1, -1), family: 6 };
  return undefined;
}

/** Why an address cannot identify a node, or undefined when it can. */
export function unusableNodeAddress(ip: string, family: IpFamily): string | undefined {
  if (family === 4) {
    const first = Number(ip.split(".")[0]);
    if (ip === "0.0.0.0") return "is the unspecified address";
    if (ip === "255.255.255.255") return "is the broadcast address";
    if (first === 127) return "is a loopback address";
    if (first >= 224 && first <= 239) return "is a multicast address";
    return undefined;
  }
  if (ip === "::") return "is the unspecified address";
  if (ip === "::1") return "is the loopback address";
  if (ipToBigInt(ip, 6) >> 120n === 0xffn) return "is a multicast address";
  return undefined;
}

export interface Cidr {
  readonly text: string;
  readonly family: IpFamily;
  readonly prefix: number;
  readonly network: bigint;
}

export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const addr = canonicalIp(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  if (!addr || !/^\d{1,3}$/.test(prefixText)) return undefined;
  const prefix = Number(prefixText);
  const bits = addr.family === 4 ? 32 : 128;
  if (prefix > bits) return undefined;
  const value = ipToBigInt(addr.ip, addr.family);
  const mask = prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(bits - prefix);
  const network = value & mask;
  return { text: `${bigIntToIp(network, addr.family)}/${prefix}`, family: addr.family, prefix, network };
}

/** True when the address part of a CIDR is not the network address (10.244.0.5/16). */
export function cidrHasHostBits(text: string): boolean {
  const cidr = parseCidr(text);
  const addr = canonicalIp(text.slice(0, text.indexOf("/")));
  return cidr !== undefined && addr !== undefined && ipToBigInt(addr.ip, addr.family) !== cidr.network;
}

export function cidrContains(cidr: Cidr, ip: string): boolean {
  const addr = canonicalIp(ip);
  if (!addr || addr.family !== cidr.family) return false;
  const bits = cidr.family === 4 ? 32 : 128;
  const shift = BigInt(bits - cidr.prefix);
  return ipToBigInt(addr.ip, addr.family) >> shift === cidr.network >> shift;
}

export function ipToBigInt(ip: string, family: IpFamily): bigint {
  if (family === 4) {
    const [a = 0, b = 0, c = 0, d = 0] = ip.split(".").map(Number);
    return BigInt(a * 16777216 + b * 65536 + c * 256 + d);
  }
  const [head = "", tail = ""] = ip.split("::");
  const h = head === "" ? [] : head.split(":");
  const t = ip.includes("::") ? (tail === "" ? [] : tail.split(":")) : [];
  const groups = ip.includes("::") ? [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t] : h;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

export function bigIntToIp(value: bigint, family: IpFamily): string {
  if (family === 4) {
    return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join(".");
  }
  const groups: string[] = [];
  for (let s = 112n; s >= 0n; s -= 16n) groups.push(((value >> s) & 0xffffn).toString(16));
  return canonicalIp(groups.join(":"))?.ip ?? groups.join(":");
}

export const hostPrefix = (family: IpFamily): number => (family === 4 ? 32 : 128);

/** `host:port` (IPv6 hosts in brackets) as its host, unbracketed, and port; `what` names the flag in errors. */
export function splitHostPort(addr: string, what = "address"): { host: string; port: number } {
  const i = addr.lastIndexOf(":");
  const port = Number(addr.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`${what} ${addr}: expected host:port`);
  }
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ""), port };
}

/**
 * A dotted quad as 4 bytes, or undefined. By hand rather than through `net.isIP` and `split`: the
 * control plane and the ztunnel run it for every pod address of the cluster.
 */
export function ipv4Bytes(text: string): Uint8Array | undefined {
  const out = new Uint8Array(4);
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 46; /* a final "." */
    if (c === 46) {
      if (digits === 0 || part > 3 || value > 255) return undefined;
      out[part++] = value;
      value = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      // A leading zero is octal to some parsers; refusing it keeps one text per address.
      if (digits > 0 && value === 0) return undefined;
      value = value * 10 + (c - 48);
      if (++digits > 3) return undefined;
    } else {
      return undefined;
    }
  }
  return part === 4 ? out : undefined;
}
