import type { Logger } from "pino";
import type { Service, Workload } from "../../xds/types.js";

// One access log line per connection, with upstream ztunnel's field names, so log pipelines built
// for upstream read offmesh's unchanged. Fields that are not known are left out, as upstream does.

export type Direction = "inbound" | "outbound";

export interface ConnectionLogEntry {
  readonly direction: Direction;
  /** The client's `ip:port` (formatSocketAddress). */
  readonly sourceAddress: string;
  readonly source?: Workload;
  /** The client's SPIFFE id. */
  readonly sourceIdentity?: string;
  /** The `ip:port` dialled: the workload's, or the HBONE port of the ztunnel in front of it. */
  readonly destinationAddress: string;
  /** The `ip:port` carried inside HBONE (the CONNECT target), for tunnelled connections. */
  readonly hboneAddress?: string;
  readonly destination?: Workload;
  readonly destinationService?: Service;
  readonly destinationIdentity?: string;
  /** Source to destination (ConnectionRecorder.bytesSent). */
  readonly bytesSent: number;
  /** Destination to source. */
  readonly bytesReceived: number;
  readonly durationMs: number;
  /** Why the connection failed; makes the message `connection failed`. */
  readonly error?: string;
  /** Why a policy denied it (AuthorizationDecision.reason). */
  readonly reason?: string;
}

export type AccessLogFields = Record<string, string | number>;

export const CONNECTION_COMPLETE = "connection complete";
export const CONNECTION_FAILED = "connection failed";

/** The fields of one access log line, in upstream's order. */
export function accessLogFields(entry: ConnectionLogEntry): AccessLogFields {
  const fields: AccessLogFields = { "src.addr": entry.sourceAddress };
  const put = (name: string, value: string | undefined): void => {
    if (value) fields[name] = value;
  };
  put("src.workload", entry.source?.name);
  put("src.namespace", entry.source?.namespace);
  put("src.identity", entry.sourceIdentity);
  fields["dst.addr"] = entry.destinationAddress;
  put("dst.hbone_addr", entry.hboneAddress);
  put("dst.service", entry.destinationService?.hostname);
  put("dst.workload", entry.destination?.name);
  put("dst.namespace", entry.destination?.namespace ?? entry.destinationService?.namespace);
  put("dst.identity", entry.destinationIdentity);
  fields["direction"] = entry.direction;
  fields["bytes_sent"] = entry.bytesSent;
  fields["bytes_recv"] = entry.bytesReceived;
  fields["duration"] = `${Math.max(0, Math.round(entry.durationMs))}ms`;
  put("error", entry.error);
  put("reason", entry.reason);
  return fields;
}

/**
 * Write the line at info level: `connection complete`, or `connection failed` when the entry has
 * an error. (Upstream writes failures at error level; offmesh keeps one level so that a log level
 * of `warn` silences the access log as a whole rather than half of it.)
 */
export function logConnection(logger: Logger, entry: ConnectionLogEntry): void {
  logger.info(accessLogFields(entry), entry.error ? CONNECTION_FAILED : CONNECTION_COMPLETE);
}
