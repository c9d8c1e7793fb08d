import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** The agent's Prometheus metrics, in a registry of its own (several agents share a test process). */
export class AgentMetrics {
  readonly registry = new Registry();
  readonly applies = new Counter({
    name: "offmesh_agent_applies_total",
    help: "Reconciles of the node's network state, by kind (full, members) and result (ok, error)",
    labelNames: ["kind", "result"] as const,
    registers: [this.registry],
  });
  readonly applyDuration = new Histogram({
    name: "offmesh_agent_apply_duration_seconds",
    help: "Time to plan and apply the node's network state",
    labelNames: ["kind"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly writes = new Counter({
    name: "offmesh_agent_kernel_writes_total",
    help: "Commands run that changed the kernel",
    registers: [this.registry],
  });
  readonly driftRepairs = new Counter({
    name: "offmesh_agent_drift_repairs_total",
    help: "Resyncs that found the kernel differing from an unchanged plan and repaired it",
    registers: [this.registry],
  });
  readonly members = new Gauge({
    name: "offmesh_agent_members",
    help: "Pods captured by this node's rules (ipset members)",
    registers: [this.registry],
  });
  readonly topologyRejections = new Counter({
    name: "offmesh_agent_topology_rejections_total",
    help: "Topology changes refused because the new cluster-conf.yaml was invalid",
    registers: [this.registry],
  });
  readonly cniRequests = new Counter({
    name: "offmesh_agent_cni_requests_total",
    help: "Requests from the offmesh-cni plugin, by operation and result",
    labelNames: ["op", "result"] as const,
    registers: [this.registry],
  });
  readonly pairCalls = new Counter({
    name: "offmesh_agent_pair_calls_total",
    help: "Calls of a CPU agent to its DPU's agent over the pair channel, by operation and result",
    labelNames: ["op", "result"] as const,
    registers: [this.registry],
  });
  readonly pairRequests = new Counter({
    name: "offmesh_agent_pair_requests_total",
    help: "Pair-channel requests a DPU agent answered, by operation and result (ok, refused)",
    labelNames: ["op", "result"] as const,
    registers: [this.registry],
  });
  readonly pairHeld = new Gauge({
    name: "offmesh_agent_pair_held_pods",
    help: "Pods a DPU holds for its CPU that the API has not confirmed yet",
    registers: [this.registry],
  });
}
