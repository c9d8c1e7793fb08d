import type { Service, Workload } from "../../xds/types.js";

// Istio's standard TCP metric labels, in the order upstream ztunnel exposes them. prom-client
// writes labels in the key order of the first label object a series is created with, so every
// label object is built from this list.

export const TRAFFIC_LABEL_NAMES = [
  "reporter",
  "source_workload",
  "source_canonical_service",
  "source_canonical_revision",
  "source_workload_namespace",
  "source_principal",
  "source_app",
  "source_version",
  "source_cluster",
  "destination_service",
  "destination_service_namespace",
  "destination_service_name",
  "destination_workload",
  "destination_canonical_service",
  "destination_canonical_revision",
  "destination_workload_namespace",
  "destination_principal",
  "destination_app",
  "destination_version",
  "destination_cluster",
  "request_protocol",
  "response_flags",
  "connection_security_policy",
] as const;

export type TrafficLabelName = (typeof TRAFFIC_LABEL_NAMES)[number];
export type TrafficLabels = Readonly<Record<TrafficLabelName, string>>;

export const UNKNOWN = "unknown";
/** response_flags of a connection nothing went wrong with. */
export const NO_FLAGS = "-";

export type Reporter = "source" | "destination";

export interface TrafficLabelInput {
  /** Which end of the connection this ztunnel is on: outbound = source, inbound = destination. */
  readonly reporter: Reporter;
  readonly source?: Workload;
  /** The source's SPIFFE id, when known (the peer certificate inbound, the local workload outbound). */
  readonly sourcePrincipal?: string;
  readonly destination?: Workload;
  /** The service the client addressed, when it addressed a VIP. */
  readonly destinationService?: Service;
  readonly destinationPrincipal?: string;
  /** Default `-`. */
  readonly responseFlags?: string;
  /** Whether the connection is mutual TLS (HBONE); else connection_security_policy is `unknown`. */
  readonly mtls: boolean;
}

const orUnknown = (value: string | undefined): string => (value ? value : UNKNOWN);

/**
 * The label set of one connection. Workload fields as upstream reads them: workload name,
 * canonical name and revision (also app and version), namespace and cluster id. Anything missing
 * is `unknown`.
 */
export function trafficLabels(input: TrafficLabelInput): TrafficLabels {
  const src = input.source;
  const dst = input.destination;
  const svc = input.destinationService;
  // Keys in TRAFFIC_LABEL_NAMES order: the exposition writes them as they are inserted.
  return {
    reporter: input.reporter,
    source_workload: orUnknown(src?.workloadName),
    source_canonical_service: orUnknown(src?.canonicalName),
    source_canonical_revision: orUnknown(src?.canonicalRevision),
    source_workload_namespace: orUnknown(src?.namespace),
    source_principal: orUnknown(input.sourcePrincipal),
    source_app: orUnknown(src?.canonicalName),
    source_version: orUnknown(src?.canonicalRevision),
    source_cluster: orUnknown(src?.clusterId),
    destination_service: orUnknown(svc?.hostname),
    destination_service_namespace: orUnknown(svc?.namespace),
    destination_service_name: orUnknown(svc?.name),
    destination_workload: orUnknown(dst?.workloadName),
    destination_canonical_service: orUnknown(dst?.canonicalName),
    destination_canonical_revision: orUnknown(dst?.canonicalRevision),
    destination_workload_namespace: orUnknown(dst?.namespace),
    destination_principal: orUnknown(input.destinationPrincipal),
    destination_app: orUnknown(dst?.canonicalName),
    destination_version: orUnknown(dst?.canonicalRevision),
    destination_cluster: orUnknown(dst?.clusterId),
    request_protocol: "tcp",
    response_flags: input.responseFlags || NO_FLAGS,
    connection_security_policy: input.mtls ? "mutual_tls" : UNKNOWN,
  };
}

/** The same labels with other response flags, keys still in order. */
export const withResponseFlags = (labels: TrafficLabels, flags: string): TrafficLabels => ({
  ...labels,
  response_flags: flags || NO_FLAGS,
});
