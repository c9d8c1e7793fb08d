// The protocol between the `offmesh-cni` plugin and the node agent: one JSON request and one JSON
// response per connection, each a single line, over the agent's unix stream socket.

export const DEFAULT_AGENT_SOCKET = "/run/offmesh/cni.sock";

export interface PodRef {
  readonly namespace: string;
  readonly name: string;
  /** From CNI_ARGS K8S_POD_UID when the runtime passes it. */
  readonly uid?: string;
  readonly containerId: string;
  readonly netns: string;
  readonly ifname: string;
}

export type AgentRequest =
  /** Capture the pod if it is meshed; answer once it is captured on this node. */
  | { readonly op: "add"; readonly pod: PodRef; readonly ips: readonly string[] }
  | { readonly op: "del"; readonly pod: PodRef }
  /** Is the pod captured as it should be? */
  | { readonly op: "check"; readonly pod: PodRef; readonly ips: readonly string[] }
  | { readonly op: "status" }
  /** Run a full reconcile now (drift repair on demand) and answer with the status after it. */
  | { readonly op: "resync" };

export type AgentResponse =
  | {
      readonly ok: true;
      /** For add/check: whether the pod is (now) captured; false for a pod that is not meshed. */
      readonly captured?: boolean;
      readonly reason?: string;
      readonly status?: unknown;
    }
  | { readonly ok: false; readonly error: string };
