// The text of an HBONE CONNECT: its `:authority` and the headers a ztunnel adds (`baggage`,
// `forwarded`, `traceparent`). Pure functions, so both ends and the tests agree on one spelling.
import { randomBytes } from "node:crypto";
import { isIPv4, isIPv6 } from "node:net";
import { canonicalIp } from "../../configfile/net.js";

export interface SocketAddress {
  readonly address: string;
  readonly port: number;
}

export interface ParsedAuthority extends SocketAddress {
  readonly family: 4 | 6;
}

const PORT = /^[1-9][0-9]{0,4}$/;

/** `ip:port`, IPv6 in brackets and compressed (`[::1]:80`); RangeError for anything else. */
export function formatAuthority(ip: string, port: number): string {
  const addr = canonicalIp(ip);
  if (!addr) throw new RangeError(`authority: ${JSON.stringify(ip)} is not an IP address`);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`authority: port ${port} is not an integer from 1 to 65535`);
  }
  return addr.family === 6 ? `[${addr.ip}]:${port}` : `${addr.ip}:${port}`;
}

/**
 * The target of a CONNECT `:authority`, or undefined. Strict: a dotted-quad IPv4 address or a
 * bracketed IPv6 address (no zone), a colon, and a port 1–65535 without leading zeros. Host names
 * are refused: HBONE addresses a workload by IP, and a name would need a resolver the sender chose.
 */
export function parseAuthority(text: string): ParsedAuthority | undefined {
  const colon = text.lastIndexOf(":");
  if (colon < 0) return undefined;
  const host = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (!PORT.test(portText)) return undefined;
  const port = Number(portText);
  if (port > 65535) return undefined;
  if (host.startsWith("[") && host.endsWith("]")) {
    const inner = host.slice(1, -1);
    if (!isIPv6(inner) || inner.includes("%")) return undefined;
    const addr = canonicalIp(inner);
    return addr ? { address: addr.ip, port, family: 6 } : undefined;
  }
  return isIPv4(host) ? { address: host, port, family: 4 } : undefined;
}

/** Source workload metadata, as upstream ztunnel puts it in `baggage`. */
export interface BaggageFields {
  readonly clusterName?: string;
  readonly namespace?: string;
  /** The workload's kind in lower case: `deployment`, `pod`, `job`, `cronjob`, … (`k8s.<type>.name`). */
  readonly workloadType?: string;
  readonly workloadName?: string;
  readonly serviceName?: string;
  readonly serviceVersion?: string;
}

const WORKLOAD_TYPE = /^[a-z]+$/;
const RESERVED_TYPES = new Set(["cluster", "namespace"]);

/**
 * A W3C `baggage` value: `k8s.cluster.name=…,k8s.namespace.name=…,k8s.<type>.name=…,service.name=…,
 * service.version=…`, absent fields left out, values percent-encoded where W3C requires it.
 */
export function baggage(fields: BaggageFields): string {
  const members: string[] = [];
  const add = (key: string, value: string | undefined): void => {
    if (value !== undefined && value !== "") members.push(`${key}=${encodeBaggageValue(value)}`);
  };
  add("k8s.cluster.name", fields.clusterName);
  add("k8s.namespace.name", fields.namespace);
  if (fields.workloadName !== undefined && fields.workloadName !== "") {
    const type = fields.workloadType ?? "";
    if (!WORKLOAD_TYPE.test(type) || RESERVED_TYPES.has(type)) {
      throw new RangeError(`baggage: workload type ${JSON.stringify(type)} is not a lower-case kind name`);
    }
    add(`k8s.${type}.name`, fields.workloadName);
  }
  add("service.name", fields.serviceName);
  add("service.version", fields.serviceVersion);
  return members.join(",");
}

/** The workload metadata in a `baggage` value; unknown keys and malformed members are ignored. */
export function parseBaggage(text: string): BaggageFields {
  const out: { -readonly [K in keyof BaggageFields]: string } = {};
  for (const member of text.split(",")) {
    // Properties (`;k=v`) qualify a member; HBONE does not use them.
    const [pair = ""] = member.split(";");
    const eq = pair.indexOf("=");
    if (eq <= 0) continue;
    const key = pair.slice(0, eq).trim();
    const value = decodeBaggageValue(pair.slice(eq + 1).trim());
    if (value === undefined || value === "") continue;
    if (key === "k8s.cluster.name") out.clusterName = value;
    else if (key === "k8s.namespace.name") out.namespace = value;
    else if (key === "service.name") out.serviceName = value;
    else if (key === "service.version") out.serviceVersion = value;
    else {
      const m = /^k8s\.([a-z]+)\.name$/.exec(key);
      if (m?.[1] && !RESERVED_TYPES.has(m[1])) {
        out.workloadType = m[1];
        out.workloadName = value;
      }
    }
  }
  return out;
}

// W3C baggage-octet: printable ASCII except space, '"', ',', ';' and '\'. '%' is encoded as well,
// since receivers percent-decode.
const BAGGAGE_SAFE = /^[\x21\x23-\x24\x26-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]$/;

function encodeBaggageValue(value: string): string {
  let out = "";
  for (const ch of value) {
    if (BAGGAGE_SAFE.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, "utf8")) out += `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

function decodeBaggageValue(value: string): string | undefined {
  try {
    return decodeURIComponent(value);
  } catch {
    return undefined;
  }
}

export interface ForwardedFields {
  /** The original client: an address, or its `ip:port` text (`formatAuthority`). */
  readonly for: SocketAddress | string;
  /** The service host name, when the client addressed a service rather than a pod. */
  readonly host?: string;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** An RFC 7239 `forwarded` value: `for="10.0.0.1:5678"` (`for="[fd00::1]:5678"`), then `;host=<host>`. */
export function forwarded(fields: ForwardedFields): string {
  const client = typeof fields.for === "string" ? parseAuthority(fields.for) : fields.for;
  if (!client) throw new RangeError(`forwarded: ${JSON.stringify(fields.for)} is not ip:port`);
  const node = formatAuthority(client.address, client.port);
  const host = fields.host;
  if (host === undefined || host === "") return `for="${node}"`;
  return `for="${node}";host=${TOKEN.test(host) ? host : quote(host)}`;
}

export interface ParsedForwarded {
  readonly for?: { readonly address: string; readonly port?: number };
  readonly host?: string;
}

/** `for` and `host` of the first element of a `forwarded` value (the hop nearest the client). */
export function parseForwarded(text: string): ParsedForwarded {
  const out: { for?: { address: string; port?: number }; host?: string } = {};
  for (const [key, value] of forwardedPairs(text)) {
    if (key === "for" && out.for === undefined) {
      const node = parseForwardedNode(value);
      if (node) out.for = node;
    } else if (key === "host" && out.host === undefined) out.host = value;
  }
  return out;
}

/** The key=value pairs of the first element, keys lower-cased and quoted values unescaped. */
function* forwardedPairs(text: string): Generator<[string, string]> {
  let i = 0;
  while (i < text.length) {
    while (text[i] === " " || text[i] === ";") i++;
    if (i >= text.length || text[i] === ",") return;
    const eq = text.indexOf("=", i);
    if (eq < 0) return;
    const key = text.slice(i, eq).trim().toLowerCase();
    i = eq + 1;
    let value = "";
    if (text[i] === '"') {
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === "\\") i++;
        value += text[i] ?? "";
        i++;
      }
      i++;
    } else {
      while (i < text.length && text[i] !== ";" && text[i] !== ",") value += text[i++];
      value = value.trim();
    }
    yield [key, value];
  }
}

function parseForwardedNode(value: string): { address: string; port?: number } | undefined {
  const full = parseAuthority(value);
  if (full) return { address: full.address, port: full.port };
  if (value.startsWith("[") && value.endsWith("]")) {
    const addr = canonicalIp(value.slice(1, -1));
    return addr?.family === 6 ? { address: addr.ip } : undefined;
  }
  return isIPv4(value) ? { address: value } : undefined;
}

function quote(text: string): string {
  return `"${text.replace(/["\\]/g, (c) => `\\${c}`)}"`;
}

export interface TraceParent {
  /** 32 lower-case hex digits, not all zero. */
  readonly traceId: string;
  /** 16 lower-case hex digits, not all zero. */
  readonly parentId: string;
  /** 2 hex digits; bit 0 is "sampled". */
  readonly flags: string;
}

/** A fresh W3C `traceparent` (version 00, random ids, not sampled), one per connection. */
export function traceparent(): string {
  let traceId: string;
  let parentId: string;
  do traceId = randomBytes(16).toString("hex");
  while (/^0+$/.test(traceId));
  do parentId = randomBytes(8).toString("hex");
  while (/^0+$/.test(parentId));
  return `00-${traceId}-${parentId}-00`;
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

export function parseTraceparent(text: string): TraceParent | undefined {
  const m = TRACEPARENT.exec(text.trim());
  if (!m?.[1] || !m[2] || !m[3] || /^0+$/.test(m[1]) || /^0+$/.test(m[2])) return undefined;
  return { traceId: m[1], parentId: m[2], flags: m[3] };
}

export interface ConnectHeaderFields {
  /** The source workload. */
  readonly baggage?: BaggageFields;
  /** The original client, and the service host name when it addressed a service. */
  readonly forwarded?: ForwardedFields;
  /** Defaults to a fresh id. */
  readonly traceparent?: string;
}

/** The request headers upstream ztunnel sends with a CONNECT, for `HboneClient.dial`'s `headers`. */
export function connectRequestHeaders(fields: ConnectHeaderFields): Record<string, string> {
  const headers: Record<string, string> = {};
  if (fields.baggage) {
    const text = baggage(fields.baggage);
    if (text !== "") headers["baggage"] = text;
  }
  if (fields.forwarded) headers["forwarded"] = forwarded(fields.forwarded);
  headers["traceparent"] = fields.traceparent ?? traceparent();
  return headers;
}
