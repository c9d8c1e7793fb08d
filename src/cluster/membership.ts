import type { ClusterNamespace, ClusterPod } from "./types.js";

// Which pods are in the mesh: the namespace opts in with `istio.io/dataplane-mode=ambient`, a pod
// opts out with `istio.io/dataplane-mode=none` (the original's DPU ignored the opt-out: bug 16).

export const DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode";
export const AMBIENT = "ambient";
export const OPT_OUT = "none";
/** Label of ztunnel pods; a ztunnel is never captured by the mesh it implements. */
export const ZTUNNEL_APP_LABEL = { key: "app", value: "ztunnel" } as const;

export type MeshDecision = { readonly meshed: true } | { readonly meshed: false; readonly reason: string };

export function meshDecision(pod: ClusterPod, namespace: ClusterNamespace | undefined): MeshDecision {
  if (!namespace) return { meshed: false, reason: `namespace ${pod.namespace} is not known` };
  if (namespace.labels[DATAPLANE_MODE_LABEL] !== AMBIENT) {
    return {
      meshed: false,
      reason: `namespace ${pod.namespace} is not labelled ${DATAPLANE_MODE_LABEL}=${AMBIENT}`,
    };
  }
  if (pod.labels[DATAPLANE_MODE_LABEL] === OPT_OUT) {
    return { meshed: false, reason: `pod opted out with ${DATAPLANE_MODE_LABEL}=${OPT_OUT}` };
  }
  if (pod.hostNetwork) return { meshed: false, reason: "pod uses the host network" };
  if (pod.phase === "Succeeded" || pod.phase === "Failed")
    return { meshed: false, reason: `pod is ${pod.phase}` };
  if (isZtunnel(pod)) return { meshed: false, reason: "pod is a ztunnel" };
  return { meshed: true };
}

export const isZtunnel = (pod: ClusterPod): boolean =>
  pod.labels[ZTUNNEL_APP_LABEL.key] === ZTUNNEL_APP_LABEL.value;

/** `meshDecision(...).meshed` without building the reason: the control plane asks it per pod. */
export function isMeshed(pod: ClusterPod, namespace: ClusterNamespace | undefined): boolean {
  return (
    namespace?.labels[DATAPLANE_MODE_LABEL] === AMBIENT &&
    pod.labels[DATAPLANE_MODE_LABEL] !== OPT_OUT &&
    !pod.hostNetwork &&
    pod.phase !== "Succeeded" &&
    pod.phase !== "Failed" &&
    !isZtunnel(pod)
  );
}
