// Pure arithmetic and parsing for the ztunnel benchmark: latency summaries, iperf3's JSON, CPU
// profiles, /proc figures and the markdown it records. No I/O here, so the numbers the benchmark
// prints can be checked by reading one small file.

export interface LatencySummary {
  /** Samples that completed (NaN samples, i.e. lost requests, are left out). */
  readonly count: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
  readonly mean: number;
}

/** The nearest-rank `q` quantile (0 < q ≤ 1) of ascending `sorted`; NaN when it is empty. */
export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1] ?? NaN;
}

/** p50/p99/p99.9/max/mean of the finite samples. */
export function summarize(samples: Float64Array): LatencySummary {
  const finite = samples.filter((x) => Number.isFinite(x)).sort();
  let sum = 0;
  for (const x of finite) sum += x;
  return {
    count: finite.length,
    p50: quantile(finite, 0.5),
    p99: quantile(finite, 0.99),
    p999: quantile(finite, 0.999),
    max: finite.length > 0 ? (finite[finite.length - 1] ?? NaN) : NaN,
    mean: finite.length > 0 ? sum / finite.length : NaN,
  };
}

export interface IperfResult {
  /** What the receiver got, averaged over the test. */
  readonly bitsPerSecond: number;
  readonly seconds: number;
  readonly retransmits?: number;
  /** iperf3's own CPU use (percent of one core), sender and receiver side. */
  readonly senderCpuPercent?: number;
  readonly receiverCpuPercent?: number;
}

/** iperf3 reported a failure (its JSON's `error`) or printed something that is not its JSON. */
export class IperfOutputError extends Error {
  override readonly name = "IperfOutputError";
}

interface IperfJson {
  error?: string;
  end?: {
    sum_received?: { bits_per_second?: number; seconds?: number };
    sum_sent?: { retransmits?: number };
    cpu_utilization_percent?: { host_total?: number; remote_total?: number };
  };
}

/** The receiver's throughput (and what goes with it) from `iperf3 -c … -J` output. */
export function parseIperfJson(text: string): IperfResult {
  let doc: IperfJson;
  try {
    doc = JSON.parse(text) as IperfJson;
  } catch {
    throw new IperfOutputError(`iperf3 printed no JSON: ${text.slice(0, 300)}`);
  }
  if (doc.error) throw new IperfOutputError(`iperf3: ${doc.error}`);
  const received = doc.end?.sum_received;
  if (typeof received?.bits_per_second !== "number" || typeof received.seconds !== "number")
    throw new IperfOutputError("iperf3's JSON has no end.sum_received.bits_per_second");
  const cpu = doc.end?.cpu_utilization_percent;
  return {
    bitsPerSecond: received.bits_per_second,
    seconds: received.seconds,
    ...(typeof doc.end?.sum_sent?.retransmits === "number"
      ? { retransmits: doc.end.sum_sent.retransmits }
      : {}),
    ...(typeof cpu?.host_total === "number" ? { senderCpuPercent: cpu.host_total } : {}),
    ...(typeof cpu?.remote_total === "number" ? { receiverCpuPercent: cpu.remote_total } : {}),
  };
}

/** utime and stime of a process in clock ticks, from the text of /proc/<pid>/stat. */
export function cpuTicksOfStat(stat: string): { readonly user: number; readonly system: number } {
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  const user = Number(rest[11]);
  const system = Number(rest[12]);
  if (!Number.isFinite(user) || !Number.isFinite(system)) throw new Error(`unreadable /proc stat: ${stat}`);
  return { user, system };
}

export interface CpuTimes {
  /** All but idle and iowait. */
  readonly busy: number;
  readonly total: number;
  /** user + nice. */
  readonly user: number;
  readonly system: number;
  /** Interrupts and softirqs: much of a packet's way through the kernel is spent here. */
  readonly irq: number;
  readonly steal: number;
}

/** Jiffies of all CPUs together, from the text of /proc/stat. */
export function cpuTimesOfProcStat(stat: string): CpuTimes {
  const fields = /^cpu\s+(.+)$/m.exec(stat)?.[1]?.trim().split(/\s+/).map(Number);
  if (!fields || fields.length < 8 || fields.some((n) => !Number.isFinite(n)))
    throw new Error("unreadable /proc/stat");
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = fields;
  const total = user + nice + system + idle + iowait + irq + softirq + steal;
  return { busy: total - idle - iowait, total, user: user + nice, system, irq: irq + softirq, steal };
}

/** Percent of all cores spent in each kind of time between two readings. */
export function cpuShares(before: CpuTimes, after: CpuTimes): CpuTimes {
  const total = Math.max(1, after.total - before.total);
  const pct = (k: keyof CpuTimes): number => (100 * (after[k] - before[k])) / total;
  return {
    busy: pct("busy"),
    total: 100,
    user: pct("user"),
    system: pct("system"),
    irq: pct("irq"),
    steal: pct("steal"),
  };
}

/** A V8 .cpuprofile, as much of it as the summary reads. */
export interface CpuProfile {
  readonly nodes: readonly {
    readonly id: number;
    readonly hitCount?: number;
    readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  }[];
  readonly samples?: readonly number[];
}

export interface ProfileEntry {
  /** `function (file:line)`, or V8's pseudo-frames such as `(garbage collector)`. */
  readonly frame: string;
  /** Share of all samples spent in this frame itself (self time). */
  readonly percent: number;
}

/** The frames with the most self time, and the same grouped by source file (or pseudo-frame). */
export function profileHotspots(
  profile: CpuProfile,
  top = 15,
): { readonly frames: ProfileEntry[]; readonly files: ProfileEntry[]; readonly samples: number } {
  const hits = new Map<number, number>();
  if (profile.samples && profile.samples.length > 0) {
    for (const id of profile.samples) hits.set(id, (hits.get(id) ?? 0) + 1);
  } else {
    for (const n of profile.nodes) hits.set(n.id, n.hitCount ?? 0);
  }
  const byFrame = new Map<string, number>();
  const byFile = new Map<string, number>();
  let total = 0;
  for (const n of profile.nodes) {
    const h = hits.get(n.id) ?? 0;
    if (h === 0) continue;
    total += h;
    const { functionName, url, lineNumber } = n.callFrame;
    const file = url ? shortUrl(url) : `(${functionName || "anonymous"})`.replace(/^\(\((.*)\)\)$/, "($1)");
    const frame = url ? `${functionName || "(anonymous)"} (${file}:${lineNumber + 1})` : file;
    byFrame.set(frame, (byFrame.get(frame) ?? 0) + h);
    byFile.set(file, (byFile.get(file) ?? 0) + h);
  }
  const rank = (m: Map<string, number>): ProfileEntry[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([frame, h]) => ({ frame, percent: total > 0 ? (100 * h) / total : 0 }));
  return { frames: rank(byFrame), files: rank(byFile), samples: total };
}

/** node:internal/… stays; project files are shown from dist/ on; node_modules from the package on. */
function shortUrl(url: string): string {
  const path = url.replace(/^file:\/\//, "");
  const modules = path.lastIndexOf("/node_modules/");
  if (modules >= 0) return path.slice(modules + "/node_modules/".length);
  const dist = path.indexOf("/dist/");
  return dist >= 0 ? path.slice(dist + "/dist/".length) : path;
}

/** A markdown table (pipes, a separator row). */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

export const formatMs = (us: number): string => (Number.isFinite(us) ? `${(us / 1000).toFixed(3)} ms` : "—");
export const formatGbps = (bps: number): string => `${(bps / 1e9).toFixed(2)} Gbit/s`;
export const formatMb = (kb: number): string => `${(kb / 1024).toFixed(1)} MB`;
