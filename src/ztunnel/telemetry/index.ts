export { accessLogFields, CONNECTION_COMPLETE, CONNECTION_FAILED, logConnection } from "./access-log.js";
export type { AccessLogFields, ConnectionLogEntry, Direction } from "./access-log.js";
export { NO_FLAGS, TRAFFIC_LABEL_NAMES, trafficLabels, UNKNOWN, withResponseFlags } from "./labels.js";
export type { Reporter, TrafficLabelInput, TrafficLabelName, TrafficLabels } from "./labels.js";
export { createZtunnelMetrics, METRIC_NAMES } from "./metrics.js";
export type {
  ConnectionRecorder,
  XdsTerminationReason,
  ZtunnelMetrics,
  ZtunnelMetricsOptions,
} from "./metrics.js";
export { observeXdsClient, terminationReason } from "./xds.js";
