// Where a whole machine's CPU goes while the ztunnels carry one stream, from `perf record -a`
// samples: the pure part of `ztunnel.bench.ts --profile machine`. The point is a bound, not a
// hotspot list. When every core is busy, throughput is the machine's CPU divided by the CPU each
// byte costs; taking a share of that cost away can raise it by no more than that share. So the
// split says how far any change confined to the ztunnels' own code could move the figure.

/** One line of `perf report -n --no-children --sort pid,dso,sym -g none -t ';' --stdio`. */
export interface PerfRow {
  readonly samples: number;
  readonly pid: number;
  readonly command: string;
  /** Shared object: `[kernel.kallsyms]`, `node`, `libc.so.6`, `[JIT] tid N`, … */
  readonly dso: string;
  readonly symbol: string;
}

/** `perf report` printed something this reader does not know. */
export class PerfReportError extends Error {
  override readonly name = "PerfReportError";
}

/** The sample rows of `perf report` output as above; header and comment lines are skipped. */
export function parsePerfReport(text: string): PerfRow[] {
  const rows: PerfRow[] = [];
  for (const [i, line] of text.split("\n").entries()) {
    if (line.trim() === "" || line.startsWith("#")) continue;
    const cells = line.split(";").map((c) => c.trim());
    // Overhead; Samples; Pid:Command; Shared Object; Symbol (which may itself hold a ';').
    const [, samplesText, pidCommand, dso, ...symbolParts] = cells;
    const pidMatch = /^(-?\d+):(.*)$/.exec(pidCommand ?? "");
    const samples = Number(samplesText);
    if (!pidMatch || dso === undefined || !Number.isInteger(samples))
      throw new PerfReportError(
        `perf report line ${i + 1} is not "overhead;samples;pid:command;dso;symbol": ${line}`,
      );
    rows.push({
      samples,
      pid: Number(pidMatch[1]),
      command: pidMatch[2] ?? "",
      dso,
      symbol: symbolParts.join(";").replace(/^\[[.k]\]\s*/, ""),
    });
  }
  return rows;
}

const KERNEL_DSO = "[kernel.kallsyms]";
// OpenSSL is linked into the node binary: its symbols are told apart by name (AES-GCM, the
// TLS record layer, its EVP and BIO plumbing, its error and atomics helpers).
const OPENSSL_SYMBOL = /aes|gcm|ghash|^EVP_|^BIO_|ssl|^tls1|^CRYPTO_|^ossl_|^OPENSSL_|^ERR_/i;
// The idle loop of a core: the hypervisor halt, or the kernel's own idle routines.
const IDLE_SYMBOL = /halt|idle|mwait|poll_idle/;

/** Samples by where they were spent; the fields add up to `total`. */
export interface MachineCpuSplit {
  readonly total: number;
  /** The ztunnel processes in OpenSSL: the TLS records and their AES-GCM. */
  readonly ztunnelOpenssl: number;
  /** The ztunnel processes in the rest of user space: V8, JavaScript, Node's C++, libc. */
  readonly ztunnelUser: number;
  /** The kernel in the ztunnels' context: their syscalls, and the packet work a send runs. */
  readonly ztunnelKernel: number;
  /** The load generators (client and server), user and kernel. */
  readonly load: number;
  /** Every other process and kernel thread, and interrupts taken on an idle core. */
  readonly other: number;
  readonly idle: number;
  /** `other` by command (kernel threads such as ksoftirqd carry packet work of any process). */
  readonly otherByCommand: ReadonlyMap<string, number>;
}

export function splitMachineCpu(
  rows: readonly PerfRow[],
  who: { readonly ztunnelPids: readonly number[]; readonly loadCommands: readonly string[] },
): MachineCpuSplit {
  const split = { total: 0, ztunnelOpenssl: 0, ztunnelUser: 0, ztunnelKernel: 0, load: 0, other: 0, idle: 0 };
  const otherByCommand = new Map<string, number>();
  for (const r of rows) {
    split.total += r.samples;
    if (who.ztunnelPids.includes(r.pid)) {
      if (r.dso === KERNEL_DSO) split.ztunnelKernel += r.samples;
      else if (OPENSSL_SYMBOL.test(r.symbol)) split.ztunnelOpenssl += r.samples;
      else split.ztunnelUser += r.samples;
    } else if (who.loadCommands.includes(r.command)) split.load += r.samples;
    else if (r.pid === 0 && IDLE_SYMBOL.test(r.symbol)) split.idle += r.samples;
    else {
      split.other += r.samples;
      // ksoftirqd/0 and ksoftirqd/1 are one kind of work.
      const command = r.command.replace(/\/\d+$/, "");
      otherByCommand.set(command, (otherByCommand.get(command) ?? 0) + r.samples);
    }
  }
  return { ...split, otherByCommand };
}

/** Kinds of kernel work, named by the symbols that do them (first match wins). */
export const KERNEL_WORK_KINDS: readonly { readonly kind: string; readonly symbol: RegExp }[] = [
  { kind: "netfilter and conntrack", symbol: /^(nf_|nft_|__nf_|xt_|ipt_|nf_conntrack|tproxy)/ },
  { kind: "routing and policy rules", symbol: /fib|^ip_route|^_*rt_|^_*dst_|l3mdev/ },
  { kind: "VXLAN and UDP (the redirect tunnels)", symbol: /vxlan|udp|tnl|tunnel/ },
  { kind: "TCP", symbol: /^_*tcp/ },
  { kind: "copies to and from user space", symbol: /copy_(to|from)_iter|copy_user|check_object_size/ },
];

/** The kernel samples of the given processes, by kind (KERNEL_WORK_KINDS, then "the rest"). */
export function kernelWorkOf(rows: readonly PerfRow[], pids: readonly number[]): Map<string, number> {
  const kinds = new Map<string, number>([
    ...KERNEL_WORK_KINDS.map((k) => [k.kind, 0] as const),
    ["the rest", 0],
  ]);
  for (const r of rows) {
    if (r.dso !== KERNEL_DSO || !pids.includes(r.pid)) continue;
    const kind = KERNEL_WORK_KINDS.find((k) => k.symbol.test(r.symbol))?.kind ?? "the rest";
    kinds.set(kind, (kinds.get(kind) ?? 0) + r.samples);
  }
  return kinds;
}

/**
 * The most a CPU-bound run could carry if `freed` samples' worth of work cost nothing and every
 * core were kept busy: the same bytes over the remaining work, scaled to the whole machine.
 */
export function throughputIfFreed(bitsPerSecond: number, split: MachineCpuSplit, freed: number): number {
  const remaining = split.total - split.idle - freed;
  if (remaining <= 0) return Number.POSITIVE_INFINITY;
  return (bitsPerSecond * split.total) / remaining;
}
