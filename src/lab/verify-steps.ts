import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";
import { nodeNetns } from "./names.js";
import type { AccessEntry, AccessLogReader } from "./verify-access.js";
import { describeEntry, hostOf } from "./verify-access.js";
import type { LabView, ZtunnelView } from "./verify-cast.js";
import type { CounterDelta } from "./verify-counters.js";
import { formatDelta } from "./verify-counters.js";
import { peerIp, tcpEcho } from "./verify-traffic.js";
import type { EchoExchange } from "./verify-traffic.js";
import type { WireFrame, WireMap } from "./verify-wire.js";
import { framesBetween, hopOf, markerSightings, startsTlsRecord, summarizeFrames } from "./verify-wire.js";

// The steps a path check is made of. Each adds what it saw to the check's evidence and, when it
// saw something other than expected, a problem: a check passes when it has no problems.

const run = promisify(execFile);

export class Evidence {
  readonly observed: string[] = [];
  readonly problems: string[] = [];

  see(line: string): void {
    this.observed.push(line);
  }

  fail(problem: string): void {
    this.problems.push(problem);
  }
}

// ---- TCP ----------------------------------------------------------------------------------------

export interface EchoStep {
  readonly netns: string;
  /** For the report: `default/client`, `host of master`. */
  readonly from: string;
  readonly host: string;
  readonly port: number;
  readonly marker: string;
  /** The answering server's name, when known (`default/server`). */
  readonly answeredBy?: string;
  /** The peer IP the server must have seen. */
  readonly peer?: string;
}

/** Connect, exchange the marker, check who answered and which peer it saw. */
export async function echoStep(ev: Evidence, s: EchoStep): Promise<EchoExchange> {
  const r = await tcpEcho({ netns: s.netns, host: s.host, port: s.port, payload: s.marker });
  if (!r.ok) {
    ev.see(`TCP ${s.from} → ${s.host}:${s.port}: FAILED (${r.error})`);
    ev.fail(`the connection ${s.from} → ${s.host}:${s.port} failed: ${r.error}`);
    return r;
  }
  ev.see(
    `TCP ${s.from} → ${s.host}:${s.port}: answered by ${r.greeting.pod}, peer ${r.greeting.peer}, marker echoed`,
  );
  if (s.answeredBy && r.greeting.pod !== s.answeredBy)
    ev.fail(`answered by ${r.greeting.pod}, expected ${s.answeredBy}`);
  if (s.peer && peerIp(r.greeting) !== s.peer)
    ev.fail(`the server saw peer ${r.greeting.peer}, expected ${s.peer}`);
  return r;
}

// ---- Access logs --------------------------------------------------------------------------------

export interface AccessExpectation {
  readonly direction: "inbound" | "outbound";
  readonly srcIp: string;
  /** `ip:port` the client asked for: dst.addr or dst.hbone_addr carries it. */
  readonly target: string;
  /** A SPIFFE id, or null: the field must be absent (a source outside the mesh). */
  readonly srcIdentity?: string | null;
  readonly dstIdentity?: string | null;
  /** dst.addr must be the peer's HBONE port (`true`), or must be the target itself (`false`). */
  readonly hbone?: boolean;
  /** The connection must have been refused with an error containing this text. */
  readonly error?: string;
}

/**
 * An exchange, then the access-log line each ztunnel on its path must have written for it. A failed
 * connection's line comes at once if at all, so it is waited for only briefly.
 */
export async function loggedEchoStep(
  ev: Evidence,
  logs: AccessLogReader,
  exchange: EchoStep,
  lines: readonly (readonly [ZtunnelView, AccessExpectation])[],
): Promise<EchoExchange> {
  const r = await echoStep(ev, exchange);
  for (const [zt, want] of lines) await accessStep(ev, logs, zt, want, r.ok ? 3_000 : 500);
  return r;
}

/** The ztunnel's access-log line of a connection, and whether its fields are the expected ones. */
export async function accessStep(
  ev: Evidence,
  logs: AccessLogReader,
  zt: ZtunnelView,
  want: AccessExpectation,
  timeoutMs = 3_000,
): Promise<AccessEntry | undefined> {
  const entry = await logs.waitFor(
    zt.component,
    (e) =>
      e.direction === want.direction &&
      hostOf(e.srcAddr) === want.srcIp &&
      (e.dstAddr === want.target || e.dstHboneAddr === want.target),
    timeoutMs,
  );
  if (!entry) {
    const seen = logs.since(zt.component);
    ev.see(
      `${zt.node} ztunnel: no ${want.direction} line from ${want.srcIp} to ${want.target} (${seen.length} other access lines)`,
    );
    ev.fail(`the ${zt.node} ztunnel logged no ${want.direction} connection ${want.srcIp} → ${want.target}`);
    return undefined;
  }
  ev.see(`${zt.node} ztunnel: ${describeEntry(entry)}`);
  const field = (name: string, got: string | undefined, expected: string | null | undefined): void => {
    if (expected === undefined) return;
    if (expected === null && got !== undefined) ev.fail(`${zt.node}: ${name} is ${got}, expected none`);
    if (expected !== null && got !== expected)
      ev.fail(`${zt.node}: ${name} is ${got ?? "absent"}, expected ${expected}`);
  };
  field("src.identity", entry.srcIdentity, want.srcIdentity);
  field("dst.identity", entry.dstIdentity, want.dstIdentity);
  if (want.hbone === true && !entry.dstAddr?.endsWith(":15008"))
    ev.fail(`${zt.node}: dst.addr ${entry.dstAddr ?? "absent"} is not an HBONE port`);
  if (want.hbone === false && entry.dstAddr !== want.target)
    ev.fail(`${zt.node}: dst.addr ${entry.dstAddr ?? "absent"}, expected ${want.target} (no HBONE)`);
  if (want.error === undefined && entry.error) ev.fail(`${zt.node}: the connection failed: ${entry.error}`);
  if (
    want.error !== undefined &&
    !(entry.error ?? "").includes(want.error) &&
    !(entry.reason ?? "").includes(want.error)
  )
    ev.fail(
      `${zt.node}: expected a refusal mentioning ${JSON.stringify(want.error)}, got ${entry.error ?? "no error"}`,
    );
  return entry;
}

// ---- Counters -----------------------------------------------------------------------------------

/** Report the counter deltas; those in `mustCount` (by index) must have matched packets. */
export function counterStep(
  ev: Evidence,
  deltas: readonly CounterDelta[],
  mustCount: ReadonlySet<number>,
): void {
  if (deltas.length === 0) return;
  ev.see(`counters: ${deltas.map(formatDelta).join(", ")}`);
  deltas.forEach((d, i) => {
    if (!mustCount.has(i)) return;
    if (d.packets === undefined) ev.fail(`rule ${d.watch.rule.label} is missing in ${d.watch.where}`);
    else if (d.packets <= 0) ev.fail(`rule ${d.watch.rule.label} in ${d.watch.where} matched no packet`);
  });
}

// ---- The wire -----------------------------------------------------------------------------------

/** What the bridge must have carried for a flow between `a` and `b` whose payload held `marker`. */
export type WireRule =
  /** Between nodes only TCP to :15008 (and some of it), the marker only ever on host links, and seen there. */
  | { readonly kind: "tunnel-only"; readonly a: string; readonly b: string; readonly marker: string }
  /** Never off the pair's host link; the marker seen on it. */
  | { readonly kind: "stays-in-pair"; readonly a: string; readonly b: string; readonly marker: string };

export function wireStep(ev: Evidence, map: WireMap, frames: readonly WireFrame[], rule: WireRule): void {
  const flow = framesBetween(frames, rule.a, rule.b);
  const offPair = flow.filter((f) => !hopOf(map, f).hostLink);
  const marker = markerSightings(map, frames, rule.marker);
  ev.see(
    `wire: ${summarizeFrames(map, flow)}; marker on host links ×${marker.hostLink}, between nodes ×${marker.betweenNodes}`,
  );
  if (marker.betweenNodes > 0)
    ev.fail(`the plaintext marker crossed the wire between nodes (${marker.hops.join(", ")})`);
  // The marker on the CPU's own cable proves the capture saw this flow's data at all.
  if (marker.hostLink === 0)
    ev.fail("the capture did not see the marker on any host link: it missed the flow");
  if (rule.kind === "tunnel-only") {
    const notTunnel = offPair.filter(
      (f) => f.protocol !== "tcp" || (f.srcPort !== 15008 && f.dstPort !== 15008),
    );
    const carrying = offPair.filter((f) => f.payloadLength > 0);
    const tls = carrying.filter(startsTlsRecord);
    ev.see(
      `wire: ${tls.length} of ${carrying.length} data segments between nodes begin with a TLS record header`,
    );
    if (carrying.length > 0 && tls.length === 0) ev.fail("no data segment between nodes looks like TLS");
    if (offPair.length === 0) ev.fail("no frame of the flow between nodes: the tunnel was not seen");
    if (notTunnel.length > 0)
      ev.fail(`${notTunnel.length} frames of the flow between nodes were not TCP to :15008`);
  } else if (offPair.length > 0) {
    ev.fail(`${offPair.length} frames of the flow left the pair (${summarizeFrames(map, offPair)})`);
  }
}

// ---- Processes ----------------------------------------------------------------------------------

/** What runs in a CPU node's namespace and its pods': there must be no proxy. */
export async function cpuProcessStep(ev: Evidence, view: LabView): Promise<void> {
  const all = await run("ip", ["-json", "netns", "list"]).then(
    (r) => (r.stdout.trim() ? (JSON.parse(r.stdout) as { name: string }[]).map((n) => n.name) : []),
    () => [] as string[],
  );
  for (const cpu of view.nodes.filter((n) => n.role === "cpu")) {
    const nodeNs = nodeNetns(view.lab, cpu.name);
    const namespaces = [nodeNs, ...all.filter((n) => n.startsWith(`${view.lab}-p-${cpu.name}.`))];
    const kinds = new Map<string, number>();
    for (const ns of namespaces) {
      const pids = await run("ip", ["netns", "pids", ns]).then(
        (r) => r.stdout.split(/\s+/).filter(Boolean),
        () => [] as string[],
      );
      for (const pid of pids) {
        const kind = processKind(cmdlineOf(pid));
        kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
        if (kind === "ztunnel") ev.fail(`a proxy runs in ${ns} (pid ${pid})`);
      }
    }
    ev.see(
      `processes in ${cpu.name}'s namespaces: ${[...kinds].map(([k, n]) => `${n} ${k}`).join(", ") || "none"}`,
    );
  }
}

function cmdlineOf(pid: string): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return "";
  }
}

export function processKind(cmdline: string): string {
  if (/\bztunnel run\b/.test(cmdline)) return "ztunnel";
  if (/\bagent run\b/.test(cmdline)) return "agent";
  if (/\bcontrolplane run\b/.test(cmdline)) return "controlplane";
  if (/\blab echo\b/.test(cmdline)) return "echo";
  return "other";
}
