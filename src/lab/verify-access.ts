import { openSync, readSync, closeSync, statSync } from "node:fs";

// The ztunnels' access logs, as the lab keeps them (logs/ztunnel-<node>.log: pino JSON lines,
// one per connection with `target: "access"`, among other lines). A reader remembers where each
// log ended when a check began and reads only what was written after, so a check sees exactly
// the connections it caused.

export interface AccessEntry {
  readonly srcAddr?: string;
  readonly srcIdentity?: string;
  readonly srcWorkload?: string;
  readonly dstAddr?: string;
  readonly dstHboneAddr?: string;
  readonly dstIdentity?: string;
  readonly dstWorkload?: string;
  readonly direction?: string;
  readonly error?: string;
  readonly reason?: string;
  readonly message?: string;
  readonly bytesSent?: number;
  readonly bytesRecv?: number;
}

const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);

/** The access entry of one log line, or undefined for any other line (JSON or not). */
export function parseAccessLine(line: string): AccessEntry | undefined {
  if (!line.startsWith("{")) return undefined;
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (j["target"] !== "access") return undefined;
  const entry: Record<string, unknown> = {
    srcAddr: str(j["src.addr"]),
    srcIdentity: str(j["src.identity"]),
    srcWorkload: str(j["src.workload"]),
    dstAddr: str(j["dst.addr"]),
    dstHboneAddr: str(j["dst.hbone_addr"]),
    dstIdentity: str(j["dst.identity"]),
    dstWorkload: str(j["dst.workload"]),
    direction: str(j["direction"]),
    error: str(j["error"]),
    reason: str(j["reason"]),
    message: str(j["msg"]),
    bytesSent: num(j["bytes_sent"]),
    bytesRecv: num(j["bytes_recv"]),
  };
  for (const k of Object.keys(entry)) if (entry[k] === undefined) delete entry[k];
  return entry as AccessEntry;
}

/** The IP of an `ip:port` (or `[v6]:port`) field. */
export function hostOf(endpoint: string | undefined): string | undefined {
  if (endpoint === undefined) return undefined;
  const m = /^\[(.*)\]:\d+$/.exec(endpoint) ?? /^(.*):\d+$/.exec(endpoint);
  return m?.[1] ?? endpoint;
}

/** `outbound src 10.244.0.2 spiffe://…/sa/client → dst 10.244.3.2:15008 …`: an entry for a report. */
export function describeEntry(e: AccessEntry): string {
  const parts = [
    e.direction ?? "?",
    `src.addr=${e.srcAddr ?? "-"}`,
    ...(e.srcIdentity ? [`src.identity=${e.srcIdentity}`] : ["no src.identity"]),
    `dst.addr=${e.dstAddr ?? "-"}`,
    ...(e.dstHboneAddr ? [`dst.hbone_addr=${e.dstHboneAddr}`] : []),
    ...(e.dstIdentity ? [`dst.identity=${e.dstIdentity}`] : []),
    ...(e.error ? [`error=${JSON.stringify(e.error)}`] : []),
    ...(e.reason ? [`reason=${JSON.stringify(e.reason)}`] : []),
  ];
  return parts.join(" ");
}

/** Reads the log files that grew since `mark()`. */
export class AccessLogReader {
  private readonly offsets = new Map<string, number>();

  constructor(private readonly logFile: (component: string) => string) {}

  /** Remember where each of `components`' logs ends now. */
  mark(components: readonly string[]): void {
    for (const c of components) this.offsets.set(c, sizeOf(this.logFile(c)));
  }

  /** Access entries written to `component`'s log since its mark. */
  since(component: string): AccessEntry[] {
    const file = this.logFile(component);
    const from = this.offsets.get(component) ?? 0;
    const size = sizeOf(file);
    // A log that shrank was replaced (not done by the lab, but then everything in it is new).
    const start = size < from ? 0 : from;
    if (size <= start) return [];
    const buf = Buffer.alloc(size - start);
    const fd = openSync(file, "r");
    try {
      readSync(fd, buf, 0, buf.length, start);
    } finally {
      closeSync(fd);
    }
    const out: AccessEntry[] = [];
    for (const line of buf.toString("utf8").split("\n")) {
      const e = parseAccessLine(line.trim());
      if (e) out.push(e);
    }
    return out;
  }

  /** The first entry since the mark that satisfies `match`, waiting up to `timeoutMs` for it. */
  async waitFor(
    component: string,
    match: (e: AccessEntry) => boolean,
    timeoutMs = 3_000,
  ): Promise<AccessEntry | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.since(component).find(match);
      if (found || Date.now() > deadline) return found;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}
