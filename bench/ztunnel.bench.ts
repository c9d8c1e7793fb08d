// Benchmark of the ztunnel as it runs in production: two `offmesh ztunnel run` processes, one in
// the ztunnel pod of each node of a two-node mesh (test/support/meshnet.ts), carrying a meshed
// client's traffic to a meshed server over HBONE. Each figure is set against a baseline measured in
// the same run on the same machine: the same path between the non-meshed pods of the same nodes
// (plain-client → plain-server: same veths, nodes and wire, minus capture and the proxies). Two
// reference columns put the plain pods through two C relays (socat) in the ztunnel pods, plain TCP
// and with TLS 1.3 between them: what two userspace proxies, and their encryption, cost here.
//
//   npm run build && node dist/bench/ztunnel.bench.js [--quick] [--profile throughput|latency|machine]
//
// - throughput: iperf3, one stream, 10 s;
// - latency: 1 KB request / 1 KB echo at a fixed 1,000 req/s for 10 s over one connection (and over
//   ten), open loop, measured from each request's due time after 5 s of the same load unmeasured
//   (ztunnel-loadgen.ts);
// - memory: RSS of each ztunnel idle, 1 s and SETTLE_SECONDS after start and one connection; with
//   1,000 connections held open through them (ztunnel-hold.ts); right after their last load and
//   SETTLE_SECONDS later.
// Appends a dated section to bench/results/ztunnel.md. --quick runs 3 s tests and 200 connections
// and records nothing. --profile throughput|latency runs one scenario through ztunnels started with
// --cpu-prof and prints (and records) where their CPU time goes; --profile machine samples the whole
// machine with `perf record -a` during one proxied iperf3 stream and records how far any change to
// the ztunnels' own code could raise it (ztunnel-machine-cpu.ts).
import { execFile, spawnSync } from "node:child_process";
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, loadavg, release, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { createMeshNet } from "../test/support/meshnet.js";
import type { MeshNet } from "../test/support/meshnet.js";
import type { NetnsProcess } from "../test/support/meshnet-process.js";
import { fromRoot } from "../test/support/paths.js";
import { startZtunnelProcess } from "../test/support/ztunnel-process.js";
import type { ZtunnelProcess } from "../test/support/ztunnel-process.js";
import { ZTUNNEL_NODE_FLAGS } from "../src/ztunnel/daemon.js";
import type { LoadResult } from "./ztunnel-loadgen.js";
import { kernelWorkOf, parsePerfReport, splitMachineCpu, throughputIfFreed } from "./ztunnel-machine-cpu.js";
import {
  cpuTicksOfStat,
  cpuShares,
  cpuTimesOfProcStat,
  formatGbps,
  formatMb,
  formatMs,
  markdownTable,
  parseIperfJson,
  profileHotspots,
} from "./ztunnel-stats.js";
import type { CpuProfile, CpuTimes, IperfResult } from "./ztunnel-stats.js";

const QUICK = process.argv.includes("--quick");
const profileIndex = process.argv.indexOf("--profile");
const PROFILE = profileIndex > 0 ? process.argv[profileIndex + 1] : undefined;
const SECONDS = QUICK ? 3 : 10;
const HOLD = QUICK ? 200 : 1000;
const RATE = 1000;
// Unmeasured load before each latency run, the same for every path. A proxy that has just started
// (or just carried iperf3) is still compiling its request path: measured after 1 s, the ztunnels'
// p99 was 1.4–1.7 ms in a first run and 0.8–1.0 ms in a second; after 5 s, 0.7–0.8 ms in both.
// A node proxy runs for days, so the warm figure is the one that describes it.
const WARMUP_SECONDS = QUICK ? 2 : 5;
const SIZE = 1024;
const ECHO_PORT = 9000;
const GREETER_PORT = 8080;
const IPERF_PORT = 5201;
const RELAY_IPERF_PORT = 7201;
const RELAY_ECHO_PORT = 7900;
const TLS_RELAY_IPERF_PORT = 7301;
const TLS_RELAY_ECHO_PORT = 7901;
const TARGET = { throughputRatio: 0.5, addedP99Ms: 0.5, idleRssMb: 64, heldRssMb: 128 };
// How long a ztunnel is left without traffic before its "settled" idle RSS is read: long enough
// for V8's memory reducer (~8 s after the last activity) and the ztunnel's idle trimming (quiet
// ticks 1, 2 and 4 of 5 s) to have run.
const SETTLE_SECONDS = QUICK ? 12 : 25;

const here = fileURLToPath(new URL(".", import.meta.url));
const LOADGEN = join(here, "ztunnel-loadgen.js");
const ECHO = join(here, "ztunnel-echo.js");
const HOLDER = join(here, "ztunnel-hold.js");
const RESULTS = fromRoot("bench/results/ztunnel.md");

const run = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The benchmark could not measure what it set out to. */
class BenchError extends Error {
  override readonly name = "BenchError";
}

// ---- machine and tools (before the mesh exists, so synchronous calls block nobody) ----

interface Machine {
  readonly cores: number;
  readonly cpu: string;
  readonly kernel: string;
  readonly node: string;
  readonly clockTicks: number;
}

function describeMachine(): Machine {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const ticks = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim());
  return {
    cores: availableParallelism(),
    cpu: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown CPU",
    kernel: release(),
    node: process.version,
    clockTicks: Number.isFinite(ticks) && ticks > 0 ? ticks : 100,
  };
}

/** A Debian package's command, installed when missing (the benchmark runs as root). */
function ensureTool(command: string, pkg: string): void {
  if (spawnSync(command, ["-V"]).error === undefined) return;
  console.log(`${command} is missing: apt-get install -y ${pkg}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const install = (): boolean =>
    spawnSync("apt-get", ["install", "-y", "-qq", pkg], { stdio: "inherit", env }).status === 0;
  if (install()) return;
  spawnSync("apt-get", ["update", "-qq"], { stdio: "inherit", env });
  if (!install()) throw new BenchError(`cannot install ${pkg} (apt-get install -y ${pkg} failed)`);
}

// ---- processes ----

const procStatus = (pid: number, field: string): number => {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m?.[1]) throw new BenchError(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
};
const cpuTicks = (pid: number): { user: number; system: number } =>
  cpuTicksOfStat(readFileSync(`/proc/${pid}/stat`, "utf8"));

const machineCpu = (): CpuTimes => cpuTimesOfProcStat(readFileSync("/proc/stat", "utf8"));

/** How the whole machine's time was spent since `before` (percent of all cores). */
const busySince = (before: CpuTimes): CpuTimes => cpuShares(before, machineCpu());

/** How busy the whole machine is over `ms`: others' work skews every figure. */
async function machineBusyPercent(ms: number): Promise<number> {
  const before = machineCpu();
  await sleep(ms);
  return busySince(before).busy;
}

/** Raise a process's open-files limit (soft and hard) when it is below `n`; root may. */
async function ensureOpenFiles(z: ZtunnelProcess, n: number): Promise<void> {
  if (z.openFilesLimit() >= n) return;
  await run("prlimit", ["--pid", String(z.pid), `--nofile=${n}:${n}`]);
  if (z.openFilesLimit() < n)
    throw new BenchError(`cannot raise the open-files limit of pid ${z.pid} to ${n}`);
}

/** A node script of this folder in a pod, with room for many sockets (prlimit execs node). */
function spawnScript(mesh: MeshNet, pod: string, script: string, args: readonly string[]): NetnsProcess {
  return mesh.spawn(pod, "prlimit", ["--nofile=16384:16384", process.execPath, script, ...args]);
}

async function startEcho(mesh: MeshNet, pod: string): Promise<NetnsProcess> {
  const p = spawnScript(mesh, pod, ECHO, ["--port", String(ECHO_PORT)]);
  await p.waitForOutput(/^listening \d+$/m, 10_000);
  return p;
}

// ---- measurements ----

/** iperf3 from pod `from` to a server in pod `to`, reached at `via` (default: `to`'s own address). */
async function iperf(mesh: MeshNet, from: string, to: string, via?: Endpoint): Promise<IperfResult> {
  const target = via ?? { host: mesh.pod(to).ip, port: IPERF_PORT };
  const server = mesh.spawn(to, "iperf3", ["-s", "-1", "-p", String(IPERF_PORT), "--forceflush"]);
  try {
    await server.waitForOutput(/Server listening/, 10_000);
    const res = await mesh.exec(
      from,
      "iperf3",
      ["-c", target.host, "-p", String(target.port), "-t", String(SECONDS), "-J"],
      { timeoutMs: SECONDS * 1000 + 30_000, allowFail: true },
    );
    return parseIperfJson(res.stdout);
  } finally {
    await server.stop("SIGKILL");
  }
}

async function load(
  mesh: MeshNet,
  from: string,
  to: string,
  connections: number,
  via?: Endpoint,
): Promise<LoadResult> {
  const target = via ?? { host: mesh.pod(to).ip, port: ECHO_PORT };
  const res = await mesh.exec(
    from,
    process.execPath,
    [
      LOADGEN,
      ...["--host", target.host, "--port", String(target.port), "--rate", String(RATE)],
      ...["--seconds", String(SECONDS), "--warmup", String(WARMUP_SECONDS), "--size", String(SIZE)],
      ...["--connections", String(connections)],
    ],
    { timeoutMs: (SECONDS + 1) * 1000 + 30_000, allowFail: true },
  );
  const line = res.stdout.trim().split("\n").pop() ?? "";
  let result: LoadResult;
  try {
    result = JSON.parse(line) as LoadResult;
  } catch {
    throw new BenchError(`load generator ${from} → ${to} (exit ${res.code}): ${res.stderr || res.stdout}`);
  }
  if (result.error) throw new BenchError(`load generator ${from} → ${to}: ${result.error}`);
  return result;
}

interface Endpoint {
  readonly host: string;
  readonly port: number;
}

/** A throwaway certificate and key for the TLS reference relays (files in `dir`). */
interface RelayTls {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
}

/** A self-signed ECDSA P-256 certificate, as the ztunnels' are, made with the openssl command. */
function makeRelayTls(): RelayTls {
  const dir = mkdtempSync(join(tmpdir(), "offmesh-zbench-tls-"));
  const tls = { dir, cert: join(dir, "cert.pem"), key: join(dir, "key.pem") };
  const res = spawnSync(
    "openssl",
    [
      ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
      ...["-subj", "/CN=offmesh-bench-relay", "-days", "1", "-keyout", tls.key, "-out", tls.cert],
    ],
    { encoding: "utf8" },
  );
  if (res.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new BenchError(`openssl req (relay certificate) failed: ${res.stderr || res.error?.message}`);
  }
  return tls;
}

/**
 * The reference proxies: two relays in C (socat), one in each node's ztunnel pod, on the same veths
 * and wire the ztunnels use, from the plain client to the plain server; no HTTP/2, no capture.
 * Plain, they carry TCP: what any pair of userspace proxies costs on this machine. With `tls`, the
 * hop between them is TLS (OpenSSL's defaults: TLS 1.3, AES-256-GCM first, as the ztunnels
 * prefer; no certificate checks): what the encryption alone costs. Returns where the client
 * connects to reach `targetPort` of plain-server through both.
 */
function startReferenceRelays(
  mesh: MeshNet,
  targetPort: number,
  relayPort: number,
  tls?: RelayTls,
): { readonly entry: Endpoint; readonly listening: Endpoint[]; readonly processes: NetnsProcess[] } {
  const first = mesh.ztunnelOn("single1");
  const second = mesh.ztunnelOn("single2");
  // fork: one child per connection (iperf3 opens two); the process group stops with the parent.
  const relay = (pod: string, listen: string, to: string): NetnsProcess =>
    mesh.spawn(pod, "socat", ["-b", String(256 * 1024), listen, to]);
  const processes = [
    relay(
      second.name,
      tls
        ? `OPENSSL-LISTEN:${relayPort},bind=${second.ip},reuseaddr,fork,nodelay,cert=${tls.cert},key=${tls.key},verify=0`
        : `TCP-LISTEN:${relayPort},bind=${second.ip},reuseaddr,fork,nodelay`,
      `TCP:${mesh.pod("plain-server").ip}:${targetPort},nodelay`,
    ),
    relay(
      first.name,
      `TCP-LISTEN:${relayPort},bind=${first.ip},reuseaddr,fork,nodelay`,
      tls ? `OPENSSL:${second.ip}:${relayPort},nodelay,verify=0` : `TCP:${second.ip}:${relayPort},nodelay`,
    ),
  ];
  const entry = { host: first.ip, port: relayPort };
  return { entry, listening: [{ host: second.ip, port: relayPort }, entry], processes };
}

/** Wait until a TCP connect to `to` from pod `from` is answered (a listener is up). */
async function waitForListener(mesh: MeshNet, from: string, to: Endpoint): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const probe = await mesh.probeTcp(from, to.host, to.port, { payload: "" });
    if (probe.outcome !== "refused") return;
    if (Date.now() > deadline) throw new BenchError(`nothing listens on ${to.host}:${to.port}`);
    await sleep(100);
  }
}

interface Held {
  readonly rssKb: readonly [number, number];
  readonly tracked: readonly [number, number];
}

/** Hold HOLD connections client → server open through the ztunnels and read their RSS meanwhile. */
async function holdConnections(mesh: MeshNet, zts: readonly [ZtunnelProcess, ZtunnelProcess]): Promise<Held> {
  const holder = spawnScript(mesh, "client", HOLDER, [
    ...["--host", mesh.pod("server").ip, "--port", String(ECHO_PORT)],
    ...["--count", String(HOLD), "--parallel", "50", "--timeout-ms", "150000"],
  ]);
  try {
    const m = await holder.waitForOutput(/^held (.*)$/m, 160_000);
    const held = JSON.parse(m[1] ?? "{}") as { held: number; failed: number; firstError?: string };
    if (held.held !== HOLD)
      throw new BenchError(`held ${held.held} of ${HOLD} connections: ${held.firstError ?? "?"}`);
    await sleep(1_000); // let the last handshakes' garbage settle before reading RSS
    const tracked = await Promise.all(zts.map(openStreams));
    const rss = zts.map((z) => z.rssKb());
    holder.child.stdin?.write("close\n");
    await holder.waitForOutput(/^closed$/m, 60_000);
    return { rssKb: [rss[0] ?? NaN, rss[1] ?? NaN], tracked: [tracked[0] ?? NaN, tracked[1] ?? NaN] };
  } finally {
    await holder.stop("SIGKILL");
  }
}

async function openStreams(z: ZtunnelProcess): Promise<number> {
  const dump = await z.configDump();
  return Number((dump["connections"] as { open?: number } | undefined)?.open ?? NaN);
}

/** Wait until `z` logged a connection to hboneAddr that carried at least `bytes` (at its close). */
async function carried(z: ZtunnelProcess, hboneAddr: string, bytes: number): Promise<number> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const line = z
      .accessLog()
      .find(
        (l) =>
          l["dst.hbone_addr"] === hboneAddr && Number(l["bytes_sent"]) + Number(l["bytes_recv"]) >= bytes,
      );
    if (line) return Number(line["bytes_sent"]) + Number(line["bytes_recv"]);
    if (Date.now() > deadline)
      throw new BenchError(
        `${z.node}'s ztunnel logged no connection to ${hboneAddr} carrying ≥ ${bytes} bytes`,
      );
    await sleep(50);
  }
}

/** Bare node's idle RSS: the floor any node process pays. */
async function bareNodeRssKb(mesh: MeshNet): Promise<number> {
  const p = mesh.spawn("plain-client", process.execPath, [
    "-e",
    "setInterval(() => {}, 1000); console.log('up')",
  ]);
  try {
    await p.waitForOutput(/^up$/m, 10_000);
    await sleep(500);
    return procStatus(p.pid, "VmRSS");
  } finally {
    await p.stop("SIGKILL");
  }
}

// ---- the run ----

/** Percent of one core a process spent in user space and in the kernel. */
interface ProcessCpu {
  readonly user: number;
  readonly system: number;
}

interface RelayedResults {
  readonly throughput: IperfResult;
  readonly latency1: LoadResult;
  readonly latency10: LoadResult;
}

interface Results {
  readonly machine: Machine;
  /** The machine's CPU use with the mesh up but before any load of ours (other processes). */
  readonly busyBeforePercent: number;
  /** 1-minute load average when the measurements started and ended. */
  readonly loadAverage: readonly [number, number];
  /** 1 s after start and one connection. */
  readonly idleRssKb: readonly [number, number];
  /** SETTLE_SECONDS after that connection. */
  readonly settledIdleRssKb: readonly [number, number];
  readonly bareNodeRssKb: number;
  readonly held: Held;
  readonly throughput: { readonly proxied: IperfResult; readonly direct: IperfResult };
  /** Percent of one core each ztunnel used during the proxied iperf3 run. */
  readonly iperfCpuPercent: readonly [ProcessCpu, ProcessCpu];
  /** Percent of all cores busy during the direct and the proxied iperf3 runs. */
  readonly iperfMachineBusy: { readonly direct: CpuTimes; readonly proxied: CpuTimes };
  readonly latency1: { readonly proxied: LoadResult; readonly direct: LoadResult };
  readonly latency10: { readonly proxied: LoadResult; readonly direct: LoadResult };
  /** The same measurements through two C relays (startReferenceRelays), plain and with TLS between them. */
  readonly reference: { readonly plain: RelayedResults; readonly tls: RelayedResults };
  readonly afterLoadRssKb: readonly [number, number];
  /** SETTLE_SECONDS after the last load. */
  readonly settledAfterLoadRssKb: readonly [number, number];
  readonly peakRssKb: readonly [number, number];
}

async function startZtunnels(
  mesh: MeshNet,
  nodeArgs: readonly string[] = [],
): Promise<[ZtunnelProcess, ZtunnelProcess]> {
  const opts = { drainSeconds: 5, nodeArgs };
  const zts = await Promise.all([
    startZtunnelProcess(mesh, "single1", opts),
    startZtunnelProcess(mesh, "single2", opts),
  ]);
  for (const z of zts) await ensureOpenFiles(z, HOLD * 4 + 1024);
  return zts;
}

async function measure(
  mesh: MeshNet,
  machine: Machine,
  zts: [ZtunnelProcess, ZtunnelProcess],
): Promise<Results> {
  const [zt1, zt2] = zts;
  const server = mesh.pod("server");
  const client = mesh.pod("client");
  const loadAtStart = loadavg()[0] ?? NaN;
  const busyBeforePercent = await machineBusyPercent(2_000);
  console.log(`machine busy before the run: ${busyBeforePercent.toFixed(0)}%, load average ${loadAtStart}`);

  console.log("memory: idle after one connection");
  const greeter = await mesh.serveTcp("server", GREETER_PORT);
  try {
    const probe = await mesh.probeTcp("client", server.ip, GREETER_PORT, { payload: "one" });
    if (probe.outcome !== "replied" || probe.greeting?.remoteAddress !== client.ip)
      throw new BenchError(`the first meshed connection failed: ${JSON.stringify(probe)}`);
    await zt1.waitForAccessLog({ direction: "outbound", "dst.hbone_addr": `${server.ip}:${GREETER_PORT}` });
  } finally {
    await greeter.stop();
  }
  const connected = Date.now();
  await sleep(1_000);
  const idleRssKb: [number, number] = [zt1.rssKb(), zt2.rssKb()];
  const bareNode = await bareNodeRssKb(mesh);
  console.log(`memory: idle, settled (${SETTLE_SECONDS} s without traffic)`);
  await sleep(connected + SETTLE_SECONDS * 1000 - Date.now());
  const settledIdleRssKb: [number, number] = [zt1.rssKb(), zt2.rssKb()];

  console.log(`memory: ${HOLD} connections held open`);
  const held = await holdConnections(mesh, zts);

  console.log(`throughput: iperf3, one stream, ${SECONDS} s, direct then through the ztunnels`);
  const machineBefore = machineCpu();
  const direct = await iperf(mesh, "plain-client", "plain-server");
  const directBusy = busySince(machineBefore);
  const cpuBefore = [cpuTicks(zt1.pid), cpuTicks(zt2.pid)] as const;
  const proxiedBefore = machineCpu();
  const started = Date.now();
  const proxied = await iperf(mesh, "client", "server");
  const wallS = (Date.now() - started) / 1000;
  const proxiedBusy = busySince(proxiedBefore);
  const corePercent = (pid: number, before: { user: number; system: number }): ProcessCpu => {
    const now = cpuTicks(pid);
    const pct = (ticks: number): number => (ticks / machine.clockTicks / wallS) * 100;
    return { user: pct(now.user - before.user), system: pct(now.system - before.system) };
  };
  const iperfCpuPercent = [corePercent(zt1.pid, cpuBefore[0]), corePercent(zt2.pid, cpuBefore[1])] as const;
  await carried(zt1, `${server.ip}:${IPERF_PORT}`, proxied.bitsPerSecond / 8); // ≥ 1 s worth: it was proxied

  const relayTls = makeRelayTls();
  const allRelays: ReturnType<typeof startReferenceRelays>[] = [];
  const startRelays = (...args: Parameters<typeof startReferenceRelays>) => {
    const started = startReferenceRelays(...args);
    allRelays.push(started);
    return started;
  };
  let reference: Results["reference"];
  let latency1: Results["latency1"];
  let latency10: Results["latency10"];
  let afterLoad: { at: number; rssKb: [number, number] } | undefined;
  try {
    const relays = {
      plain: {
        iperf: startRelays(mesh, IPERF_PORT, RELAY_IPERF_PORT),
        echo: startRelays(mesh, ECHO_PORT, RELAY_ECHO_PORT),
      },
      tls: {
        iperf: startRelays(mesh, IPERF_PORT, TLS_RELAY_IPERF_PORT, relayTls),
        echo: startRelays(mesh, ECHO_PORT, TLS_RELAY_ECHO_PORT, relayTls),
      },
    };
    for (const r of allRelays)
      for (const hop of r.listening) await waitForListener(mesh, "plain-client", hop);
    console.log(`throughput: iperf3 through the reference relays (two socat processes, plain, then TLS)`);
    const relayedThroughput = await iperf(mesh, "plain-client", "plain-server", relays.plain.iperf.entry);
    const tlsRelayedThroughput = await iperf(mesh, "plain-client", "plain-server", relays.tls.iperf.entry);

    console.log(
      `latency: 1 KB at ${RATE} req/s for ${SECONDS} s, 1 and 10 connections: direct, proxied, relayed`,
    );
    latency1 = {
      direct: await load(mesh, "plain-client", "plain-server", 1),
      proxied: await load(mesh, "client", "server", 1),
    };
    latency10 = {
      direct: await load(mesh, "plain-client", "plain-server", 10),
      proxied: await load(mesh, "client", "server", 10),
    };
    // The ztunnels' last load: what they hold right after it, and a settled reading later.
    afterLoad = { at: Date.now(), rssKb: [zt1.rssKb(), zt2.rssKb()] };
    const relayedLoad = async (entry: Endpoint, throughput: IperfResult): Promise<RelayedResults> => ({
      throughput,
      latency1: await load(mesh, "plain-client", "plain-server", 1, entry),
      latency10: await load(mesh, "plain-client", "plain-server", 10, entry),
    });
    reference = {
      plain: await relayedLoad(relays.plain.echo.entry, relayedThroughput),
      tls: await relayedLoad(relays.tls.echo.entry, tlsRelayedThroughput),
    };
  } finally {
    for (const r of allRelays) for (const p of r.processes) await p.stop("SIGKILL");
    rmSync(relayTls.dir, { recursive: true, force: true });
  }
  await carried(zt1, `${server.ip}:${ECHO_PORT}`, SIZE * RATE * SECONDS);
  const plainSeen = [...zt1.accessLog(), ...zt2.accessLog()].filter((l) =>
    String(l["src.addr"]).startsWith(`${mesh.pod("plain-client").ip}:`),
  );
  if (plainSeen.length > 0) throw new BenchError("a direct (baseline) connection went through a ztunnel");
  if (!afterLoad) throw new BenchError("no reading after the proxied load");
  const afterLoadRssKb = afterLoad.rssKb;
  console.log(`memory: after the load, settled (${SETTLE_SECONDS} s without traffic)`);
  await sleep(afterLoad.at + SETTLE_SECONDS * 1000 - Date.now());

  return {
    machine,
    busyBeforePercent,
    loadAverage: [loadAtStart, loadavg()[0] ?? NaN],
    idleRssKb,
    settledIdleRssKb,
    bareNodeRssKb: bareNode,
    held,
    throughput: { proxied, direct },
    iperfCpuPercent,
    iperfMachineBusy: { direct: directBusy, proxied: proxiedBusy },
    latency1,
    latency10,
    reference,
    afterLoadRssKb,
    settledAfterLoadRssKb: [zt1.rssKb(), zt2.rssKb()],
    peakRssKb: [procStatus(zt1.pid, "VmHWM"), procStatus(zt2.pid, "VmHWM")],
  };
}

// ---- reporting ----

const yesNo = (ok: boolean): string => (ok ? "**yes**" : "**no**");
const cpuPair = (i: IperfResult): string =>
  `${i.senderCpuPercent?.toFixed(0) ?? "?"}% / ${i.receiverCpuPercent?.toFixed(0) ?? "?"}%`;
const processCpu = (c: ProcessCpu): string =>
  `${(c.user + c.system).toFixed(0)}% of a core (user ${c.user.toFixed(0)}%, system ${c.system.toFixed(0)}%)`;
const shares = (c: CpuTimes): string =>
  `${c.busy.toFixed(0)}% busy (user ${c.user.toFixed(0)}%, system ${c.system.toFixed(0)}%, irq+softirq ${c.irq.toFixed(0)}%, steal ${c.steal.toFixed(0)}%)`;
const signedMs = (us: number): string => `${us < 0 ? "−" : "+"}${formatMs(Math.abs(us))}`;
const pair = (kb: readonly [number, number]): string => `${formatMb(kb[0])} / ${formatMb(kb[1])}`;

function report(r: Results): { table: string; notes: string[]; verdict: string[] } {
  const ratio = r.throughput.proxied.bitsPerSecond / r.throughput.direct.bitsPerSecond;
  const relayedThroughput = (relayed: RelayedResults): string =>
    `${formatGbps(relayed.throughput.bitsPerSecond)} (${(relayed.throughput.bitsPerSecond / r.throughput.direct.bitsPerSecond).toFixed(2)}×)`;
  const added = (l: { proxied: LoadResult; direct: LoadResult }, q: "p50" | "p99" | "p999"): number =>
    l.proxied.latencyUs[q] - l.direct.latencyUs[q];
  const latencyRows = (
    label: string,
    l: { proxied: LoadResult; direct: LoadResult },
    relayed: readonly [plain: LoadResult, tls: LoadResult],
    withTarget: boolean,
  ) =>
    (["p50", "p99", "p999"] as const).map((q) => {
      const d = added(l, q);
      const targeted = withTarget && q === "p99";
      const viaRelays = (x: LoadResult): string =>
        `${formatMs(x.latencyUs[q])} (${signedMs(x.latencyUs[q] - l.direct.latencyUs[q])})`;
      return [
        `1 KB echo at ${RATE} req/s, ${label}: ${q === "p999" ? "p99.9" : q}`,
        formatMs(l.proxied.latencyUs[q]),
        formatMs(l.direct.latencyUs[q]),
        signedMs(d),
        viaRelays(relayed[0]),
        viaRelays(relayed[1]),
        targeted ? `added ≤ ${TARGET.addedP99Ms} ms` : "—",
        targeted ? yesNo(d / 1000 <= TARGET.addedP99Ms) : "—",
      ];
    });
  // The larger of the two ztunnels' RSS is what a target is held to.
  const maxMb = (kb: readonly [number, number]): number => Math.max(...kb) / 1024;
  // Columns as the table's; the comparison columns stay empty.
  const memoryRow = (
    label: string,
    kb: readonly [number, number],
    targetMb: number,
    direct = "—",
  ): string[] => [
    `${label}, single1 / single2`,
    pair(kb),
    direct,
    "—",
    "—",
    "—",
    `≤ ${targetMb} MB`,
    yesNo(maxMb(kb) <= targetMb),
  ];
  const idleMax = maxMb(r.idleRssKb);
  const settledMax = maxMb(r.settledIdleRssKb);
  const heldMax = maxMb(r.held.rssKb);
  const table = markdownTable(
    [
      "measurement",
      "through the ztunnels",
      "direct (plain pods)",
      "ratio / added",
      "reference: two plain C relays",
      "reference: two C relays, TLS between them",
      "target",
      "met",
    ],
    [
      [
        `iperf3, one stream, ${SECONDS} s`,
        formatGbps(r.throughput.proxied.bitsPerSecond),
        formatGbps(r.throughput.direct.bitsPerSecond),
        `${ratio.toFixed(2)}×`,
        relayedThroughput(r.reference.plain),
        relayedThroughput(r.reference.tls),
        `≥ ${TARGET.throughputRatio.toFixed(2)}×`,
        yesNo(ratio >= TARGET.throughputRatio),
      ],
      ...latencyRows(
        "1 connection",
        r.latency1,
        [r.reference.plain.latency1, r.reference.tls.latency1],
        true,
      ),
      ...latencyRows(
        "10 connections",
        r.latency10,
        [r.reference.plain.latency10, r.reference.tls.latency10],
        false,
      ),
      memoryRow(
        "RSS idle, 1 s after start + 1 connection",
        r.idleRssKb,
        TARGET.idleRssMb,
        `bare node ${formatMb(r.bareNodeRssKb)}`,
      ),
      memoryRow(
        `RSS idle, settled: ${SETTLE_SECONDS} s after start + 1 connection`,
        r.settledIdleRssKb,
        TARGET.idleRssMb,
      ),
      memoryRow(`RSS with ${HOLD} open connections`, r.held.rssKb, TARGET.heldRssMb),
    ],
  );
  const lat = (l: LoadResult): string =>
    `p99 ${formatMs(l.latencyUs.p99)}, send→echo p99 ${formatMs(l.rttUs.p99)}, generator lag p99 ${formatMs(l.lagUs.p99)}, lost ${l.lost}/${l.requests}`;
  const notes = [
    `Machine load: ${r.busyBeforePercent.toFixed(0)}% of all cores busy with other work just before the run (mesh up, no load of ours); 1-minute load average ${r.loadAverage[0].toFixed(2)} at the start, ${r.loadAverage[1].toFixed(2)} at the end.`,
    `iperf3 retransmits: through ${r.throughput.proxied.retransmits ?? "?"}, direct ${r.throughput.direct.retransmits ?? "?"}; ztunnel CPU during the proxied run: single1 ${processCpu(r.iperfCpuPercent[0])}, single2 ${processCpu(r.iperfCpuPercent[1])}; the whole machine (all ${r.machine.cores} cores) during the proxied run: ${shares(r.iperfMachineBusy.proxied)}; during the direct one: ${shares(r.iperfMachineBusy.direct)}; iperf3's own CPU (sender/receiver): through ${cpuPair(r.throughput.proxied)}, direct ${cpuPair(r.throughput.direct)}.`,
    `Latency detail, 1 connection — through: ${lat(r.latency1.proxied)}; direct: ${lat(r.latency1.direct)}.`,
    `Latency detail, 10 connections — through: ${lat(r.latency10.proxied)}; direct: ${lat(r.latency10.direct)}.`,
    `Reference relays (two socat processes, 256 KiB buffers, TCP_NODELAY, in the ztunnel pods; no HTTP/2, no capture), plain TCP: iperf3 retransmits ${r.reference.plain.throughput.retransmits ?? "?"}; latency 1 connection ${lat(r.reference.plain.latency1)}; 10 connections ${lat(r.reference.plain.latency10)}.`,
    `The same relays with TLS between them (socat's OpenSSL, its defaults: TLS 1.3, AES-256-GCM preferred, as the ztunnels; a self-signed P-256 certificate, not checked): iperf3 retransmits ${r.reference.tls.throughput.retransmits ?? "?"}, iperf3's CPU ${cpuPair(r.reference.tls.throughput)}; latency 1 connection ${lat(r.reference.tls.latency1)}; 10 connections ${lat(r.reference.tls.latency10)}.`,
    `Streams the ztunnels tracked while ${HOLD} connections were held (client leg + tunnel leg each): single1 ${r.held.tracked[0]}, single2 ${r.held.tracked[1]}.`,
    `RSS right after the ztunnels' last load (10 connections at ${RATE} req/s, after iperf3 and the held connections): ${pair(r.afterLoadRssKb)}; ${SETTLE_SECONDS} s later, without traffic: ${pair(r.settledAfterLoadRssKb)}; peak (VmHWM) over the run: ${pair(r.peakRssKb)}.`,
  ];
  const verdict = [
    `throughput ≥ ${TARGET.throughputRatio * 100}% of direct: ${ratio >= TARGET.throughputRatio ? "met" : "missed"} (${(ratio * 100).toFixed(0)}%)`,
    `added p99 at ${RATE} req/s ≤ ${TARGET.addedP99Ms} ms: ${added(r.latency1, "p99") / 1000 <= TARGET.addedP99Ms ? "met" : "missed"} (${signedMs(added(r.latency1, "p99"))})`,
    `idle RSS ≤ ${TARGET.idleRssMb} MB: ${settledMax <= TARGET.idleRssMb ? "met" : "missed"} settled (${settledMax.toFixed(1)} MB), ${idleMax <= TARGET.idleRssMb ? "met" : "missed"} 1 s after a connection (${idleMax.toFixed(1)} MB)`,
    `RSS at ${HOLD} connections ≤ ${TARGET.heldRssMb} MB: ${heldMax <= TARGET.heldRssMb ? "met" : "missed"} (${heldMax.toFixed(1)} MB)`,
  ];
  return { table, notes, verdict };
}

function machineLine(m: Machine): string {
  return `Machine: ${m.cores} × ${m.cpu}, kernel ${m.kernel}, Node ${m.node}.`;
}

const RESULTS_HEADER = `# ztunnel benchmark results

Appended by \`npm run bench:ztunnel\` (\`bench/ztunnel.bench.ts\`), newest last. Two \`offmesh ztunnel run\`
processes, one in the ztunnel pod of each node of a two-node mesh (network namespaces on a veth
wire, real node agents and CNI, the control plane in the benchmark process), carry a meshed client's
connections to a meshed server over HBONE (TPROXY capture, mTLS HTTP/2 CONNECT, spoofed source on
the far side). The baseline is the same path between the non-meshed pods of the same two nodes.
Targets: HBONE single-stream throughput ≥ 50% of direct; added latency at 1,000 req/s ≤ 0.5 ms at
p99; RSS ≤ 64 MB idle and ≤ 128 MB with 1,000 open connections. Compare ratios across machines,
not absolute figures; everything shares one machine, so its other load shows in every figure (each
section says how busy it was).

`;

function record(text: string): void {
  if (!existsSync(RESULTS)) appendFileSync(RESULTS, RESULTS_HEADER);
  appendFileSync(RESULTS, text);
  console.log(`recorded in ${RESULTS}`);
}

// ---- profile mode ----

async function profile(mesh: MeshNet, machine: Machine, scenario: string): Promise<void> {
  if (scenario === "machine") return machineProfile(mesh, machine);
  if (scenario !== "throughput" && scenario !== "latency")
    throw new BenchError(`--profile takes throughput, latency or machine, not ${scenario}`);
  const dir = mkdtempSync(join(tmpdir(), "offmesh-ztprof-"));
  try {
    const zts = await startZtunnels(mesh, ["--cpu-prof", `--cpu-prof-dir=${dir}`]);
    let figure: string;
    try {
      if (scenario === "throughput") {
        figure = formatGbps((await iperf(mesh, "client", "server")).bitsPerSecond);
      } else {
        const echo = await startEcho(mesh, "server");
        try {
          figure = `p99 ${formatMs((await load(mesh, "client", "server", 1)).latencyUs.p99)}`;
        } finally {
          await echo.stop("SIGKILL");
        }
      }
    } finally {
      for (const z of zts) await z.stop(15_000); // a clean exit writes the profile
    }
    const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"));
    const sections: string[] = [];
    for (const [i, z] of zts.entries()) {
      const file = files.find((f) => f.includes(`.${z.pid}.`));
      if (!file) throw new BenchError(`no CPU profile of pid ${z.pid} in ${dir} (${files.join(", ")})`);
      const hot = profileHotspots(JSON.parse(readFileSync(join(dir, file), "utf8")) as CpuProfile, 12);
      const rows = (entries: { frame: string; percent: number }[]): string[][] =>
        entries.map((e) => [`${e.percent.toFixed(1)}%`, `\`${e.frame}\``]);
      sections.push(
        `### ${z.node} (${["client side", "server side"][i]}), ${hot.samples} samples`,
        "",
        markdownTable(["self", "by file"], rows(hot.files)),
        "",
        markdownTable(["self", "function"], rows(hot.frames)),
        "",
      );
    }
    const text = [
      `## ${new Date().toISOString().slice(0, 10)} — ztunnel CPU profile, ${scenario} (${figure} while profiled)`,
      "",
      `${machineLine(machine)} Both ztunnel processes ran with \`--cpu-prof\` through one ${scenario === "throughput" ? `${SECONDS} s iperf3 stream` : `${SECONDS} s 1 KB echo run at ${RATE} req/s`}; shares are of all samples of the process's life, idle included.`,
      "",
      ...sections,
      "",
    ].join("\n");
    console.log(text);
    if (!QUICK) record(text);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Where the whole machine's CPU goes while the ztunnels carry one iperf3 stream (`perf record -a`),
 * and what that bounds: the most the stream could carry if the ztunnels' own code cost nothing.
 */
async function machineProfile(mesh: MeshNet, machine: Machine): Promise<void> {
  ensureTool("perf", "linux-perf");
  const dir = mkdtempSync(join(tmpdir(), "offmesh-ztperf-"));
  const zts = await startZtunnels(mesh, [...ZTUNNEL_NODE_FLAGS]);
  try {
    const before = machineCpu();
    const direct = await iperf(mesh, "plain-client", "plain-server");
    const directBusy = busySince(before).busy;
    const data = join(dir, "perf.data");
    // Sampled inside the stream: from 1 s after it starts until 1 s before it ends.
    const sampledSeconds = Math.max(1, SECONDS - 2);
    const sampled = sleep(1_000).then(() =>
      run("perf", ["record", "-a", "-F", "999", "-o", data, "--", "sleep", String(sampledSeconds)]),
    );
    // Both awaited together: a failing perf must not leave the stream's promise unwatched.
    const [proxied] = await Promise.all([iperf(mesh, "client", "server"), sampled]);
    await carried(zts[0], `${mesh.pod("server").ip}:${IPERF_PORT}`, proxied.bitsPerSecond / 8);
    const report = await run(
      "perf",
      [
        "report",
        "-i",
        data,
        "-n",
        "--no-children",
        "--sort",
        "pid,dso,sym",
        "-g",
        "none",
        "-t",
        ";",
        "--stdio",
      ],
      { maxBuffer: 256 * 1024 * 1024 },
    );
    const rows = parsePerfReport(report.stdout);
    const pids = zts.map((z) => z.pid);
    const split = splitMachineCpu(rows, { ztunnelPids: pids, loadCommands: ["iperf3"] });
    const share = (n: number): string => `${((100 * n) / split.total).toFixed(1)}%`;
    const ofDirect = (bps: number): string =>
      `${formatGbps(bps)} (${(bps / direct.bitsPerSecond).toFixed(2)}× of direct)`;
    const bound = (freed: number): string => ofDirect(throughputIfFreed(proxied.bitsPerSecond, split, freed));
    const others = [...split.otherByCommand.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4)
      .map(([command, n]) => `${command} ${share(n)}`)
      .join(", ");
    const kernel = [...kernelWorkOf(rows, pids).entries()].map(([kind, n]) => [
      `ztunnels' kernel time: ${kind}`,
      share(n),
    ]);
    const table = markdownTable(
      ["where the machine's CPU went (perf samples, both cores)", "share"],
      [
        ["ztunnels, OpenSSL (TLS records, AES-GCM)", share(split.ztunnelOpenssl)],
        ["ztunnels, the rest of user space (V8, JavaScript, Node's C++, libc)", share(split.ztunnelUser)],
        [
          "ztunnels, kernel (their syscalls; a send also runs the next hop's receive)",
          share(split.ztunnelKernel),
        ],
        ...kernel,
        ["iperf3 client and server, user and kernel", share(split.load)],
        [`everything else: ${others || "nothing"}`, share(split.other)],
        ["idle", share(split.idle)],
      ],
    );
    const text = [
      `## ${new Date().toISOString().slice(0, 10)} — ztunnel: where the machine's CPU goes during one iperf3 stream`,
      "",
      `${machineLine(machine)} \`--profile machine\`: one ${SECONDS} s iperf3 stream direct (plain pods; machine ${directBusy.toFixed(0)}% busy): ${formatGbps(direct.bitsPerSecond)}; then through the ztunnels: ${ofDirect(proxied.bitsPerSecond)}, while \`perf record -a -F 999\` sampled both cores for ${sampledSeconds} s (${split.total} samples).`,
      "",
      table,
      "",
      `If the ztunnels' user space other than OpenSSL cost nothing and every core were kept busy, the stream could carry at most ${bound(split.ztunnelUser)}. If their encryption cost nothing too, at most ${bound(split.ztunnelUser + split.ztunnelOpenssl)}: what is left is the kernel's work for this path.`,
      "",
      "",
    ].join("\n");
    console.log(text);
    if (!QUICK) record(text);
  } finally {
    for (const z of zts) await z.stop(10_000);
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- main ----

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new BenchError("run as root: the mesh needs network namespaces");
  ensureTool("iperf3", "iperf3");
  ensureTool("socat", "socat");
  ensureTool("openssl", "openssl");
  const machine = describeMachine();
  console.log(machineLine(machine));
  const mesh = await createMeshNet("zbench");
  const helpers: NetnsProcess[] = [];
  let zts: [ZtunnelProcess, ZtunnelProcess] | undefined;
  try {
    if (PROFILE !== undefined) return await profile(mesh, machine, PROFILE);
    // The flags the lab runs ztunnels with; ZTUNNEL_NODE_ARGS replaces them for experiments.
    const nodeArgs = process.env.ZTUNNEL_NODE_ARGS?.split(" ").filter(Boolean) ?? [...ZTUNNEL_NODE_FLAGS];
    zts = await startZtunnels(mesh, nodeArgs);
    helpers.push(await startEcho(mesh, "server"), await startEcho(mesh, "plain-server"));
    const results = await measure(mesh, machine, zts);
    const { table, notes, verdict } = report(results);
    console.log(`\n${table}\n\n${notes.join("\n")}\n\nTargets: ${verdict.join("; ")}.`);
    if (QUICK) return;
    record(
      [
        `## ${new Date().toISOString().slice(0, 10)} — ztunnel: two processes, HBONE between two nodes`,
        "",
        `${machineLine(machine)} One machine holds everything: both nodes (network namespaces on a veth wire), the pods, both ztunnel processes (\`node ${nodeArgs.join(" ")} bin/offmesh ztunnel run\`, log level info, so one access-log line per connection), the control plane and the load generators. Baseline: the non-meshed pods plain-client → plain-server on the same nodes (same veths and wire, no capture, no proxy). Reference columns: the same plain pods through two relays written in C (socat, one in each ztunnel pod), plain TCP — the cost of any two userspace proxies on this machine, without TLS, HTTP/2 or capture — and with TLS 1.3 (OpenSSL) between them — what the encryption adds, still without HTTP/2 or capture.`,
        "",
        table,
        "",
        ...notes.map((n) => `- ${n}`),
        "",
        `Targets: ${verdict.join("; ")}.`,
        "",
        "",
      ].join("\n"),
    );
  } finally {
    for (const z of zts ?? []) {
      const code = await z.stop(10_000);
      if (code !== 0) console.error(`ztunnel on ${z.node} exited ${code}: ${z.stderr().slice(-2000)}`);
    }
    for (const h of helpers) await h.stop("SIGKILL");
    await mesh.close();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exitCode = 1;
});
