import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { stringify } from "yaml";
import { DeltaAdsClient } from "../../src/xds/client.js";
import { decodeServedNodes } from "../../src/xds/proto.js";
import { TYPE_URL } from "../../src/xds/types.js";
import { fromRoot } from "../support/paths.js";
import { until } from "../support/wait.js";

// `offmesh controlplane` as a user runs it: a daemon fed by a state file, a token issued with
// `offmesh controlplane token`, the root from `offmesh controlplane root-cert`, a proxy connecting.

const offmesh = fromRoot("bin/offmesh");
const dir = mkdtempSync(join(tmpdir(), "offmesh-cp-cli-"));
const statePath = join(dir, "cluster.yaml");
const confPath = join(dir, "cluster-conf.yaml");
const stateDir = join(dir, "state");
let daemon: ChildProcess | undefined;
after(() => {
  if (daemon?.exitCode === null) daemon.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

const run = (args: string[]): { status: number | null; stdout: string; stderr: string } => {
  const r = spawnSync(offmesh, args, { encoding: "utf8", timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
};

describe("offmesh controlplane (the daemon and its commands)", () => {
  let grpcPort = 0;
  let httpPort = 0;

  before(() => {
    writeFileSync(confPath, readFileSync(fromRoot("examples/seed/cluster-conf.yaml"), "utf8"));
    writeFileSync(
      statePath,
      stringify({
        nodes: [
          { name: "master", internalIPs: ["192.168.50.130"], podCIDRs: ["10.244.0.0/24"] },
          { name: "master-dpu", internalIPs: ["192.168.50.131"], podCIDRs: ["10.244.1.0/24"] },
        ],
        namespaces: [
          { name: "apps", labels: { "istio.io/dataplane-mode": "ambient" } },
          { name: "istio-system" },
        ],
        pods: [
          {
            uid: "uid-zt",
            name: "ztunnel-a",
            namespace: "istio-system",
            nodeName: "master-dpu",
            ips: ["10.244.1.2"],
            labels: { app: "ztunnel" },
            serviceAccount: "ztunnel",
          },
          { uid: "uid-x", name: "x", namespace: "apps", nodeName: "master", ips: ["10.244.0.5"] },
        ],
      }),
    );
  });

  it("starts, reports where it listens, and becomes ready", async () => {
    daemon = spawn(
      offmesh,
      [
        "controlplane",
        "run",
        "--cluster-state",
        statePath,
        "--cluster-conf",
        confPath,
        "--state-dir",
        stateDir,
        "--listen",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    daemon.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
    await until("the start line", () => /xDS and CA on port \d+, http:\/\/127\.0\.0\.1:\d+/.test(stderr));
    grpcPort = Number(/on port (\d+)/.exec(stderr)?.[1]);
    httpPort = Number(/http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr)?.[1]);
    await until("readiness", async () => (await fetch(`http://127.0.0.1:${httpPort}/ready`)).status === 200);
  });

  it("issues a proxy token and prints the root; a proxy connects with them", async () => {
    const token = run([
      "controlplane",
      "token",
      "--state-dir",
      stateDir,
      "--node",
      "master-dpu",
      "--pod",
      "ztunnel-a",
      "--uid",
      "uid-zt",
    ]);
    assert.equal(token.status, 0, token.stderr);
    const root = run(["controlplane", "root-cert", "--state-dir", stateDir]);
    assert.equal(root.status, 0, root.stderr);
    assert.match(root.stdout, /^-----BEGIN CERTIFICATE-----/);
    let served: string[] | undefined;
    const client = new DeltaAdsClient({
      target: `127.0.0.1:${grpcPort}`,
      credentials: { kind: "tls", rootCa: root.stdout },
      token: token.stdout.trim(),
      node: { id: "ztunnel~10.244.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local" },
      types: [
        {
          typeUrl: TYPE_URL.servedNodes,
          mode: "wildcard",
          apply: (c) => {
            for (const r of c.added) if (r.resource) served = decodeServedNodes(r.resource.value).nodes;
            return { rejected: [] };
          },
        },
      ],
    });
    try {
      await client.ready;
      assert.deepEqual(served, ["master-dpu", "master"]);
      const proxies = (await (await fetch(`http://127.0.0.1:${httpPort}/debug/proxies`)).json()) as {
        node: string;
      }[];
      assert.deepEqual(
        proxies.map((p) => p.node),
        ["master-dpu"],
      );
    } finally {
      client.close();
    }
  });

  it("says what is missing when the root does not exist yet", () => {
    const res = run(["controlplane", "root-cert", "--state-dir", join(dir, "nowhere")]);
    assert.equal(res.status, 1);
    assert.match(res.stderr, /root-cert\.pem: .*has the control plane been started with this --state-dir/);
  });

  it("stops on SIGTERM", async () => {
    const proc = daemon;
    assert.ok(proc);
    const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
    proc.kill("SIGTERM");
    assert.equal(await exited, 0);
  });
});
