import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** The control plane's Prometheus metrics, in a registry of its own. */
export class ControlPlaneMetrics {
  readonly registry = new Registry();
  readonly connectedProxies = new Gauge({
    name: "offmesh_xds_connected_proxies",
    help: "ztunnels with an open delta ADS stream",
    registers: [this.registry],
  });
  readonly pushes = new Counter({
    name: "offmesh_xds_pushes_total",
    help: "Delta responses sent, by type URL",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });
  readonly pushedResources = new Counter({
    name: "offmesh_xds_pushed_resources_total",
    help: "Resources sent (added or changed) in delta responses, by type URL",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });
  readonly pushLatency = new Histogram({
    name: "offmesh_xds_push_latency_seconds",
    help: "From a cluster change being indexed to the response carrying it being sent",
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly nacks = new Counter({
    name: "offmesh_xds_nacks_total",
    help: "Responses a proxy rejected, by type URL",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });
  readonly rejectedStreams = new Counter({
    name: "offmesh_xds_rejected_streams_total",
    help: "Streams refused because the proxy could not be authenticated or is not trusted",
    registers: [this.registry],
  });
  readonly csrs = new Counter({
    name: "offmesh_ca_csr_total",
    help: "Certificate requests, by result (granted, denied, invalid)",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly topologyRejections = new Counter({
    name: "offmesh_controlplane_topology_rejections_total",
    help: "Topology changes refused because the new cluster-conf.yaml was invalid",
    registers: [this.registry],
  });
  readonly indexedResources = new Gauge({
    name: "offmesh_index_resources",
    help: "Resources in the ambient index, by kind",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
}
