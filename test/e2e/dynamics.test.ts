import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { labApply, labDelete, labGet } from "../../src/cluster/lab-client.js";
import { DATAPLANE_MODE_LABEL } from "../../src/cluster/membership.js";
import { nodeNetns } from "../../src/lab/names.js";
import { hostOf } from "../../src/lab/verify-access.js";
import { podView } from "../../src/lab/verify-cast.js";
import type { LabPodView } from "../../src/lab/verify-cast.js";
import type { EchoExchange } from "../../src/lab/verify-traffic.js";
import { rootOnly } from "../support/netns.js";
import { ipsetMembers, table100 } from "./support/kernel.js";
import { eventually, markerFor, podOf, useLab } from "./support/lab.js";
import { accessLine, echo, markerFrames, offHostLinks, onTheWire, placeOf, target } from "./support/mesh.js";

// The cluster changing under the mesh: a pod that appears (captured before its first connection),
// a pod that goes (leaves both its CPU's and its DPU's tables), a namespace enrolled and released.

const lab = useLab("d");
const ZTUNNELS = ["ztunnel-master-dpu", "ztunnel-worker1-dpu"];
const TEST = { timeout: 120_000 };
/** Whether `ip` is captured (ipset member and table-100 route) on a CPU and on its DPU. */
async function capturedOnPair(
  ip: string,
  cpu = "master",
  dpu = "master-dpu",
): Promise<{ cpu: boolean; dpu: boolean; routes: boolean }> {
  const [c, d] = [nodeNetns(lab.name, cpu), nodeNetns(lab.name, dpu)];
  const [cpuSet, dpuSet, cpuRoutes, dpuRoutes] = await Promise.all([
    ipsetMembers(c),
    ipsetMembers(d),
    table100(c),
    table100(d),
  ]);
  return {
    cpu: cpuSet.includes(ip),
    dpu: dpuSet.includes(ip),
    routes: cpuRoutes.includes(ip) && dpuRoutes.includes(ip),
  };
}

describe("lab dynamics", { ...rootOnly, timeout: 400_000 }, () => {
  const late = `late-${randomBytes(2).toString("hex")}`;
  let latePod: LabPodView | undefined;

  it("6a. a pod applied in an enrolled namespace is captured before its first connection", TEST, async () => {
    const v = await lab.view();
    const server = podOf(v, "default/server");
    lab.logs.mark(ZTUNNELS);
    const marker = markerFor("first");
    const attempts: EchoExchange[] = [];
    const { frames, map } = await onTheWire(lab, async () => {
      const applied = await labApply(v.paths.apiSocket, [
        {
          kind: "pod",
          object: {
            name: late,
            namespace: "default",
            nodeName: "master",
            serviceAccount: late,
            labels: { app: late },
            phase: "Pending",
          },
        },
      ]);
      assert.ok(applied.ok, applied.ok ? "" : applied.error);
      // The API shows the address once the CNI ADD returned: the earliest a container could run.
      latePod = await eventually(
        `pod default/${late} to get an address`,
        async () => {
          const got = await labGet(v.paths.apiSocket);
          const p = got.ok
            ? got.state.pods.find((x) => x.namespace === "default" && x.name === late)
            : undefined;
          return p && p.ips.length > 0 ? podView(lab.name, v.nodes, v.namespaces, p) : undefined;
        },
        60_000,
        20,
      );
      const from = placeOf(latePod);
      const deadline = Date.now() + 20_000;
      do {
        attempts.push(await echo(from, server, marker));
      } while (!attempts[attempts.length - 1]?.ok && Date.now() < deadline);
    });
    assert.ok(latePod);
    assert.ok(
      attempts[attempts.length - 1]?.ok,
      `default/${late} never reached default/server: ${JSON.stringify(attempts)}`,
    );
    const peer = attempts[attempts.length - 1];
    assert.ok(peer?.ok && peer.greeting.peer.startsWith(`${latePod.ip}:`));
    // Every attempt, the first included, went through the DPU's ztunnel (refused while the proxy
    // did not know the pod yet, never sent around it).
    await accessLine(lab, "ztunnel-master-dpu", {
      direction: "outbound",
      srcIp: latePod.ip,
      to: target(server),
      error: false,
    });
    const lines = lab.logs
      .since("ztunnel-master-dpu")
      .filter((e) => e.direction === "outbound" && hostOf(e.srcAddr) === latePod?.ip);
    assert.equal(lines.length, attempts.length, `one access line per attempt: ${JSON.stringify(lines)}`);
    const seen = markerFrames(map, frames, marker);
    assert.equal(seen.between.length, 0, "the marker never crossed between nodes in clear");
    assert.ok(
      offHostLinks(map, frames, latePod.ip, server.ip).every(
        (f) => f.srcPort === 15008 || f.dstPort === 15008,
      ),
    );
  });

  it("6b. a deleted pod leaves the ipsets and table 100 of its CPU and its DPU", TEST, async () => {
    assert.ok(latePod, "needs the pod of 6a");
    const ip = latePod.ip;
    assert.deepEqual(
      await capturedOnPair(ip),
      { cpu: true, dpu: true, routes: true },
      `${ip} is captured on master and master-dpu`,
    );
    const v = await lab.view();
    const deleted = await labDelete(v.paths.apiSocket, [{ kind: "pod", namespace: "default", name: late }]);
    assert.ok(deleted.ok, deleted.ok ? "" : deleted.error);
    await eventually(
      `${ip} to leave master's and master-dpu's ipsets and tables`,
      async () => {
        const c = await capturedOnPair(ip);
        return !c.cpu && !c.dpu && !c.routes ? true : undefined;
      },
      30_000,
    );
  });

  it("6c. a namespace enrolled at run time is meshed, and released again is not", TEST, async () => {
    const v = await lab.view();
    const client = podOf(v, "legacy/client");
    const server = podOf(v, "legacy/server");
    const setLabels = async (labels: Record<string, string>): Promise<void> => {
      const r = await labApply(v.paths.apiSocket, [
        { kind: "namespace", object: { name: "legacy", labels } },
      ]);
      assert.ok(r.ok, r.ok ? "" : r.error);
    };
    await setLabels({ [DATAPLANE_MODE_LABEL]: "ambient" });
    try {
      await eventually(
        `legacy/client ${client.ip} and legacy/server ${server.ip} to be captured`,
        async () => {
          const c = await capturedOnPair(client.ip);
          const s = await capturedOnPair(server.ip, "worker1", "worker1-dpu");
          return c.cpu && c.dpu && s.cpu && s.dpu ? true : undefined;
        },
      );
      // Enrolled: its connections carry its identity over HBONE (once the proxies know the pod).
      const identity = "spiffe://cluster.local/ns/legacy/sa/client";
      await eventually("legacy/client → legacy/server over HBONE with its identity", async () => {
        lab.logs.mark(ZTUNNELS);
        const r = await echo(placeOf(client), server, markerFor("enrolled"));
        if (!r.ok) return undefined;
        const line = await lab.logs.waitFor(
          "ztunnel-worker1-dpu",
          (e) => e.direction === "inbound" && hostOf(e.srcAddr) === client.ip && e.srcIdentity === identity,
          1_000,
        );
        return line ? true : undefined;
      });
    } finally {
      await setLabels({});
    }
    // Released on both ends: the client's pair and the server's (else the server's DPU would still
    // capture what reaches the server).
    await eventually(`legacy/client ${client.ip} and legacy/server ${server.ip} to be released`, async () => {
      const c = await capturedOnPair(client.ip);
      const s = await capturedOnPair(server.ip, "worker1", "worker1-dpu");
      return [c, s].every((x) => !x.cpu && !x.dpu && !x.routes) ? true : undefined;
    });
    lab.logs.mark(ZTUNNELS);
    const r = await echo(placeOf(client), server, markerFor("released"));
    assert.ok(r.ok, `released legacy/client → legacy/server: ${r.ok ? "" : r.error}`);
    await new Promise((res) => setTimeout(res, 500));
    for (const z of ZTUNNELS)
      assert.deepEqual(
        lab.logs.since(z).filter((e) => hostOf(e.srcAddr) === client.ip),
        [],
        `${z} no longer sees legacy/client's connections`,
      );
  });
});
