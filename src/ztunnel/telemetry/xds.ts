import type { EventEmitter } from "node:events";
import * as grpc from "@grpc/grpc-js";
import type { DeltaAdsClientEvents, DisconnectInfo } from "../../xds/client.js";
import type { XdsTerminationReason, ZtunnelMetrics } from "./metrics.js";

/**
 * Upstream's reason for a stream's end: `Complete` when the server ended it cleanly,
 * `ConnectionError` when it ended before any response (nothing was established), else `Error`.
 */
export function terminationReason(info: Pick<DisconnectInfo, "code" | "responses">): XdsTerminationReason {
  if (info.code === grpc.status.OK) return "Complete";
  return info.responses === 0 ? "ConnectionError" : "Error";
}

/**
 * Count the client's responses (istio_xds_message_total by type URL) and stream ends
 * (istio_xds_connection_terminations_total). Returns the function that stops counting.
 */
export function observeXdsClient(
  metrics: ZtunnelMetrics,
  client: EventEmitter<DeltaAdsClientEvents>,
): () => void {
  const onResponse = (info: DeltaAdsClientEvents["response"][0]): void => metrics.xdsMessage(info.typeUrl);
  const onDisconnected = (info: DisconnectInfo): void =>
    metrics.xdsConnectionTerminated(terminationReason(info));
  client.on("response", onResponse);
  client.on("disconnected", onDisconnected);
  return () => {
    client.off("response", onResponse);
    client.off("disconnected", onDisconnected);
  };
}
