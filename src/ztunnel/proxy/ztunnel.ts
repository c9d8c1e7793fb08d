import type net from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { HboneClient } from "../hbone/client.js";
import { HboneServer } from "../hbone/server.js";
import type { HboneHandler } from "../hbone/server.js";
import type { HboneSettings } from "../hbone/settings.js";
import { baggage, forwarded, traceparent } from "../hbone/headers.js";
import type { CertificateManager } from "../identity/certificates.js";
import { connectTcp, createListener, isConnectError } from "../../sockets/index.js";
import type { ZtunnelState } from "../state/index.js";
import { canonicalizeIpText, formatSocketAddress } from "../state/index.js";
import { logConnection, trafficLabels } from "../telemetry/index.js";
import type { ConnectionRecorder, Direction, ZtunnelMetrics } from "../telemetry/index.js";
import { TunnelProtocol } from "../../xds/types.js";
import type { Workload } from "../../xds/types.js";
import { planInbound, planOutbound, ZTUNNEL_PORTS } from "./plan.js";
import type { InboundPlan, OutboundPlan } from "./plan.js";
import { relay } from "./relay.js";

// The data path: three transparent listeners (outbound 15001, inbound plaintext 15006, inbound
// HBONE 15008) and what each does with a connection — the plan comes from plan.ts, the sockets
// from sockets/, the tunnel from hbone/. See docs/ztunnel.md.

/** Socket marks the ztunnel pod's rules route by (docs/netplan.md, "Inside the ztunnel pod"). */
export const ZTUNNEL_MARKS = {
  /** Accepted outbound connections: replies go back out through `pistioout`. */
  outboundListener: 0x401,
  /** Accepted inbound connections: replies go back through `pistioin`. */
  inboundListener: 0x402,
  /** Upstream connections that carry a client's address as their source. */
  spoofedUpstream: 0x4d2,
} as const;

export interface ZtunnelOptions {
  readonly state: ZtunnelState;
  readonly certificates: CertificateManager;
  readonly trustDomain: string;
  /** The mesh roots: peers' certificates must chain to them. */
  readonly rootsPem: string;
  readonly metrics: ZtunnelMetrics;
  readonly log: Logger;
  /** One line per connection, upstream's access-log fields. */
  readonly accessLog: Logger;
  /** Create every socket in this network namespace (tests run several ztunnels in one process). */
  readonly netnsPath?: string;
  /** Where the TPROXY rules deliver (`--on-ip`). Default 127.0.0.1. */
  readonly listenAddress?: string;
  readonly ports?: Partial<typeof ZTUNNEL_PORTS>;
  /** Upstream connect deadline. Default 10 s. */
  readonly connectTimeoutMs?: number;
  /** A connection idle this long in both directions is closed. Default 1 h; 0: never. */
  readonly idleTimeoutMs?: number;
  readonly hbone?: Partial<HboneSettings>;
}

export interface ZtunnelStats {
  readonly open: number;
  readonly accepted: number;
  readonly draining: boolean;
}

export class Ztunnel {
  private readonly listeners: net.Server[] = [];
  private readonly open = new Set<Duplex>();
  private readonly hboneClient: HboneClient;
  private readonly hboneServer: HboneServer;
  private accepted = 0;
  private draining = false;
  private readonly ports: typeof ZTUNNEL_PORTS;

  constructor(private readonly opts: ZtunnelOptions) {
    this.ports = { ...ZTUNNEL_PORTS, ...opts.ports };
    this.hboneClient = new HboneClient({
      ...(opts.hbone ? { settings: opts.hbone } : {}),
      log: opts.log,
      // The tunnel leaves with the client's address, so the far side sees (and authorizes) the
      // real source; pooled connections are therefore per source address, as upstream's are.
      connectSocket: (address, port, sourceIp) => this.connectUpstream(address, port, sourceIp),
    });
    this.hboneServer = new HboneServer({
      credentialFor: (localAddress) => this.credentialFor(localAddress),
      rootsPem: opts.rootsPem,
      trustDomain: opts.trustDomain,
      handler: this.onHboneRequest,
      ...(opts.hbone ? { settings: opts.hbone } : {}),
      log: opts.log,
    });
  }

  /** Bind the three listeners (SO_REUSEPORT, so a new ztunnel can bind while an old one drains). */
  async start(): Promise<void> {
    const address = this.opts.listenAddress ?? "127.0.0.1";
    const listen = async (
      port: number,
      mark: number,
      onConnection: (s: net.Socket) => void,
    ): Promise<void> => {
      const server = await createListener({
        address,
        port,
        transparent: true,
        mark,
        reusePort: true,
        ...(this.opts.netnsPath ? { netnsPath: this.opts.netnsPath } : {}),
      });
      server.on("connection", (socket: net.Socket) => {
        this.accepted += 1;
        socket.allowHalfOpen = true;
        socket.setNoDelay(true);
        socket.setKeepAlive(true, 60_000);
        onConnection(socket);
      });
      this.listeners.push(server);
    };
    await listen(this.ports.outbound, ZTUNNEL_MARKS.outboundListener, (s) =>
      this.guard(s, this.onOutbound(s)),
    );
    await listen(this.ports.inboundPlaintext, ZTUNNEL_MARKS.inboundListener, (s) =>
      this.guard(s, this.onPlaintext(s)),
    );
    await listen(this.ports.inbound, ZTUNNEL_MARKS.inboundListener, (s) => this.onHboneConnection(s));
  }

  /** A handler that failed unexpectedly costs its connection, never the process. */
  private guard(socket: net.Socket, handling: Promise<void>): void {
    handling.catch((err: unknown) => {
      this.opts.log.error(
        { err: (err as Error).message, peer: socket.remoteAddress },
        "connection handler failed",
      );
      reset(socket);
      this.open.delete(socket);
    });
  }

  /** The ports actually bound (a port of 0 in the options picks one). */
  boundPorts(): number[] {
    return this.listeners.map((l) => (l.address() as net.AddressInfo).port);
  }

  stats(): ZtunnelStats {
    return { open: this.open.size, accepted: this.accepted, draining: this.draining };
  }

  /**
   * Stop taking connections and let the open ones finish, for at most `timeoutMs`; what is still
   * open then is closed. A new ztunnel bound to the same ports takes the new connections.
   */
  async drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    await Promise.all(this.listeners.map((l) => new Promise<void>((r) => l.close(() => r()))));
    this.listeners.length = 0;
    const deadline = Date.now() + timeoutMs;
    await Promise.race([
      this.hboneServer.drain(),
      new Promise<void>((r) => setTimeout(r, timeoutMs).unref()),
    ]);
    while (this.open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await this.close();
  }

  async close(): Promise<void> {
    this.draining = true;
    await Promise.all(this.listeners.map((l) => new Promise<void>((r) => l.close(() => r()))));
    this.listeners.length = 0;
    for (const s of this.open) s.destroy();
    this.open.clear();
    this.hboneClient.close();
    await this.hboneServer.close();
  }

  // ---- outbound (15001) ----

  private async onOutbound(socket: net.Socket): Promise<void> {
    const started = Date.now();
    const sourceIp = ipText(socket.remoteAddress ?? "");
    const sourceAddress = formatSocketAddress(sourceIp, socket.remotePort ?? 0);
    const conn = {
      sourceIp,
      destinationIp: ipText(socket.localAddress ?? ""),
      destinationPort: socket.localPort ?? 0,
    };
    const originalDestination = formatSocketAddress(conn.destinationIp, conn.destinationPort);
    const plan = planOutbound(this.opts.state, conn);
    this.track(socket);
    if (plan.kind === "refuse") {
      this.refuse(socket, {
        direction: "outbound",
        reporter: "source",
        sourceAddress,
        destinationAddress: originalDestination,
        ...(plan.source ? { source: plan.source } : {}),
        error: plan.reason,
        flags: "CONNECT",
        started,
      });
      return;
    }
    const target = plan.target;
    const sourceIdentity = plan.kind === "passthrough" ? undefined : plan.sourceIdentity;
    const destinationIdentity = plan.kind === "passthrough" ? undefined : plan.destinationIdentity;
    const recorder = this.opts.metrics.connectionOpened(
      trafficLabels({
        reporter: "source",
        source: plan.source,
        ...(sourceIdentity ? { sourcePrincipal: sourceIdentity } : {}),
        ...(target.workload ? { destination: target.workload } : {}),
        ...(target.service ? { destinationService: target.service } : {}),
        ...(destinationIdentity ? { destinationPrincipal: destinationIdentity } : {}),
        mtls: plan.kind === "hbone" || plan.kind === "local",
      }),
    );
    const entry = {
      direction: "outbound" as const,
      sourceAddress,
      source: plan.source,
      ...(sourceIdentity ? { sourceIdentity } : {}),
      ...(target.workload ? { destination: target.workload } : {}),
      ...(target.service ? { destinationService: target.service } : {}),
      ...(destinationIdentity ? { destinationIdentity } : {}),
    };
    let upstream: Duplex;
    let destinationAddress = formatSocketAddress(target.ip, target.port);
    let hboneAddress: string | undefined;
    try {
      if (plan.kind === "hbone") {
        hboneAddress = destinationAddress;
        destinationAddress = formatSocketAddress(target.ip, this.ports.inbound);
        upstream = await this.dialHbone(plan, sourceIp, sourceAddress);
      } else if (plan.kind === "local") {
        upstream = await this.connectLocal(plan, sourceIp, sourceAddress, started);
      } else {
        upstream = await this.connectUpstream(target.ip, target.port, sourceIp);
      }
    } catch (err) {
      const failure = describeFailure(err);
      recorder.failed(failure.flags);
      this.logAccess({
        ...entry,
        destinationAddress,
        ...(hboneAddress ? { hboneAddress } : {}),
        bytesSent: 0,
        bytesReceived: 0,
        durationMs: Date.now() - started,
        error: failure.error,
        ...(failure.reason ? { reason: failure.reason } : {}),
      });
      reset(socket);
      this.open.delete(socket);
      return;
    }
    this.track(upstream);
    // Both halves ran here: the destination's view is recorded too, as a second proxy would.
    const recorders =
      plan.kind === "local"
        ? [
            recorder,
            this.opts.metrics.connectionOpened(
              trafficLabels({
                reporter: "destination",
                source: plan.source,
                sourcePrincipal: plan.sourceIdentity,
                destination: plan.target.workload,
                ...(target.service ? { destinationService: target.service } : {}),
                destinationPrincipal: plan.destinationIdentity,
                mtls: true,
              }),
            ),
          ]
        : [recorder];
    await this.pipe(socket, upstream, recorders, {
      ...entry,
      destinationAddress,
      ...(hboneAddress ? { hboneAddress } : {}),
      started,
    });
  }

  private async dialHbone(
    plan: Extract<OutboundPlan, { kind: "hbone" }>,
    sourceIp: string,
    sourceAddress: string,
  ): Promise<Duplex> {
    const cert = await this.opts.certificates.get(plan.sourceIdentity);
    const service = plan.target.service;
    return this.hboneClient.dial({
      peer: { address: plan.target.ip, port: this.ports.inbound },
      authority: formatSocketAddress(plan.target.ip, plan.target.port),
      source: {
        identity: plan.sourceIdentity,
        certChainPem: cert.certChainPem,
        keyPem: cert.keyPem,
        sourceIp,
      },
      expectedIdentities: plan.expectedIdentities,
      rootsPem: this.opts.rootsPem,
      headers: {
        baggage: baggage({
          namespace: plan.source.namespace,
          workloadType: "pod",
          workloadName: plan.source.workloadName ?? plan.source.name,
          ...(plan.source.canonicalName ? { serviceName: plan.source.canonicalName } : {}),
          ...(plan.source.canonicalRevision ? { serviceVersion: plan.source.canonicalRevision } : {}),
          ...(plan.source.clusterId ? { clusterName: plan.source.clusterId } : {}),
        }),
        forwarded: forwarded({ for: sourceAddress, ...(service ? { host: service.hostname } : {}) }),
        traceparent: traceparent(),
      },
      timeoutMs: this.opts.connectTimeoutMs ?? 10_000,
    });
  }

  /**
   * Source and destination both served here: the inbound checks run in-process (the source's
   * identity is the one this proxy would have presented) and the connection goes straight to the
   * destination pod from the client's address.
   */
  private async connectLocal(
    plan: Extract<OutboundPlan, { kind: "local" }>,
    sourceIp: string,
    sourceAddress: string,
    started: number,
  ): Promise<Duplex> {
    const inbound = planInbound(this.opts.state, {
      targetIp: plan.target.ip,
      targetPort: plan.target.port,
      sourceIp,
      sourceIdentity: plan.sourceIdentity,
    });
    const labels = {
      reporter: "destination" as const,
      source: plan.source,
      sourcePrincipal: plan.sourceIdentity,
      destination: plan.target.workload,
      ...(plan.target.service ? { destinationService: plan.target.service } : {}),
      destinationPrincipal: plan.destinationIdentity,
      mtls: true,
    };
    if (inbound.kind === "reject") {
      this.opts.metrics.connectionOpened(trafficLabels(labels)).failed("DENY");
      this.logAccess({
        direction: "inbound",
        sourceAddress,
        source: plan.source,
        sourceIdentity: plan.sourceIdentity,
        destinationAddress: formatSocketAddress(plan.target.ip, plan.target.port),
        destination: plan.target.workload,
        destinationIdentity: plan.destinationIdentity,
        bytesSent: 0,
        bytesReceived: 0,
        durationMs: Date.now() - started,
        error: "denied",
        reason: inbound.reason,
      });
      throw new DeniedError(inbound.reason);
    }
    return this.connectUpstream(plan.target.ip, plan.target.port, sourceIp);
  }

  // ---- inbound HBONE (15008) ----

  private onHboneConnection(socket: net.Socket): void {
    this.hboneServer.handleConnection(socket);
  }

  private async credentialFor(
    localAddress: string,
  ): Promise<{ certChainPem: string; keyPem: string } | undefined> {
    const workload = this.opts.state.servedWorkloadByIp(ipText(localAddress));
    if (!workload || workload.tunnelProtocol !== TunnelProtocol.HBONE) return undefined;
    const cert = await this.opts.certificates.get(this.opts.state.identityOf(workload));
    return { certChainPem: cert.certChainPem, keyPem: cert.keyPem };
  }

  private readonly onHboneRequest: HboneHandler = async (req) => {
    const started = Date.now();
    const sourceIp = ipText(req.peer.address);
    const sourceAddress = formatSocketAddress(sourceIp, req.peer.port);
    const source = this.opts.state.workloadByIp(sourceIp);
    if (!req.target) return { status: 400, reason: `unparsable authority ${JSON.stringify(req.authority)}` };
    const targetIp = ipText(req.target.address);
    const destinationAddress = formatSocketAddress(targetIp, req.target.port);
    const plan = planInbound(this.opts.state, {
      targetIp,
      targetPort: req.target.port,
      sourceIp,
      sourceIdentity: req.peer.identity,
    });
    const { labels, entry } = describeInbound(plan, {
      source,
      sourceIdentity: req.peer.identity,
      sourceAddress,
      destinationAddress,
    });
    if (plan.kind === "reject") {
      this.opts.metrics
        .connectionOpened(trafficLabels(labels))
        .failed(plan.status === 401 ? "DENY" : "CONNECT");
      this.logAccess({
        ...entry,
        bytesSent: 0,
        bytesReceived: 0,
        durationMs: Date.now() - started,
        error: plan.status === 401 ? "denied" : "rejected",
        reason: plan.reason,
      });
      return { status: plan.status, reason: plan.reason };
    }
    let upstream: net.Socket;
    try {
      upstream = await this.connectUpstream(targetIp, req.target.port, sourceIp);
    } catch (err) {
      const failure = describeFailure(err);
      this.opts.metrics.connectionOpened(trafficLabels(labels)).failed(failure.flags);
      this.logAccess({
        ...entry,
        bytesSent: 0,
        bytesReceived: 0,
        durationMs: Date.now() - started,
        error: failure.error,
      });
      return { status: 503, reason: failure.error };
    }
    // The HBONE server joins the stream to the upstream; it reports the bytes as they pass.
    const recorder = this.opts.metrics.connectionOpened(trafficLabels(labels));
    this.track(upstream);
    return {
      status: 200,
      upstream,
      observer: {
        // From the stream: what the client sent; to the stream: what the workload answered.
        fromStream: (n) => recorder.addSent(n),
        toStream: (n) => recorder.addReceived(n),
        finished: (outcome) => {
          if (outcome.error) recorder.failed("CONNECT");
          else recorder.closed();
          this.logAccess({
            ...entry,
            bytesSent: outcome.fromStream,
            bytesReceived: outcome.toStream,
            durationMs: Date.now() - started,
            ...(outcome.error ? { error: outcome.error.message } : {}),
          });
        },
      },
    };
  };

  // ---- inbound plaintext (15006) ----

  private async onPlaintext(socket: net.Socket): Promise<void> {
    const started = Date.now();
    this.track(socket);
    const sourceIp = ipText(socket.remoteAddress ?? "");
    const sourceAddress = formatSocketAddress(sourceIp, socket.remotePort ?? 0);
    const targetIp = ipText(socket.localAddress ?? "");
    const targetPort = socket.localPort ?? 0;
    const destinationAddress = formatSocketAddress(targetIp, targetPort);
    const source = this.opts.state.workloadByIp(sourceIp);
    const plan = planInbound(this.opts.state, { targetIp, targetPort, sourceIp });
    const { labels, entry } = describeInbound(plan, { source, sourceAddress, destinationAddress });
    if (plan.kind === "reject") {
      this.refuse(socket, {
        ...entry,
        reporter: "destination",
        error: plan.status === 401 ? "denied" : "rejected",
        reason: plan.reason,
        flags: plan.status === 401 ? "DENY" : "CONNECT",
        started,
        labels,
      });
      return;
    }
    const recorder = this.opts.metrics.connectionOpened(trafficLabels(labels));
    let upstream: net.Socket;
    try {
      upstream = await this.connectUpstream(targetIp, targetPort, sourceIp);
    } catch (err) {
      const failure = describeFailure(err);
      recorder.failed(failure.flags);
      this.logAccess({
        ...entry,
        bytesSent: 0,
        bytesReceived: 0,
        durationMs: Date.now() - started,
        error: failure.error,
      });
      reset(socket);
      this.open.delete(socket);
      return;
    }
    this.track(upstream);
    await this.pipe(socket, upstream, [recorder], { ...entry, started });
  }

  // ---- shared ----

  /** A TCP connection from `sourceIp` (spoofed, unless it is the target itself) to `ip:port`. */
  private async connectUpstream(ip: string, port: number, sourceIp?: string): Promise<net.Socket> {
    const spoof = sourceIp !== undefined && sourceIp !== ip;
    const socket = await connectTcp({
      host: ip,
      port,
      ...(spoof ? { localAddress: sourceIp, mark: ZTUNNEL_MARKS.spoofedUpstream } : {}),
      timeoutMs: this.opts.connectTimeoutMs ?? 10_000,
      noDelay: true,
      keepAlive: true,
      ...(this.opts.netnsPath ? { netnsPath: this.opts.netnsPath } : {}),
    });
    socket.allowHalfOpen = true;
    return socket;
  }

  private async pipe(
    downstream: Duplex,
    upstream: Duplex,
    recorders: readonly ConnectionRecorder[],
    entry: Omit<Parameters<Ztunnel["logAccess"]>[0], "bytesSent" | "bytesReceived" | "durationMs"> & {
      started: number;
    },
  ): Promise<void> {
    const { started, ...logged } = entry;
    const result = await relay(downstream, upstream, {
      idleTimeoutMs: this.opts.idleTimeoutMs ?? 3_600_000,
      onUpstreamBytes: (n) => {
        for (const r of recorders) r.addSent(n);
      },
      onDownstreamBytes: (n) => {
        for (const r of recorders) r.addReceived(n);
      },
    });
    this.open.delete(downstream);
    this.open.delete(upstream);
    for (const r of recorders) {
      if (result.error) r.failed("CONNECT");
      else r.closed();
    }
    this.logAccess({
      ...logged,
      bytesSent: result.sentUpstream,
      bytesReceived: result.sentDownstream,
      durationMs: Date.now() - started,
      ...(result.error ? { error: result.error } : {}),
    });
  }

  private refuse(
    socket: net.Socket,
    r: {
      direction: Direction;
      reporter: "source" | "destination";
      sourceAddress: string;
      destinationAddress: string;
      source?: Workload;
      destination?: Workload;
      destinationIdentity?: string;
      error: string;
      reason?: string;
      flags: string;
      started: number;
      labels?: Parameters<typeof trafficLabels>[0];
    },
  ): void {
    this.opts.metrics
      .connectionOpened(
        trafficLabels(
          r.labels ?? {
            reporter: r.reporter,
            ...(r.source ? { source: r.source } : {}),
            ...(r.destination ? { destination: r.destination } : {}),
            mtls: false,
          },
        ),
      )
      .failed(r.flags);
    this.logAccess({
      direction: r.direction,
      sourceAddress: r.sourceAddress,
      ...(r.source ? { source: r.source } : {}),
      destinationAddress: r.destinationAddress,
      ...(r.destination ? { destination: r.destination } : {}),
      ...(r.destinationIdentity ? { destinationIdentity: r.destinationIdentity } : {}),
      bytesSent: 0,
      bytesReceived: 0,
      durationMs: Date.now() - r.started,
      error: r.error,
      ...(r.reason ? { reason: r.reason } : {}),
    });
    reset(socket);
    this.open.delete(socket);
  }

  private logAccess(entry: Parameters<typeof logConnection>[1]): void {
    logConnection(this.opts.accessLog, entry);
  }

  private track(stream: Duplex): void {
    this.open.add(stream);
    stream.once("close", () => this.open.delete(stream));
  }
}

/**
 * The metric labels and access-log fields of an inbound connection: HBONE when the client's
 * identity is known (the CONNECT target is then also the log's `dst.hbone_addr`), plaintext else.
 */
function describeInbound(
  plan: InboundPlan,
  c: {
    source: Workload | undefined;
    sourceIdentity?: string;
    sourceAddress: string;
    destinationAddress: string;
  },
) {
  const mtls = c.sourceIdentity !== undefined;
  const labels = {
    reporter: "destination" as const,
    ...(c.source ? { source: c.source } : {}),
    ...(mtls ? { sourcePrincipal: c.sourceIdentity } : {}),
    ...(plan.workload ? { destination: plan.workload } : {}),
    ...(plan.kind === "forward" ? { destinationPrincipal: plan.identity } : {}),
    mtls,
  };
  const entry = {
    direction: "inbound" as const,
    sourceAddress: c.sourceAddress,
    ...(c.source ? { source: c.source } : {}),
    ...(mtls ? { sourceIdentity: c.sourceIdentity } : {}),
    destinationAddress: c.destinationAddress,
    ...(mtls ? { hboneAddress: c.destinationAddress } : {}),
    ...(plan.workload ? { destination: plan.workload } : {}),
    ...(plan.kind === "forward" ? { destinationIdentity: plan.identity } : {}),
  };
  return { labels, entry };
}

class DeniedError extends Error {
  constructor(readonly reason: string) {
    super(`denied: ${reason}`);
    this.name = "DeniedError";
  }
}

/** response_flags and the access-log error of a failed upstream step. */
function describeFailure(err: unknown): { flags: string; error: string; reason?: string } {
  if (err instanceof DeniedError) return { flags: "DENY", error: "denied", reason: err.reason };
  const e = err as { kind?: string; status?: number; message?: string };
  if (typeof e.kind === "string" && e.kind === "status" && e.status === 401) {
    return { flags: "DENY", error: `peer denied the connection: ${e.message ?? ""}` };
  }
  if (typeof e.kind === "string" && (e.kind === "tls" || e.kind === "identity")) {
    return { flags: "TLS_FAILURE", error: e.message ?? String(err) };
  }
  if (isConnectError(err)) return { flags: "CONNECT", error: err.message };
  return { flags: "CONNECT", error: e.message ?? String(err) };
}

/** End a connection with a TCP reset: the client learns it failed rather than that it ended. */
function reset(socket: net.Socket): void {
  socket.on("error", () => undefined);
  if (!socket.destroyed) socket.resetAndDestroy();
}

/** The canonical text of an address as node reports it (IPv6 compressed; unparsable left as is). */
function ipText(text: string): string {
  return canonicalizeIpText(text) ?? text;
}
