import type { IpFamily } from "../configfile/net.js";
import { ROUTE_PROTO } from "../netplan/constants.js";
import type { Route } from "../netplan/types.js";
import { tableArg, tableName, tableNumber } from "./iprules.js";
import type { Change } from "./types.js";
import { ApplyError } from "./types.js";

// Routes: parse `ip -N -json route show table all`, compare with the plan, and produce the
// `ip -batch` lines that converge one family. Offmesh owns exactly the routes with its protocol
// number, in any table; every other route is left alone. Pure: no I/O.

const PROTO = ROUTE_PROTO.number;

const ROUTE_TYPES: Record<string, string> = {
  "1": "unicast",
  "2": "local",
  "3": "broadcast",
  "4": "anycast",
  "5": "multicast",
  "6": "blackhole",
  "7": "unreachable",
  "8": "prohibit",
  "9": "throw",
  "10": "nat",
};
const SCOPES: Record<string, string> = {
  "0": "global",
  "200": "site",
  "253": "link",
  "254": "host",
  "255": "nowhere",
};
const PROTO_NAMES: Record<number, string> = { 1: "redirect", 2: "kernel", 3: "boot", 4: "static" };
/** The metric a route gets when none is given: IPv6 routes are added at 1024, IPv4 ones at 0. */
const DEFAULT_METRIC: Record<IpFamily, number> = { 4: 0, 6: 1024 };

/** A route normalised so that a planned route and the kernel's listing of it compare equal. */
export interface KernelRoute {
  readonly family: IpFamily;
  readonly table: number;
  readonly type: string;
  /** `default`, or an address (host routes without their /32 or /128) or CIDR. */
  readonly dst: string;
  readonly via?: string;
  readonly dev?: string;
  readonly proto: number;
  /** IPv4 only (IPv6 routes have no scope); undefined means global. */
  readonly scope?: string;
  readonly src?: string;
  readonly onlink: boolean;
  readonly metric: number;
  readonly tos?: string;
  /** What the kernel printed that offmesh never sets (nexthop groups, metrics …). */
  readonly opaque: readonly string[];
}

type Json = Record<string, unknown>;

const str = (v: unknown): string | undefined =>
  typeof v === "string" ? v : typeof v === "number" ? String(v) : undefined;

export function normalizeDst(dst: string, family: IpFamily): string {
  const d = dst.toLowerCase();
  if (d === "default" || d === "0.0.0.0/0" || d === "::/0") return "default";
  const full = family === 4 ? "/32" : "/128";
  return d.endsWith(full) ? d.slice(0, -full.length) : d;
}

const IGNORED_FLAGS = new Set([
  "linkdown",
  "dead",
  "offload",
  "trap",
  "offload_failed",
  "pervasive",
  "notify",
]);
const KNOWN_ROUTE_KEYS = new Set([
  "type",
  "dst",
  "gateway",
  "dev",
  "table",
  "protocol",
  "scope",
  "prefsrc",
  "flags",
  "metric",
  "pref",
  "tos",
  "dsfield",
]);

/** One entry of `ip -N -json route show table all` (numeric types, scopes, tables and protocols). */
export function parseRoute(raw: Json, family: IpFamily): KernelRoute {
  const type = ROUTE_TYPES[str(raw.type) ?? "1"] ?? str(raw.type) ?? "unicast";
  const table = str(raw.table);
  // ip prints no protocol for "boot", the default of `ip route add` without `proto`.
  const protoText = str(raw.protocol) ?? "3";
  const scope = family === 4 ? SCOPES[str(raw.scope) ?? "0"] : undefined;
  const flags = Array.isArray(raw.flags) ? raw.flags.map(String) : [];
  const opaque = Object.entries(raw)
    .filter(([k]) => !KNOWN_ROUTE_KEYS.has(k))
    .map(([k, v]) => `${k} ${JSON.stringify(v)}`);
  opaque.push(...flags.filter((f) => f !== "onlink" && !IGNORED_FLAGS.has(f)));
  let dev = str(raw.dev);
  // IPv6 hangs routes without a next hop (blackhole …) on lo; IPv4 prints no device for them.
  if (family === 6 && dev === "lo" && ["blackhole", "unreachable", "prohibit", "throw"].includes(type)) {
    dev = undefined;
  }
  const via = str(raw.gateway);
  const src = str(raw.prefsrc);
  const tos = str(raw.tos) ?? str(raw.dsfield);
  return {
    family,
    table: table === undefined ? 254 : Number(tableArg(table)),
    type,
    dst: normalizeDst(str(raw.dst) ?? "default", family),
    ...(via !== undefined ? { via: via.toLowerCase() } : {}),
    ...(dev !== undefined ? { dev } : {}),
    proto: /^\d+$/.test(protoText) ? Number(protoText) : -1,
    ...(scope !== undefined && scope !== "global" ? { scope } : {}),
    ...(src !== undefined ? { src: src.toLowerCase() } : {}),
    onlink: flags.includes("onlink"),
    metric: typeof raw.metric === "number" ? raw.metric : DEFAULT_METRIC[family],
    ...(tos !== undefined && tos !== "0" && tos !== "0x00" ? { tos } : {}),
    opaque,
  };
}

export function parseRoutes(json: string, family: IpFamily): KernelRoute[] {
  const parsed: unknown = json.trim() === "" ? [] : JSON.parse(json);
  if (!Array.isArray(parsed))
    throw new ApplyError("route", `ip -json route show printed ${json.slice(0, 80)}`);
  return parsed
    .filter((r): r is Json => typeof r === "object" && r !== null)
    .map((r) => parseRoute(r, family));
}

/** The scope `ip route add` gives a route when none is named (iproute2's defaults). */
function defaultScope(r: Route): string | undefined {
  const type = r.type ?? "unicast";
  if (type === "local") return "host";
  if (type === "unicast" && r.via === undefined) return "link";
  return undefined;
}

/** A planned route as the kernel will list it. Every route offmesh installs carries its protocol. */
export function routeFromPlan(r: Route): KernelRoute {
  const scope = r.family === 4 ? (r.scope ?? defaultScope(r)) : undefined;
  return {
    family: r.family,
    table: tableNumber(r.table),
    type: r.type ?? "unicast",
    dst: normalizeDst(r.dst, r.family),
    ...(r.via !== undefined ? { via: r.via.toLowerCase() } : {}),
    ...(r.dev !== undefined ? { dev: r.dev } : {}),
    proto: PROTO,
    ...(scope !== undefined ? { scope } : {}),
    ...(r.src !== undefined ? { src: r.src.toLowerCase() } : {}),
    onlink: r.onlink === true,
    metric: DEFAULT_METRIC[r.family],
    opaque: [],
  };
}

/** What identifies a route to the kernel: two routes with one key cannot coexist. */
export function routeKey(r: KernelRoute): string {
  return `${r.family}|${r.table}|${r.dst}|${r.tos ?? ""}|${r.metric}`;
}

/** The route as `ip route show table all` prints it. */
export function routeDetail(r: KernelRoute): string {
  const parts: string[] = [];
  if (r.type !== "unicast") parts.push(r.type);
  parts.push(r.dst);
  if (r.via !== undefined) parts.push("via", r.via);
  if (r.dev !== undefined) parts.push("dev", r.dev);
  if (r.table !== 254) parts.push("table", tableName(r.table));
  parts.push("proto", PROTO_NAMES[r.proto] ?? String(r.proto));
  if (r.scope !== undefined) parts.push("scope", r.scope);
  if (r.src !== undefined) parts.push("src", r.src);
  if (r.family === 6 || r.metric !== 0) parts.push("metric", String(r.metric));
  if (r.tos !== undefined) parts.push("tos", r.tos);
  if (r.onlink) parts.push("onlink");
  parts.push(...r.opaque.map((o) => `[${o}]`));
  return parts.join(" ");
}

export function sameRoute(a: KernelRoute, b: KernelRoute): boolean {
  return a.opaque.length === 0 && b.opaque.length === 0 && routeDetail(a) === routeDetail(b);
}

/** `route replace …`: installs the route whether or not one with its key exists. */
export function routeReplaceLine(r: KernelRoute): string {
  const parts = ["route replace"];
  if (r.type !== "unicast") parts.push(r.type);
  parts.push(r.dst);
  if (r.via !== undefined) parts.push("via", r.via);
  if (r.dev !== undefined) parts.push("dev", r.dev);
  parts.push("table", String(r.table), "proto", String(PROTO));
  if (r.scope !== undefined) parts.push("scope", r.scope);
  if (r.src !== undefined) parts.push("src", r.src);
  if (r.onlink) parts.push("onlink");
  return parts.join(" ");
}

/** `route del …` naming the key and the protocol, so the kernel can only remove an offmesh route. */
export function routeDeleteLine(r: KernelRoute): string {
  const parts = ["route del"];
  if (r.type !== "unicast") parts.push(r.type);
  parts.push(r.dst, "table", String(r.table), "proto", String(r.proto));
  if (r.family === 6 || r.metric !== 0) parts.push("metric", String(r.metric));
  if (r.tos !== undefined) parts.push("tos", r.tos);
  return parts.join(" ");
}

export interface RouteStep {
  readonly family: IpFamily;
  readonly lines: readonly string[];
  readonly changes: readonly Change[];
}

/** Which devices exist once the link step has run, and which lose their routes in it. */
export interface DeviceView {
  readonly present: ReadonlySet<string>;
  /** Links deleted or recreated: the kernel drops their routes, so they must not count as present routes. */
  readonly gone: ReadonlySet<string>;
  /** Addresses assigned here once links are converged; the kernel refuses a `src` that is not one of them. */
  readonly addresses: ReadonlySet<string>;
}

/** The planned routes of one family by key; two different routes with one key are a planner bug. */
function plannedByKey(family: IpFamily, desired: readonly Route[]): Map<string, KernelRoute> {
  const want = new Map<string, KernelRoute>();
  const clashes: string[] = [];
  for (const r of desired) {
    if (r.family !== family) continue;
    const k = routeFromPlan(r);
    const other = want.get(routeKey(k));
    if (other && !sameRoute(other, k)) clashes.push(`"${routeDetail(other)}" and "${routeDetail(k)}"`);
    want.set(routeKey(k), k);
  }
  if (clashes.length > 0) {
    throw new ApplyError("route", `plan has two routes for one destination: ${clashes.join("; ")}`);
  }
  return want;
}

/**
 * The batch that converges one family's offmesh routes: missing ones added, differing ones
 * replaced, stale ones (owned, not planned) deleted. Fails before anything is written when a
 * planned route needs a device that will not exist, or would displace a route offmesh does not own.
 */
export function planRoutes(
  family: IpFamily,
  desired: readonly Route[],
  current: readonly KernelRoute[],
  devices: DeviceView,
): RouteStep {
  const want = plannedByKey(family, desired);
  const live = current.filter((r) => r.dev === undefined || !devices.gone.has(r.dev));
  const owned = new Map<string, KernelRoute[]>();
  const foreign = new Map<string, KernelRoute>();
  for (const r of live) {
    if (r.proto === PROTO) owned.set(routeKey(r), [...(owned.get(routeKey(r)) ?? []), r]);
    else foreign.set(routeKey(r), r);
  }
  const problems: string[] = [];
  for (const [key, r] of want) {
    if (r.dev !== undefined && !devices.present.has(r.dev)) {
      problems.push(`route "${routeDetail(r)}" needs device ${r.dev}, which does not exist`);
    }
    if (r.src !== undefined && !devices.addresses.has(r.src)) {
      problems.push(`route "${routeDetail(r)}" needs source address ${r.src}, which no link here has`);
    }
    const other = foreign.get(key);
    if (other)
      problems.push(
        `route "${routeDetail(r)}" would replace "${routeDetail(other)}", which offmesh does not own`,
      );
  }
  if (problems.length > 0) throw new ApplyError("route", problems.join("; "));
  const lines: string[] = [];
  const changes: Change[] = [];
  for (const [key, r] of want) {
    const have = owned.get(key) ?? [];
    if (have.length === 1 && sameRoute(have[0] as KernelRoute, r)) continue;
    lines.push(routeReplaceLine(r));
    const was = have.map(routeDetail).join(", ");
    changes.push(
      have.length === 0
        ? { backend: "route", action: "add", detail: routeDetail(r) }
        : { backend: "route", action: "replace", detail: `${routeDetail(r)} (was ${was})` },
    );
  }
  for (const [key, rs] of owned) {
    if (want.has(key)) continue;
    for (const r of rs) {
      lines.push(routeDeleteLine(r));
      changes.push({ backend: "route", action: "delete", detail: routeDetail(r) });
    }
  }
  return { family, lines, changes };
}

/** Every offmesh route of one family, in every table, deleted. */
export function planRouteCleanup(family: IpFamily, current: readonly KernelRoute[]): RouteStep {
  const lines: string[] = [];
  const changes: Change[] = [];
  for (const r of current) {
    if (r.proto !== PROTO) continue;
    lines.push(routeDeleteLine(r));
    changes.push({ backend: "route", action: "delete", detail: routeDetail(r) });
  }
  return { family, lines, changes };
}

/** One line of a route delta batch, with the change it makes when it succeeds. */
export interface DeltaLine {
  readonly line: string;
  readonly change: Change;
  readonly kind: "add" | "delete";
}

/**
 * The batch lines of a pod add/remove, per family, deletes first (so a delete and an add of the
 * same destination leave the added route). Adds are `replace`, so re-adding is harmless; a delete of
 * a route that is not there fails its line only, which the caller tolerates (`ip -force`).
 */
export function planRouteDelta(add: readonly Route[], del: readonly Route[]): Map<IpFamily, DeltaLine[]> {
  const out = new Map<IpFamily, DeltaLine[]>();
  const push = (family: IpFamily, l: DeltaLine): void =>
    void out.set(family, [...(out.get(family) ?? []), l]);
  for (const r of del) {
    const k = routeFromPlan(r);
    push(r.family, {
      line: routeDeleteLine(k),
      kind: "delete",
      change: { backend: "route", action: "delete", detail: routeDetail(k) },
    });
  }
  for (const r of add) {
    const k = routeFromPlan(r);
    push(r.family, {
      line: routeReplaceLine(k),
      kind: "add",
      change: { backend: "route", action: "add", detail: routeDetail(k) },
    });
  }
  return out;
}

/** The kernel's answer to deleting a route that does not exist (or whose table does not, yet). */
export function isAbsentRouteError(message: string): boolean {
  return /No such process|FIB table does not exist|ESRCH/.test(message);
}
