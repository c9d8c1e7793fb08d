import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { agentComponent, nodeNetns } from "../../src/lab/names.js";
import { httpInNetns } from "../../src/lab/probe.js";
import { rootOnly } from "../support/netns.js";
import { offmeshState } from "./support/kernel.js";
import { eventually, markerFor, offmesh, podOf, useLab } from "./support/lab.js";
import {
  applyPolicy,
  deletePolicy,
  echo,
  echoEventually,
  echoOk,
  markerFrames,
  offHostLinks,
  onTheWire,
  placeOf,
} from "./support/mesh.js";

// Components failing and coming back: node agents, the control plane and the ztunnels restart
// without anyone repairing anything by hand, and a DPU without its ztunnel fails closed.

const lab = useLab("f");
const NODES = ["master", "master-dpu", "worker1", "worker1-dpu", "edge1"];
const TEST = { timeout: 150_000 };

async function crossNodeWorks(): Promise<void> {
  const v = await lab.view();
  await echoEventually(placeOf(podOf(v, "default/client")), podOf(v, "default/server"), 30_000);
}

describe("lab faults", { ...rootOnly, timeout: 600_000 }, () => {
  it(
    "7a. each node agent stopped leaves its rules in place (traffic flows meanwhile) and restarted keeps them",
    TEST,
    async () => {
      const v = await lab.view();
      const client = podOf(v, "default/client");
      const server = podOf(v, "default/server");
      await echoOk(placeOf(client), server, markerFor("before"), client.ip);
      for (const node of NODES) {
        const netns = nodeNetns(lab.name, node);
        const component = agentComponent(node);
        const spec = lab.processes.specOf(component);
        assert.ok(spec, `the lab knows how ${component} was started`);
        const before = await offmeshState(netns);
        await lab.processes.stop(component, 5_000, { keepSpec: true });
        assert.equal(lab.processes.pid(component), undefined, `${component} is stopped`);
        assert.equal(await offmeshState(netns), before, `${node}: the rules stay while its agent is down`);
        await echoOk(placeOf(client), server, markerFor(`no-agent-${node}`), client.ip);
        lab.processes.start(spec);
        await eventually(`${component} to be healthy again`, async () =>
          (await httpInNetns(`/var/run/netns/${netns}`, 15030, "/healthz")).status === 200 ? true : undefined,
        );
        assert.equal(await offmeshState(netns), before, `${node}: the restarted agent keeps the same rules`);
        await crossNodeWorks();
      }
    },
  );

  it(
    "7b. the control plane restarted: traffic keeps working and a policy applied afterwards still reaches the ztunnels",
    TEST,
    async () => {
      const r = await offmesh(["lab", "restart", "controlplane", "--name", lab.name]);
      assert.equal(r.code, 0, r.stderr);
      await crossNodeWorks();
      const v = await lab.view();
      const edge = podOf(v, "default/edge");
      const server = podOf(v, "default/server");
      // A change after the restart reaching the proxies shows the xDS streams came back by themselves.
      await applyPolicy(lab, "default", "e2e-after-restart", {
        selector: { matchLabels: { app: "server" } },
        action: "DENY",
        rules: [{ from: [{ source: { principals: ["cluster.local/ns/default/sa/edge"] } }] }],
      });
      try {
        await eventually("the DENY applied after the restart to take effect", async () =>
          (await echo(placeOf(edge), server, markerFor("cp"))).ok ? undefined : true,
        );
      } finally {
        await deletePolicy(lab, "default", "e2e-after-restart");
      }
      await echoEventually(placeOf(edge), server, 30_000);
    },
  );

  it(
    "7c. each ztunnel restarted (its kubelet starts it again): traffic recovers by itself",
    TEST,
    async () => {
      const v = await lab.view();
      const client = podOf(v, "default/client");
      const server = podOf(v, "default/server");
      const edge = podOf(v, "default/edge");
      for (const [node, from, to] of [
        ["master-dpu", client, server],
        ["worker1-dpu", client, server],
        ["edge1", edge, client],
      ] as const) {
        const before = lab.processes.pid(`ztunnel-${node}`);
        const r = await offmesh(["lab", "restart", `ztunnel-${node}`, "--name", lab.name]);
        assert.equal(r.code, 0, r.stderr);
        await eventually(`ztunnel-${node} to run again`, async () => {
          const pid = lab.processes.pid(`ztunnel-${node}`);
          return pid !== undefined && pid !== before ? true : undefined;
        });
        await echoEventually(placeOf(from), to, 30_000);
      }
    },
  );

  it(
    "7d. while a DPU's ztunnel is down its CPU's meshed traffic fails instead of leaving in clear, and recovers after",
    TEST,
    async () => {
      const v = await lab.view();
      const client = podOf(v, "default/client");
      const server = podOf(v, "default/server");
      const plainServer = podOf(v, "legacy/server");
      const kubelet = "kubelet-master-dpu";
      const kubeletSpec = lab.processes.specOf(kubelet);
      assert.ok(kubeletSpec);
      // The kubelet first, or it would start the ztunnel again at once.
      await lab.processes.stop(kubelet, 5_000, { keepSpec: true });
      try {
        await lab.processes.stop("ztunnel-master-dpu", 5_000, { keepSpec: true });
        const marker = markerFor("down");
        const { result, frames, map } = await onTheWire(lab, async () => [
          await echo(placeOf(client), server, marker),
          await echo(placeOf(client), plainServer, marker),
        ]);
        for (const r of result)
          assert.equal(r.ok, false, "no meshed connection gets through without the ztunnel");
        assert.equal(
          markerFrames(map, frames, marker).between.length,
          0,
          "the marker never appears between nodes",
        );
        for (const to of [server, plainServer]) {
          const leaked = offHostLinks(map, frames, client.ip, to.ip).filter(
            (f) => f.srcPort !== 15008 && f.dstPort !== 15008,
          );
          assert.deepEqual(
            leaked.map((f) => `${f.src}:${f.srcPort}→${f.dst}:${f.dstPort}`),
            [],
            `nothing of default/client → ${to.ref} leaves master-dpu in clear`,
          );
        }
      } finally {
        lab.processes.start(kubeletSpec);
      }
      await crossNodeWorks();
      await echoEventually(placeOf(client), plainServer, 30_000);
    },
  );
});
