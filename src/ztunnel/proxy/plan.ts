import type { ZtunnelState } from "../state/index.js";
import { authorize } from "../policy/index.js";
import type { AuthorizationDecision } from "../policy/index.js";
import { TunnelProtocol } from "../../xds/types.js";
import type { Service, Workload } from "../../xds/types.js";

// What the ztunnel does with a connection, decided from its state alone. These are pure: the
// effects (sockets, TLS, HBONE) live in the handlers that carry a plan out.

/** Ports of the ztunnel itself; a connection captured towards one of them would loop. */
export const ZTUNNEL_PORTS = { outbound: 15001, inboundPlaintext: 15006, inbound: 15008 } as const;
const ILLEGAL_DESTINATION_PORTS: ReadonlySet<number> = new Set(Object.values(ZTUNNEL_PORTS));

export interface CapturedConnection {
  /** The client's address: TPROXY keeps it as the accepted socket's remote address. */
  readonly sourceIp: string;
  /** The original destination: the accepted socket's local address under TPROXY. */
  readonly destinationIp: string;
  readonly destinationPort: number;
}

/** Where the connection goes once the service (if any) has been resolved to an endpoint. */
export interface Target {
  readonly ip: string;
  readonly port: number;
  readonly workload?: Workload;
  readonly service?: Service;
}

export type OutboundPlan =
  | { readonly kind: "refuse"; readonly reason: string; readonly source?: Workload }
  /** To a destination outside the mesh: plain TCP from the client's address. */
  | { readonly kind: "passthrough"; readonly source: Workload; readonly target: Target }
  /** To a meshed workload another ztunnel serves: HBONE to its pod address. */
  | {
      readonly kind: "hbone";
      readonly source: Workload;
      readonly sourceIdentity: string;
      readonly target: Target & { readonly workload: Workload };
      readonly destinationIdentity: string;
      /** Identities the peer's certificate may carry (the workload's, and the service's SANs). */
      readonly expectedIdentities: readonly string[];
    }
  /**
   * To a meshed workload this ztunnel serves too (same node, or a DPU's CPU pod to another of its
   * pods): the inbound half runs here, without a network round trip through HBONE.
   */
  | {
      readonly kind: "local";
      readonly source: Workload;
      readonly sourceIdentity: string;
      readonly target: Target & { readonly workload: Workload };
      readonly destinationIdentity: string;
    };

export function planOutbound(state: ZtunnelState, conn: CapturedConnection): OutboundPlan {
  if (ILLEGAL_DESTINATION_PORTS.has(conn.destinationPort)) {
    return { kind: "refuse", reason: `destination port ${conn.destinationPort} is a ztunnel port (loop)` };
  }
  const source = state.workloadByIp(conn.sourceIp);
  // Only meshed pods' traffic is captured outbound. A source this proxy does not know (yet) could
  // be meshed, so its connection is refused rather than sent in clear; the client retries.
  if (!source) return { kind: "refuse", reason: `source ${conn.sourceIp} is not a known workload` };
  if (!state.isServedHere(source)) {
    return {
      kind: "refuse",
      reason: `source ${source.namespace}/${source.name} is on node ${source.node ?? "(none)"}, which this proxy does not serve`,
      source,
    };
  }
  const target = resolveTarget(state, conn);
  if ("reason" in target) return { kind: "refuse", reason: target.reason, source };
  if (source.tunnelProtocol !== TunnelProtocol.HBONE) {
    // Captured while the pod was meshed; it no longer is. Its connections go out as they are.
    return { kind: "passthrough", source, target };
  }
  const destination = target.workload;
  if (!destination || destination.tunnelProtocol !== TunnelProtocol.HBONE) {
    return { kind: "passthrough", source, target };
  }
  const withWorkload = { ...target, workload: destination };
  const sourceIdentity = state.identityOf(source);
  const destinationIdentity = state.identityOf(destination);
  if (state.isServedHere(destination)) {
    return { kind: "local", source, sourceIdentity, target: withWorkload, destinationIdentity };
  }
  const expectedIdentities = [
    destinationIdentity,
    ...(target.service?.subjectAltNames ?? []).filter((san) => san !== destinationIdentity),
  ];
  return {
    kind: "hbone",
    source,
    sourceIdentity,
    target: withWorkload,
    destinationIdentity,
    expectedIdentities,
  };
}

/** A service VIP becomes one of its endpoints; a workload address stays itself. */
function resolveTarget(state: ZtunnelState, conn: CapturedConnection): Target | { reason: string } {
  const service = state.serviceByVip(conn.destinationIp);
  if (service) {
    const resolved = state.resolveService(conn.destinationIp, conn.destinationPort);
    if (!resolved.endpoint) return { reason: `no healthy upstream: ${resolved.reason}` };
    return {
      ip: resolved.endpoint.address,
      port: resolved.endpoint.targetPort,
      workload: resolved.endpoint.workload,
      service,
    };
  }
  const workload = state.workloadByIp(conn.destinationIp);
  return { ip: conn.destinationIp, port: conn.destinationPort, ...(workload ? { workload } : {}) };
}

export interface InboundRequest {
  /** The workload address and port the client asked for (HBONE authority or original destination). */
  readonly targetIp: string;
  readonly targetPort: number;
  readonly sourceIp: string;
  /** The client's verified SPIFFE id; absent for plaintext. */
  readonly sourceIdentity?: string;
}

export type InboundPlan =
  | {
      readonly kind: "reject";
      readonly status: 400 | 401;
      readonly reason: string;
      readonly workload?: Workload;
    }
  | {
      readonly kind: "forward";
      readonly workload: Workload;
      readonly identity: string;
      readonly decision: AuthorizationDecision;
    };

/** Whether this proxy takes an inbound connection for `req.targetIp`, and whether policy allows it. */
export function planInbound(state: ZtunnelState, req: InboundRequest): InboundPlan {
  const workload = state.workloadByIp(req.targetIp);
  if (!workload) return { kind: "reject", status: 400, reason: `${req.targetIp} is not a known workload` };
  if (!state.isServedHere(workload)) {
    return {
      kind: "reject",
      status: 400,
      reason: `${workload.namespace}/${workload.name} is on node ${workload.node ?? "(none)"}, which this proxy does not serve`,
      workload,
    };
  }
  if (ILLEGAL_DESTINATION_PORTS.has(req.targetPort)) {
    return { kind: "reject", status: 400, reason: `port ${req.targetPort} is a ztunnel port`, workload };
  }
  const decision = authorize(
    {
      ...(req.sourceIdentity !== undefined ? { sourceIdentity: req.sourceIdentity } : {}),
      sourceIp: req.sourceIp,
      destinationIp: req.targetIp,
      destinationPort: req.targetPort,
    },
    state.policiesFor(workload),
  );
  if (!decision.allowed) return { kind: "reject", status: 401, reason: decision.reason, workload };
  return { kind: "forward", workload, identity: state.identityOf(workload), decision };
}
