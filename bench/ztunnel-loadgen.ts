// Open-loop request/response load generator, run inside a client pod's namespace:
//
//   node ztunnel-loadgen.js --host IP --port N [--rate 1000] [--seconds 10] [--warmup 1]
//                           [--size 1024] [--connections 1] [--drain-ms 5000]
//
// Request i is due at start + i/rate, whatever happened to earlier ones (no coordinated omission):
// its latency is measured from that due time to the arrival of the last byte of its echo, with
// process.hrtime. Requests go round-robin over persistent connections; the server echoes bytes, so
// every `size` bytes back complete the oldest outstanding request of that connection. Prints one
// JSON line (LoadResult) and exits 0, or 1 when a connection failed.
//
// The clock: setTimeout has millisecond resolution, as coarse as the 1 ms between requests, and
// spinning would take a core from the proxies being measured. A worker thread sleeps until each
// due time with Atomics.wait (sub-millisecond timeouts) and posts a message, which wakes the main
// loop at once; the main thread then sends everything that is due. What lateness remains is
// measured and reported (lagUs) — and included in the latency, as it must be.
import net from "node:net";
import { Worker } from "node:worker_threads";
import { summarize } from "./ztunnel-stats.js";
import type { LatencySummary } from "./ztunnel-stats.js";

export interface LoadResult {
  readonly rate: number;
  readonly seconds: number;
  readonly connections: number;
  readonly size: number;
  /** Measured requests (the warm-up excluded). */
  readonly requests: number;
  /** Measured requests without a complete answer when the run ended. */
  readonly lost: number;
  /** Due time → answer (µs): what a caller on that schedule would have seen. */
  readonly latencyUs: LatencySummary;
  /** Actual send → answer (µs). */
  readonly rttUs: LatencySummary;
  /** Due time → actual send (µs): the generator's own lateness (timer granularity). */
  readonly lagUs: LatencySummary;
  readonly error?: string;
}

const flag = (name: string, fallback?: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  const raw = i > 0 ? process.argv[i + 1] : undefined;
  const value = raw === undefined ? fallback : Number(raw);
  if (value === undefined || !Number.isFinite(value)) {
    process.stderr.write(`loadgen: --${name} needs a number\n`);
    process.exit(2);
  }
  return value;
};
const hostIndex = process.argv.indexOf("--host");
const host = hostIndex > 0 ? process.argv[hostIndex + 1] : undefined;
if (!host) {
  process.stderr.write("loadgen: --host is required\n");
  process.exit(2);
}
const port = flag("port");
const rate = flag("rate", 1000);
const seconds = flag("seconds", 10);
const warmup = flag("warmup", 1);
const size = flag("size", 1024);
const connections = flag("connections", 1);
const drainMs = flag("drain-ms", 5000);

interface Conn {
  readonly socket: net.Socket;
  /** Request indexes in the order they were written; `head` is the oldest unanswered. */
  readonly outstanding: number[];
  head: number;
  /** Echoed bytes not yet making up a whole answer. */
  partial: number;
}

const base = process.hrtime.bigint();
const now = (): number => Number(process.hrtime.bigint() - base); // ns since start; exact below 2^53

// CommonJS, run with eval: workerData { base (bigint ns), start (ns after base), intervalNs, total }.
// process.hrtime is the one monotonic clock of the process, so both threads read the same time.
const METRONOME = `
const { parentPort, workerData } = require("node:worker_threads");
const { base, start, intervalNs, total } = workerData;
const cell = new Int32Array(new SharedArrayBuffer(4));
for (let i = 0; i < total; i++) {
  const waitNs = start + i * intervalNs - Number(process.hrtime.bigint() - base);
  if (waitNs > 0) Atomics.wait(cell, 0, 0, waitNs / 1e6);
  parentPort.postMessage(i);
}
`;

async function main(): Promise<void> {
  const payload = Buffer.alloc(size, 0x61);
  const total = Math.round(rate * (warmup + seconds));
  const warmupCount = Math.round(rate * warmup);
  const intervalNs = 1e9 / rate;
  const due = new Float64Array(total);
  const sent = new Float64Array(total).fill(NaN);
  const answered = new Float64Array(total).fill(NaN);
  let completed = 0;
  let failure: string | undefined;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((r) => (finish = r));

  const conns: Conn[] = await Promise.all(
    Array.from(
      { length: connections },
      () =>
        new Promise<Conn>((resolve, reject) => {
          const socket = net.connect({ host, port, noDelay: true });
          socket.once("connect", () => resolve({ socket, outstanding: [], head: 0, partial: 0 }));
          socket.once("error", reject);
        }),
    ),
  );
  for (const c of conns) {
    c.socket.on("data", (chunk: Buffer) => {
      const t = now();
      c.partial += chunk.length;
      while (c.partial >= size && c.head < c.outstanding.length) {
        c.partial -= size;
        answered[c.outstanding[c.head++] as number] = t;
        completed += 1;
      }
      if (completed === total) finish();
    });
    c.socket.on("error", (e) => {
      failure ??= `connection: ${e.message}`;
      finish();
    });
    c.socket.on("close", () => {
      if (completed < total) {
        failure ??= "a connection closed before every answer arrived";
        finish();
      }
    });
  }

  const start = now() + 50e6; // the worker's start-up comes first
  for (let i = 0; i < total; i++) due[i] = start + i * intervalNs;
  let next = 0;
  const tick = (): void => {
    let t = now();
    while (next < total && (due[next] as number) <= t && failure === undefined) {
      const i = next++;
      const c = conns[i % connections] as Conn;
      c.outstanding.push(i);
      sent[i] = t;
      c.socket.write(payload);
      t = now();
    }
    if (next === total) setTimeout(finish, drainMs).unref();
  };
  const metronome = new Worker(METRONOME, { eval: true, workerData: { base, start, intervalNs, total } });
  metronome.on("message", tick);
  metronome.on("error", (e) => {
    failure ??= `metronome: ${e.message}`;
    finish();
  });
  await finished;
  await metronome.terminate();

  const measured = total - warmupCount;
  const latency = new Float64Array(measured);
  const rtt = new Float64Array(measured);
  const lag = new Float64Array(measured);
  let lost = 0;
  for (let k = 0; k < measured; k++) {
    const i = warmupCount + k;
    const a = answered[i] as number;
    if (Number.isNaN(a)) lost += 1;
    latency[k] = (a - (due[i] as number)) / 1e3;
    rtt[k] = (a - (sent[i] as number)) / 1e3;
    lag[k] = ((sent[i] as number) - (due[i] as number)) / 1e3;
  }
  const result: LoadResult = {
    rate,
    seconds,
    connections,
    size,
    requests: measured,
    lost,
    latencyUs: summarize(latency),
    rttUs: summarize(rtt),
    lagUs: summarize(lag),
    ...(failure ? { error: failure } : {}),
  };
  process.stdout.write(JSON.stringify(result) + "\n");
  for (const c of conns) c.socket.destroy();
  process.exitCode = failure ? 1 : 0;
}

main().catch((err: unknown) => {
  process.stderr.write(`loadgen: ${(err as Error).message}\n`);
  process.exit(1);
});
