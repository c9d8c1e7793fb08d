import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { labApply, labDelete } from "../../../src/cluster/lab-client.js";
import { ECHO_TCP_PORT } from "../../../src/lab/kubelet.js";
import type { AccessEntry } from "../../../src/lab/verify-access.js";
import { hostOf } from "../../../src/lab/verify-access.js";
import type { LabPodView, LabView } from "../../../src/lab/verify-cast.js";
import { ztunnelOf } from "../../../src/lab/verify-cast.js";
import { peerIp, tcpEcho } from "../../../src/lab/verify-traffic.js";
import type { EchoExchange } from "../../../src/lab/verify-traffic.js";
import { framesBetween, hopOf, readWireMap, WireCapture } from "../../../src/lab/verify-wire.js";
import type { WireFrame, WireMap } from "../../../src/lab/verify-wire.js";
import type { E2eLab } from "./lab.js";

// Traffic and evidence for the end-to-end walks: an echo exchange between two places of the lab,
// the access-log line a ztunnel wrote for it, a capture of the wire around an action, policies.

export interface Place {
  readonly netns: string;
  readonly label: string;
}

export const placeOf = (p: LabPodView): Place => ({ netns: p.netns, label: p.ref });

/** One exchange with a pod's echo server. */
export const echo = (from: Place, to: LabPodView, marker: string): Promise<EchoExchange> =>
  tcpEcho({ netns: from.netns, host: to.ip, port: ECHO_TCP_PORT, payload: marker });

/** The exchange must succeed, answered by `to`, which saw `peer`. */
export async function echoOk(from: Place, to: LabPodView, marker: string, peer: string): Promise<void> {
  const r = await echo(from, to, marker);
  assert.ok(r.ok, `${from.label} → ${to.ref} failed: ${r.ok ? "" : r.error}`);
  assert.equal(r.greeting.pod, to.ref);
  assert.equal(peerIp(r.greeting), peer, `${to.ref} saw peer ${r.greeting.peer}, expected ${peer}`);
}

/** Retry an exchange until it succeeds (after a change that takes a moment to reach the proxies). */
export async function echoEventually(from: Place, to: LabPodView, ms = 20_000): Promise<EchoExchange> {
  const deadline = Date.now() + ms;
  let last: EchoExchange | undefined;
  while (Date.now() < deadline) {
    last = await echo(from, to, `retry-${randomBytes(3).toString("hex")}`);
    if (last.ok) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.fail(
    `${from.label} → ${to.ref} did not recover within ${ms} ms: ${last && !last.ok ? last.error : "no attempt"}`,
  );
}

/** The ztunnel component serving a pod's node. */
export const ztunnelFor = (view: LabView, pod: LabPodView): string =>
  ztunnelOf(view, pod.node.name).component;

export const target = (p: LabPodView): string => `${p.ip}:${ECHO_TCP_PORT}`;

/** The access-log line of a connection from `srcIp` to `to`, in `direction`, since the log's mark. */
export async function accessLine(
  lab: E2eLab,
  component: string,
  want: { direction: "inbound" | "outbound"; srcIp: string; to: string; error?: boolean },
  ms = 5_000,
): Promise<AccessEntry> {
  const found = await lab.logs.waitFor(
    component,
    (e) =>
      e.direction === want.direction &&
      hostOf(e.srcAddr) === want.srcIp &&
      (e.dstAddr === want.to || e.dstHboneAddr === want.to) &&
      (want.error === undefined || (e.error !== undefined) === want.error),
    ms,
  );
  assert.ok(
    found,
    `${component} logged no ${want.direction} connection ${want.srcIp} → ${want.to}; since the mark: ${JSON.stringify(lab.logs.since(component))}`,
  );
  return found;
}

/** Everything the wire carried while `action` ran. */
export async function onTheWire<T>(
  lab: E2eLab,
  action: () => Promise<T>,
): Promise<{ result: T; frames: WireFrame[]; map: WireMap }> {
  const view = await lab.view();
  const map = await readWireMap(view.spec);
  const capture = await WireCapture.start(lab.name, { stateDir: lab.stateDir });
  let result: T;
  try {
    result = await action();
  } catch (err) {
    capture.kill();
    throw err;
  }
  return { result, frames: await capture.stop(), map };
}

/** Frames of the flow a↔b that crossed between nodes (not a CPU's cable to its own DPU). */
export const offHostLinks = (map: WireMap, frames: readonly WireFrame[], a: string, b: string): WireFrame[] =>
  framesBetween(frames, a, b).filter((f) => !hopOf(map, f).hostLink);

/** Frames anywhere on the wire carrying `marker`, split by host link or not. */
export function markerFrames(
  map: WireMap,
  frames: readonly WireFrame[],
  marker: string,
): { host: number; between: WireFrame[] } {
  const needle = Buffer.from(marker);
  const hits = frames.filter((f) => f.bytes.includes(needle));
  return {
    host: hits.filter((f) => hopOf(map, f).hostLink).length,
    between: hits.filter((f) => !hopOf(map, f).hostLink),
  };
}

/** Apply an Istio AuthorizationPolicy through the lab API, as `kubectl apply` would. */
export async function applyPolicy(lab: E2eLab, namespace: string, name: string, spec: object): Promise<void> {
  const view = await lab.view();
  const r = await labApply(view.paths.apiSocket, [
    { kind: "policy", object: { namespace, name, spec: JSON.parse(JSON.stringify(spec)) as never } },
  ]);
  assert.ok(r.ok, `applying policy ${namespace}/${name}: ${r.ok ? "" : r.error}`);
}

export async function deletePolicy(lab: E2eLab, namespace: string, name: string): Promise<void> {
  const view = await lab.view();
  const r = await labDelete(view.paths.apiSocket, [{ kind: "policy", namespace, name }], {
    ignoreMissing: true,
  });
  assert.ok(r.ok, `deleting policy ${namespace}/${name}: ${r.ok ? "" : r.error}`);
}
