import { Counter, Gauge } from "prom-client";
import type { Registry } from "prom-client";
import { TRAFFIC_LABEL_NAMES, withResponseFlags } from "./labels.js";
import type { TrafficLabels } from "./labels.js";

// ztunnel's Prometheus metrics under upstream's names. prom-client 15 exposes a counter under
// exactly the name it is given in the Prometheus text format (it adds `_total` only to samples in
// the OpenMetrics format, after stripping a `_total` suffix from the family name), so the
// counters are named with their `_total`.
//
// Byte counters move while a connection is open, but the data path only adds to two numbers on
// the connection: the pending bytes of every open connection are handed to the counters when the
// registry is collected (a scrape) and when the connection ends. A scrape thus sees every byte
// copied so far, and a chunk costs an addition instead of a labelled counter update (which hashes
// all 23 labels).

export interface ConnectionRecorder {
  /** Bytes copied from the source (client) towards the destination. */
  addSent(bytes: number): void;
  /** Bytes copied from the destination back to the source. */
  addReceived(bytes: number): void;
  /** The connection ended normally. Idempotent; nothing counts after the first end. */
  closed(): void;
  /** The connection ended in failure: counted as closed and failed, both with `responseFlags`. */
  failed(responseFlags: string): void;
  readonly bytesSent: number;
  readonly bytesReceived: number;
  /** Until `closed` or `failed`. */
  readonly open: boolean;
}

/** Upstream's reasons for an ADS stream's end. */
export type XdsTerminationReason = "ConnectionError" | "Error" | "Reconnect" | "Complete";

export interface ZtunnelMetrics {
  readonly registry: Registry;
  /** Count a connection as opened and return the handle that counts its bytes and its end. */
  connectionOpened(labels: TrafficLabels): ConnectionRecorder;
  /** Connections opened and not yet ended. */
  openConnections(): number;
  /**
   * A count that grows with every connection opened or ended and every byte copied, and stays put
   * while nothing happens: for telling a quiet ztunnel from a busy one (idle memory trimming).
   */
  activity(): number;
  /** One xDS response received, by type URL. */
  xdsMessage(typeUrl: string): void;
  xdsConnectionTerminated(reason: XdsTerminationReason): void;
}

export interface ZtunnelMetricsOptions {
  /** `tag` of istio_build: the version of this ztunnel. Default "unknown". */
  readonly buildTag?: string;
}

export const METRIC_NAMES = {
  connectionsOpened: "istio_tcp_connections_opened_total",
  connectionsClosed: "istio_tcp_connections_closed_total",
  connectionsFailed: "istio_tcp_connections_failed_total",
  sentBytes: "istio_tcp_sent_bytes_total",
  receivedBytes: "istio_tcp_received_bytes_total",
  socketsOpen: "istio_tcp_sockets_open",
  build: "istio_build",
  xdsTerminations: "istio_xds_connection_terminations_total",
  xdsMessages: "istio_xds_message_total",
} as const;

const trafficLabelNames = [...TRAFFIC_LABEL_NAMES];

class TrafficRecorder implements ConnectionRecorder {
  pendingSent = 0;
  pendingReceived = 0;
  bytesSent = 0;
  bytesReceived = 0;
  open = true;

  constructor(
    readonly labels: TrafficLabels,
    private readonly owner: TrafficMetrics,
  ) {}

  addSent(bytes: number): void {
    // `> 0` also drops NaN, which would otherwise fail the next scrape.
    if (bytes > 0 && this.open) {
      this.pendingSent += bytes;
      this.bytesSent += bytes;
    }
  }

  addReceived(bytes: number): void {
    if (bytes > 0 && this.open) {
      this.pendingReceived += bytes;
      this.bytesReceived += bytes;
    }
  }

  closed(): void {
    if (this.open) this.owner.end(this, undefined);
  }

  failed(responseFlags: string): void {
    if (this.open) this.owner.end(this, responseFlags);
  }
}

class TrafficMetrics implements ZtunnelMetrics {
  private readonly openRecorders = new Set<TrafficRecorder>();
  /** Connections opened and ended, and the bytes of the ended ones: activity() without the open. */
  private settledActivity = 0;
  private readonly opened: Counter<string>;
  private readonly closedCount: Counter<string>;
  private readonly failedCount: Counter<string>;
  private readonly sent: Counter<string>;
  private readonly received: Counter<string>;
  private readonly socketsOpen: Gauge<string>;
  private readonly xdsTerminations: Counter<string>;
  private readonly xdsMessages: Counter<string>;

  constructor(
    readonly registry: Registry,
    options: ZtunnelMetricsOptions,
  ) {
    const registers = [registry];
    const traffic = (name: string, help: string, collect?: () => void): Counter<string> =>
      new Counter({ name, help, labelNames: trafficLabelNames, registers, ...(collect ? { collect } : {}) });
    this.opened = traffic(METRIC_NAMES.connectionsOpened, "The total number of TCP connections opened");
    this.closedCount = traffic(METRIC_NAMES.connectionsClosed, "The total number of TCP connections closed");
    this.failedCount = traffic(METRIC_NAMES.connectionsFailed, "The total number of TCP connections failed");
    this.sent = traffic(
      METRIC_NAMES.sentBytes,
      "The size of total bytes sent during response in case of a TCP connection",
      () => this.flushSent(),
    );
    this.received = traffic(
      METRIC_NAMES.receivedBytes,
      "The size of total bytes received during request in case of a TCP connection",
      () => this.flushReceived(),
    );
    this.socketsOpen = new Gauge({
      name: METRIC_NAMES.socketsOpen,
      help: "The number of TCP connections open",
      labelNames: ["reporter"],
      registers,
    });
    const build = new Gauge({
      name: METRIC_NAMES.build,
      help: "Istio component build info",
      labelNames: ["component", "tag"],
      registers,
    });
    build.set({ component: "ztunnel", tag: options.buildTag ?? "unknown" }, 1);
    this.xdsTerminations = new Counter({
      name: METRIC_NAMES.xdsTerminations,
      help: "The total number of completed connections to xds server",
      labelNames: ["reason"],
      registers,
    });
    this.xdsMessages = new Counter({
      name: METRIC_NAMES.xdsMessages,
      help: "Total number of messages received",
      labelNames: ["url"],
      registers,
    });
  }

  connectionOpened(labels: TrafficLabels): ConnectionRecorder {
    const recorder = new TrafficRecorder(labels, this);
    this.opened.inc(labels);
    this.socketsOpen.inc({ reporter: labels.reporter });
    this.openRecorders.add(recorder);
    this.settledActivity += 1;
    return recorder;
  }

  openConnections(): number {
    return this.openRecorders.size;
  }

  activity(): number {
    // Summed when asked (every few seconds) rather than per chunk on the data path.
    let total = this.settledActivity;
    for (const r of this.openRecorders) total += r.bytesSent + r.bytesReceived;
    return total;
  }

  xdsMessage(typeUrl: string): void {
    this.xdsMessages.inc({ url: typeUrl });
  }

  xdsConnectionTerminated(reason: XdsTerminationReason): void {
    this.xdsTerminations.inc({ reason });
  }

  /** Called once per recorder, by its first `closed` or `failed`. */
  end(recorder: TrafficRecorder, failureFlags: string | undefined): void {
    recorder.open = false;
    this.openRecorders.delete(recorder);
    this.settledActivity += 1 + recorder.bytesSent + recorder.bytesReceived;
    // Bytes count under the labels the connection opened with, as they did at earlier scrapes.
    this.flushOne(recorder);
    const labels =
      failureFlags === undefined ? recorder.labels : withResponseFlags(recorder.labels, failureFlags);
    this.closedCount.inc(labels);
    if (failureFlags !== undefined) this.failedCount.inc(labels);
    this.socketsOpen.dec({ reporter: recorder.labels.reporter });
  }

  private flushOne(recorder: TrafficRecorder): void {
    if (recorder.pendingSent > 0) this.sent.inc(recorder.labels, recorder.pendingSent);
    if (recorder.pendingReceived > 0) this.received.inc(recorder.labels, recorder.pendingReceived);
    recorder.pendingSent = 0;
    recorder.pendingReceived = 0;
  }

  private flushSent(): void {
    for (const r of this.openRecorders) {
      if (r.pendingSent > 0) {
        this.sent.inc(r.labels, r.pendingSent);
        r.pendingSent = 0;
      }
    }
  }

  private flushReceived(): void {
    for (const r of this.openRecorders) {
      if (r.pendingReceived > 0) {
        this.received.inc(r.labels, r.pendingReceived);
        r.pendingReceived = 0;
      }
    }
  }
}

/**
 * Register ztunnel's metrics in `registry` (which must not hold metrics of these names already:
 * prom-client refuses a second registration).
 */
export function createZtunnelMetrics(
  registry: Registry,
  options: ZtunnelMetricsOptions = {},
): ZtunnelMetrics {
  return new TrafficMetrics(registry, options);
}
