import { execFile, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { promisify } from "node:util";
import { LAB_ENV } from "./processes.js";
import { internetNetns, INTERNET_NIC, nodeNetns, WIRE_BRIDGE, wireNetns } from "./names.js";
import { labNodes } from "./spec.js";
import type { LabSpec } from "./spec.js";

// What crossed the lab's wire: tcpdump on the bridge in the wire namespace (the bridge is put in
// promiscuous mode, so it sees every frame it forwards between ports), its pcap stream parsed
// here. Frames are told apart by the MAC of the NIC that sent and received them, so a check can
// separate "between nodes" from a CPU's cable to its own DPU — in a real deployment that hop is
// the host's PCIe link, in the lab it is a cable into the same bridge and carries pod traffic in
// clear by design.

const run = promisify(execFile);

export interface WireFrame {
  /** Capture time, ms since the epoch (the kernel's clock, as Date.now()). */
  readonly time: number;
  readonly srcMac: string;
  readonly dstMac: string;
  /** IPv4 only (the lab is IPv4); undefined fields for anything else. */
  readonly src?: string;
  readonly dst?: string;
  readonly protocol: "tcp" | "udp" | "other";
  readonly srcPort?: number;
  readonly dstPort?: number;
  /** TCP flags byte (SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04). */
  readonly tcpFlags?: number;
  readonly payloadLength: number;
  /** Where the TCP/UDP payload begins in `bytes`. */
  readonly payloadOffset: number;
  /** The whole frame as captured, for marker searches. */
  readonly bytes: Buffer;
}

export class PcapFormatError extends Error {
  constructor(message: string) {
    super(`pcap stream: ${message}`);
    this.name = "PcapFormatError";
  }
}

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const LINKTYPE_ETHERNET = 1;
const ETHERTYPE_IPV4 = 0x0800;

/** Frames of a classic pcap stream (tcpdump -w), Ethernet link type. A truncated tail is ignored. */
export function parsePcap(data: Buffer): WireFrame[] {
  if (data.length === 0) return [];
  if (data.length < 24) throw new PcapFormatError(`only ${data.length} bytes, no file header`);
  const magicLE = data.readUInt32LE(0);
  const little = magicLE === PCAP_MAGIC_US || magicLE === PCAP_MAGIC_NS;
  const magicBE = data.readUInt32BE(0);
  if (!little && magicBE !== PCAP_MAGIC_US && magicBE !== PCAP_MAGIC_NS)
    throw new PcapFormatError(`unknown magic 0x${magicLE.toString(16)}`);
  const u32 = (at: number): number => (little ? data.readUInt32LE(at) : data.readUInt32BE(at));
  const magic = little ? magicLE : magicBE;
  const fractionPerMs = magic === PCAP_MAGIC_NS ? 1e6 : 1e3;
  const linkType = u32(20) & 0x0fffffff;
  if (linkType !== LINKTYPE_ETHERNET) throw new PcapFormatError(`link type ${linkType}, expected Ethernet`);
  const frames: WireFrame[] = [];
  let at = 24;
  while (at + 16 <= data.length) {
    const captured = u32(at + 8);
    const start = at + 16;
    if (start + captured > data.length) break;
    const time = u32(at) * 1000 + u32(at + 4) / fractionPerMs;
    frames.push(parseEthernet(data.subarray(start, start + captured), time));
    at = start + captured;
  }
  return frames;
}

const mac = (b: Buffer, at: number): string =>
  [...b.subarray(at, at + 6)].map((x) => x.toString(16).padStart(2, "0")).join(":");

/** One Ethernet frame: addresses, and the IPv4/TCP/UDP headers when there are any. */
export function parseEthernet(bytes: Buffer, time = 0): WireFrame {
  const base = {
    time,
    srcMac: bytes.length >= 12 ? mac(bytes, 6) : "",
    dstMac: bytes.length >= 6 ? mac(bytes, 0) : "",
  };
  const other: WireFrame = {
    ...base,
    protocol: "other",
    payloadLength: 0,
    payloadOffset: bytes.length,
    bytes,
  };
  if (bytes.length < 14 + 20 || bytes.readUInt16BE(12) !== ETHERTYPE_IPV4) return other;
  const ip = 14;
  const ihl = (bytes.readUInt8(ip) & 0x0f) * 4;
  const totalLength = Math.min(bytes.readUInt16BE(ip + 2), bytes.length - ip);
  const proto = bytes.readUInt8(ip + 9);
  const src = [...bytes.subarray(ip + 12, ip + 16)].join(".");
  const dst = [...bytes.subarray(ip + 16, ip + 20)].join(".");
  const l4 = ip + ihl;
  if (proto === 6 && bytes.length >= l4 + 20) {
    const dataOffset = (bytes.readUInt8(l4 + 12) >> 4) * 4;
    return {
      ...base,
      src,
      dst,
      protocol: "tcp",
      srcPort: bytes.readUInt16BE(l4),
      dstPort: bytes.readUInt16BE(l4 + 2),
      tcpFlags: bytes.readUInt8(l4 + 13),
      payloadLength: Math.max(0, ip + totalLength - l4 - dataOffset),
      payloadOffset: l4 + dataOffset,
      bytes,
    };
  }
  if (proto === 17 && bytes.length >= l4 + 8) {
    return {
      ...base,
      src,
      dst,
      protocol: "udp",
      srcPort: bytes.readUInt16BE(l4),
      dstPort: bytes.readUInt16BE(l4 + 2),
      payloadLength: Math.max(0, ip + totalLength - l4 - 8),
      payloadOffset: l4 + 8,
      bytes,
    };
  }
  return {
    ...base,
    src,
    dst,
    protocol: "other",
    payloadLength: Math.max(0, totalLength - ihl),
    payloadOffset: l4,
    bytes,
  };
}

// ---- Who is who on the wire ---------------------------------------------------------------------

/** The wire's stations: MAC → node name (or "internet"), and which pairs of them are host links. */
export interface WireMap {
  readonly stations: ReadonlyMap<string, string>;
  /** `cpu|dpu` of every pair, both orders. */
  readonly hostLinks: ReadonlySet<string>;
}

export class WireError extends Error {
  constructor(
    readonly lab: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`lab ${lab}: ${message}`, options);
    this.name = "WireError";
  }
}

async function macOf(lab: string, netns: string, nic: string): Promise<string> {
  try {
    const { stdout } = await run("ip", ["-n", netns, "-json", "link", "show", "dev", nic]);
    const links = JSON.parse(stdout) as { address?: string }[];
    const address = links[0]?.address;
    if (!address) throw new Error("no address in the answer");
    return address.toLowerCase();
  } catch (err) {
    throw new WireError(lab, `cannot read the MAC of ${nic} in ${netns}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

export async function readWireMap(spec: LabSpec): Promise<WireMap> {
  const stations = new Map<string, string>();
  for (const n of labNodes(spec))
    stations.set(await macOf(spec.name, nodeNetns(spec.name, n.name), spec.nic), n.name);
  stations.set(await macOf(spec.name, internetNetns(spec.name), INTERNET_NIC), "internet");
  const hostLinks = new Set<string>();
  for (const p of spec.pairs) {
    hostLinks.add(`${p.cpu.name}|${p.dpu.name}`);
    hostLinks.add(`${p.dpu.name}|${p.cpu.name}`);
  }
  return { stations, hostLinks };
}

/** Where a frame went: station names (a MAC the map does not know is shown as is). */
export function hopOf(map: WireMap, f: WireFrame): { from: string; to: string; hostLink: boolean } {
  const from = map.stations.get(f.srcMac) ?? f.srcMac;
  const to = map.stations.get(f.dstMac) ?? f.dstMac;
  return { from, to, hostLink: map.hostLinks.has(`${from}|${to}`) };
}

/** Frames captured from `from` to `to` (ms since the epoch), both included. */
export const framesDuring = (frames: readonly WireFrame[], from: number, to: number): WireFrame[] =>
  frames.filter((f) => f.time >= from && f.time <= to);

/** Frames of the conversation between two IP addresses, either direction. */
export const framesBetween = (frames: readonly WireFrame[], a: string, b: string): WireFrame[] =>
  frames.filter((f) => (f.src === a && f.dst === b) || (f.src === b && f.dst === a));

/**
 * Whether a TCP segment's payload begins with a TLS record header (content type 20–23, version
 * 3.x): what the HBONE port carries. Small writes are one record per segment, so a tunnel's
 * segments begin with one; plaintext (HTTP/2 CONNECT, the application's bytes) does not.
 */
export function startsTlsRecord(f: WireFrame): boolean {
  if (f.payloadLength < 5) return false;
  const b = f.bytes;
  const type = b[f.payloadOffset] ?? 0;
  return type >= 20 && type <= 23 && b[f.payloadOffset + 1] === 3 && (b[f.payloadOffset + 2] ?? 9) <= 4;
}

export const containsMarker = (f: WireFrame, marker: Buffer): boolean => f.bytes.includes(marker);

/** How the frames carrying `marker` split between host links and links between nodes. */
export function markerSightings(
  map: WireMap,
  frames: readonly WireFrame[],
  marker: string,
): { hostLink: number; betweenNodes: number; hops: string[] } {
  const needle = Buffer.from(marker);
  let hostLink = 0;
  let betweenNodes = 0;
  const hops = new Set<string>();
  for (const f of frames) {
    if (!containsMarker(f, needle)) continue;
    const hop = hopOf(map, f);
    if (hop.hostLink) hostLink++;
    else {
      betweenNodes++;
      hops.add(`${hop.from}→${hop.to}`);
    }
  }
  return { hostLink, betweenNodes, hops: [...hops] };
}

/** A one-line account of frames: `12 frames master-dpu↔worker1-dpu tcp :15008`. */
export function summarizeFrames(map: WireMap, frames: readonly WireFrame[]): string {
  if (frames.length === 0) return "no frames";
  const groups = new Map<string, number>();
  for (const f of frames) {
    const hop = hopOf(map, f);
    const ends = [hop.from, hop.to].sort().join("↔");
    const port =
      f.srcPort !== undefined && f.dstPort !== undefined ? `:${Math.min(f.srcPort, f.dstPort)}` : "";
    const key = `${ends} ${f.protocol}${port}${hop.hostLink ? " (host link)" : ""}`;
    groups.set(key, (groups.get(key) ?? 0) + 1);
  }
  return [...groups].map(([k, n]) => `${n} frames ${k}`).join(", ");
}

// ---- The capture --------------------------------------------------------------------------------

export interface WireCaptureOptions {
  /** How long to wait for tcpdump to say it listens (default 5 s). */
  readonly startTimeoutMs?: number;
  /** Marks the capture process as the lab's, so `lab down` removes it after a crash. */
  readonly stateDir: string;
}

/** A running tcpdump on the lab's bridge; `stop()` returns what it saw. */
export class WireCapture {
  private readonly chunks: Buffer[] = [];
  private stderr = "";
  private readonly exited: Promise<number | null>;

  private constructor(
    readonly lab: string,
    private readonly child: ChildProcess,
  ) {
    child.stdout?.on("data", (b: Buffer) => this.chunks.push(b));
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (s: string) => (this.stderr += s));
    this.exited = new Promise((resolve) => child.once("close", (code) => resolve(code)));
  }

  static async start(lab: string, opts: WireCaptureOptions): Promise<WireCapture> {
    const child = spawn(
      "ip",
      [
        "netns",
        "exec",
        wireNetns(lab),
        "tcpdump",
        "-i",
        WIRE_BRIDGE,
        "-n",
        "-U",
        "--immediate-mode",
        "-w",
        "-",
        "ip",
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, [LAB_ENV]: opts.stateDir } },
    );
    const capture = new WireCapture(lab, child);
    const spawned = await new Promise<Error | undefined>((resolve) => {
      child.once("spawn", () => resolve(undefined));
      child.once("error", (err) => resolve(err));
    });
    if (spawned) throw new WireError(lab, `cannot start tcpdump: ${spawned.message}`, { cause: spawned });
    const deadline = Date.now() + (opts.startTimeoutMs ?? 5_000);
    while (!capture.stderr.includes("listening on")) {
      if (!capture.running() || Date.now() > deadline) {
        capture.kill();
        const why =
          capture.stderr.trim() || (child.exitCode !== null ? `exited ${child.exitCode}` : "no answer");
        throw new WireError(
          lab,
          `tcpdump on ${WIRE_BRIDGE} in ${wireNetns(lab)} did not start (${why}); is tcpdump installed (apt-get install tcpdump)?`,
        );
      }
      await sleep(20);
    }
    return capture;
  }

  running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Let in-flight frames arrive, stop tcpdump, and parse what it wrote. */
  async stop(settleMs = 200): Promise<WireFrame[]> {
    await sleep(settleMs);
    if (this.running() && this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, "SIGINT");
      } catch {
        // gone already
      }
    }
    const timer = setTimeout(() => this.kill(), 3_000);
    await this.exited;
    clearTimeout(timer);
    return parsePcap(Buffer.concat(this.chunks));
  }

  /** Stop without reading (cleanup on failure). */
  kill(): void {
    if (this.running() && this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, "SIGKILL");
      } catch {
        // gone already
      }
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
