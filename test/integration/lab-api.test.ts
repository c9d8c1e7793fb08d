import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, describe, it } from "node:test";
import { Command, CommanderError } from "commander";
import { pino } from "pino";
import { addLabApiCommands } from "../../src/cli/lab-api.js";
import { runCli } from "../../src/cli/main.js";
import {
  labApply,
  LabApiCallError,
  LabApiUnavailableError,
  LabClusterSource,
  labDelete,
  labGet,
} from "../../src/cluster/lab-client.js";
import type { ClusterEvent, ClusterPod } from "../../src/cluster/types.js";
import { startControlPlane } from "../../src/controlplane/daemon.js";
import { workloadUid } from "../../src/controlplane/index/workload.js";
import type { ApplyObject } from "../../src/lab/api/protocol.js";
import { stateBody } from "../../src/lab/api/protocol.js";
import { LabApiInUseError, LabApiServer, LabStateFileError } from "../../src/lab/api/server.js";
import { TYPE_URL } from "../../src/xds/types.js";
import { SEED_NODES, seedTopologyText } from "../support/cluster.js";
import { captureIo } from "../support/io.js";
import { fromRoot } from "../support/paths.js";
import { until } from "../support/wait.js";

// The lab API server and its clients over a real unix socket in a temporary directory: watchers,
// bad requests, persistence across restarts, the ClusterSource that reconnects and converges, the
// control plane fed by it, and the CLI.

const dir = mkdtempSync(join(tmpdir(), "offmesh-lab-api-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

const silent = pino({ level: "silent" });
let dirs = 0;
function fresh(): { stateDir: string; socketPath: string } {
  const stateDir = join(dir, `lab${++dirs}`);
  return { stateDir, socketPath: join(stateDir, "api.sock") };
}
const startServer = (paths: { stateDir: string; socketPath: string }): Promise<LabApiServer> =>
  LabApiServer.start({ ...paths, log: silent });

const namespace = (name: string, labels: Record<string, string> = {}): ApplyObject => ({
  kind: "namespace",
  object: { name, labels },
});
const node = (i: number): ApplyObject => {
  const n = SEED_NODES[i] ?? assert.fail();
  return { kind: "node", object: { ...n, internalIPs: [...n.internalIPs], podCIDRs: [...n.podCIDRs] } };
};
const podObject = (name: string, ip: string, extra: Record<string, unknown> = {}): ApplyObject => ({
  kind: "pod",
  object: { name, namespace: "default", nodeName: "worker1", ips: [ip], ...extra },
});
const BASE: ApplyObject[] = [
  namespace("default", { "istio.io/dataplane-mode": "ambient" }),
  namespace("istio-system"),
  ...SEED_NODES.map((_, i) => node(i)),
];
const seedTopology = { text: seedTopologyText(), source: "cluster-conf.yaml" };

/** A raw protocol client: JSON lines out, parsed messages in, read in order. */
class Wire {
  private readonly queue: Record<string, unknown>[] = [];
  private buffer = "";

  private constructor(private readonly sock: Socket) {
    sock.setEncoding("utf8");
    sock.on("data", (chunk: string) => {
      this.buffer += chunk;
      for (let i = this.buffer.indexOf("\n"); i >= 0; i = this.buffer.indexOf("\n")) {
        this.queue.push(JSON.parse(this.buffer.slice(0, i)) as Record<string, unknown>);
        this.buffer = this.buffer.slice(i + 1);
      }
    });
  }

  static async open(path: string): Promise<Wire> {
    const sock = createConnection(path);
    await once(sock, "connect");
    return new Wire(sock);
  }

  send(message: unknown): void {
    this.sock.write((typeof message === "string" ? message : JSON.stringify(message)) + "\n");
  }

  async next(): Promise<Record<string, unknown>> {
    await until("a message from the lab API server", () => this.queue.length > 0);
    return this.queue.shift() ?? assert.fail();
  }

  close(): void {
    this.sock.destroy();
  }
}

const eventSummary = (m: Record<string, unknown>): string => {
  const e = m.event as { kind: string; type: string; object: { name: string } };
  return `${m.revision as number} ${e.type} ${e.kind} ${e.object.name}`;
};

describe("lab API server: watch, apply, delete", () => {
  it("a watcher gets the snapshot, then every change as an event; a second client sees the same", async () => {
    const paths = fresh();
    const api = await startServer(paths);
    const a = await Wire.open(paths.socketPath);
    const b = await Wire.open(paths.socketPath);
    try {
      assert.equal((await api.setTopology(seedTopology)).ok, true);
      a.send({ id: "w", op: "watch" });
      const snap = await a.next();
      assert.deepEqual([snap.id, snap.type, snap.revision], ["w", "snapshot", 1]);
      assert.deepEqual(snap.state, {
        nodes: [],
        namespaces: [],
        pods: [],
        services: [],
        policies: [],
        topology: seedTopology,
      });

      const applied = await labApply(paths.socketPath, [...BASE, podObject("client", "10.244.3.5")]);
      assert.ok(applied.ok, applied.ok ? "" : applied.error);
      assert.equal(applied.revision, 8);
      const uid = (applied.applied.at(-1)?.object as ClusterPod).uid;
      assert.match(uid, /^[0-9a-f-]{36}$/);
      const seen: string[] = [];
      for (let i = 0; i < 7; i++) seen.push(eventSummary(await a.next()));
      assert.deepEqual(seen, [
        "2 upsert namespace default",
        "3 upsert namespace istio-system",
        "4 upsert node master",
        "5 upsert node master-dpu",
        "6 upsert node worker1-dpu",
        "7 upsert node worker1",
        "8 upsert pod client",
      ]);

      // The second client starts later: its snapshot holds what the first saw as events.
      b.send({ id: 7, op: "watch" });
      const snapB = await b.next();
      assert.equal(snapB.revision, 8);
      assert.deepEqual(snapB.state, stateBody(api.snapshot()));

      const deleted = await labDelete(paths.socketPath, [
        { kind: "pod", namespace: "default", name: "client" },
      ]);
      assert.ok(deleted.ok);
      assert.deepEqual(deleted.deleted, [{ kind: "pod", namespace: "default", name: "client" }]);
      for (const w of [a, b]) {
        const m = await w.next();
        assert.equal(eventSummary(m), "9 delete pod client");
        assert.equal((m.event as { object: ClusterPod }).object.uid, uid);
      }
      const again = await labApply(paths.socketPath, BASE);
      assert.ok(again.ok);
      assert.deepEqual(new Set(again.applied.map((r) => r.action)), new Set(["unchanged"]));
      assert.equal(again.revision, 9, "an apply that changes nothing makes no revision");
    } finally {
      a.close();
      b.close();
      await api.stop();
    }
    assert.equal(existsSync(paths.socketPath), false, "the socket file is removed on stop");
  });

  it("answers bad requests naming the field, changes nothing, and keeps serving", async () => {
    const paths = fresh();
    const api = await startServer(paths);
    const w = await Wire.open(paths.socketPath);
    const c = await Wire.open(paths.socketPath);
    try {
      await api.apply(BASE);
      w.send({ id: 1, op: "watch" });
      const { revision } = await w.next();

      const answers: Record<string, unknown>[] = [];
      const ask = async (request: unknown): Promise<Record<string, unknown>> => {
        c.send(request);
        const m = await c.next();
        answers.push(m);
        return m;
      };
      assert.deepEqual(await ask("{not json"), {
        id: null,
        type: "result",
        ok: false,
        error: "(request): not JSON: " + errorOf(() => JSON.parse("{not json")),
        issues: [{ field: "(request)", message: "not JSON: " + errorOf(() => JSON.parse("{not json")) }],
      });
      const unknownOp = await ask({ id: 2, op: "patch" });
      assert.equal(unknownOp.id, 2);
      assert.equal(unknownOp.error, "op: must be one of watch, get, apply, delete, set-topology");
      assert.equal((await ask({ op: "get" })).error, "id: is required");
      assert.equal(
        (await ask({ id: 3, op: "apply", objects: {} })).error,
        "objects: must be a list, found a mapping",
      );
      assert.equal(
        (
          await ask({
            id: 4,
            op: "apply",
            objects: [
              {
                kind: "pod",
                object: { name: "p", namespace: "default", ips: ["10.0.0.300"], colour: "red" },
              },
            ],
          })
        ).error,
        'objects[0].ips[0]: "10.0.0.300" is not an IP address\nobjects[0].colour: unknown field "colour"',
      );
      assert.deepEqual(
        (await ask({ id: 5, op: "apply", objects: [{ kind: "deployment", object: {} }] })).issues,
        [{ index: 0, field: "kind", message: "must be one of namespace, node, service, policy, pod" }],
      );
      // All or nothing: the good namespace is not created because the pod refers to a missing node.
      const partial = await ask({
        id: 6,
        op: "apply",
        objects: [
          namespace("fresh"),
          { kind: "pod", object: { name: "p", namespace: "fresh", nodeName: "wrker1" } },
        ],
      });
      assert.deepEqual(partial.issues, [
        { index: 1, field: "nodeName", message: 'node "wrker1" does not exist' },
      ]);
      const missing = await ask({
        id: 7,
        op: "delete",
        refs: [{ kind: "pod", namespace: "default", name: "ghost" }],
      });
      assert.equal(missing.error, "refs[0].name: pod default/ghost does not exist");
      const noNs = await ask({
        id: 8,
        op: "delete",
        refs: [{ kind: "node", namespace: "x", name: "master" }],
      });
      assert.equal(noNs.error, "refs[0].namespace: a node has no namespace");
      assert.equal((await ask({ id: 9, op: "watch", extra: 1 })).error, 'extra: unknown field "extra"');
      assert.ok(answers.every((m) => m.ok === false));

      assert.equal(api.currentRevision(), revision);
      assert.equal(api.snapshot().namespaces.has("fresh"), false);
      // Nothing reached the watcher: the next event it gets is the next good change.
      const ok = await ask({ id: 10, op: "apply", objects: [namespace("fresh")] });
      assert.equal(ok.ok, true);
      assert.equal(eventSummary(await w.next()), `${(revision as number) + 1} upsert namespace fresh`);
      const missingOk = await ask({
        id: 11,
        op: "delete",
        refs: [{ kind: "pod", name: "ghost" }],
        ignoreMissing: true,
      });
      assert.deepEqual([missingOk.ok, missingOk.deleted], [true, []]);
    } finally {
      w.close();
      c.close();
      await api.stop();
    }
  });

  it("validates the topology before accepting it, and keeps the old one when refused", async () => {
    const paths = fresh();
    const api = await startServer(paths);
    try {
      assert.deepEqual(await api.setTopology(seedTopology), { ok: true, revision: 1, changed: true });
      const bad = await api.setTopology({
        text: "pairs:\n  - cpuNodeIP: 192.168.50.999\n",
        source: "bad.yaml",
      });
      assert.ok(!bad.ok);
      assert.ok(
        bad.issues.some((i) => i.file === "bad.yaml" && i.line === 2 && i.field === "pairs[0].cpuNodeIP"),
        JSON.stringify(bad.issues),
      );
      assert.deepEqual(api.snapshot().topology, seedTopology);
      assert.deepEqual(await api.setTopology(seedTopology), { ok: true, revision: 1, changed: false });
    } finally {
      await api.stop();
    }
  });
});

const errorOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  return "";
};

describe("lab API server: persistence and the socket", () => {
  it("a restarted server has the cluster it had, at the same revision", async () => {
    const paths = fresh();
    let api = await startServer(paths);
    await api.setTopology(seedTopology);
    const applied = await api.apply([
      ...BASE,
      podObject("client", "10.244.3.5"),
      {
        kind: "service",
        object: {
          namespace: "default",
          name: "echo",
          ports: [{ port: 8080, targetPort: 8080 }],
          selector: { app: "echo" },
        },
      },
    ]);
    assert.ok(applied.ok);
    const before = { state: stateBody(api.snapshot()), revision: api.currentRevision() };
    await api.stop();
    const saved = JSON.parse(readFileSync(join(paths.stateDir, "cluster.json"), "utf8")) as Record<
      string,
      unknown
    >;
    assert.deepEqual([saved.format, saved.revision], ["offmesh-lab-cluster/v1", before.revision]);

    api = await startServer(paths);
    try {
      assert.deepEqual({ state: stateBody(api.snapshot()), revision: api.currentRevision() }, before);
      assert.deepEqual(api.snapshot().services.get("default/echo")?.clusterIPs, ["10.96.0.1"]);
    } finally {
      await api.stop();
    }
  });

  it("refuses a cluster.json it cannot use, naming the field, instead of starting empty over it", async () => {
    const paths = fresh();
    mkdirSync(paths.stateDir, { recursive: true });
    writeFileSync(
      join(paths.stateDir, "cluster.json"),
      JSON.stringify({
        format: "offmesh-lab-cluster/v1",
        revision: 3,
        pods: [{ uid: "u", name: "p", namespace: "default", ips: ["bad"] }],
      }),
    );
    await assert.rejects(startServer(paths), (err: Error) => {
      assert.ok(err instanceof LabStateFileError);
      assert.equal(
        err.message,
        `${join(paths.stateDir, "cluster.json")}: pods[0].ips[0]: "bad" is not an IP address`,
      );
      return true;
    });
    assert.equal(existsSync(paths.socketPath), false);
  });

  it("replaces the socket file of a server that died, refuses one that answers, and one state directory twice", async () => {
    const paths = fresh();
    mkdirSync(paths.stateDir, { recursive: true });
    // Another process listens on the path: a live server (of any kind) is never taken over.
    const holder = spawn(process.execPath, [
      "-e",
      `require("node:net").createServer().listen(${JSON.stringify(paths.socketPath)}, () => console.log("listening"));`,
    ]);
    children.push(holder);
    let said = "";
    holder.stdout.on("data", (b: Buffer) => (said += b.toString()));
    await until("the other process listens", () => said.includes("listening"));
    await assert.rejects(startServer(paths), (err: Error) => {
      assert.ok(err instanceof LabApiInUseError);
      assert.equal(err.message, `another lab API server answers on ${paths.socketPath}`);
      return true;
    });
    // Killed: its socket file stays behind, as after a crash.
    holder.kill("SIGKILL");
    await once(holder, "exit");
    assert.equal(existsSync(paths.socketPath), true);
    const api = await startServer(paths);
    try {
      assert.ok((await labGet(paths.socketPath)).ok);
      await assert.rejects(
        LabApiServer.start({
          stateDir: paths.stateDir,
          socketPath: join(paths.stateDir, "second.sock"),
          log: silent,
        }),
        /another lab API server \(process \d+\) uses the state directory/,
      );
    } finally {
      await api.stop();
    }
  });
});

describe("LabClusterSource", () => {
  it("starts from the snapshot, follows events, and converges after the server was away", async () => {
    const paths = fresh();
    let api = await startServer(paths);
    await api.setTopology(seedTopology);
    await api.apply([
      ...BASE,
      podObject("a", "10.244.3.1"),
      podObject("b", "10.244.3.2"),
      podObject("c", "10.244.3.3"),
    ]);
    const logs: string[] = [];
    const source = new LabClusterSource({
      socketPath: paths.socketPath,
      backoff: { initialMs: 10, maxMs: 100 },
      log: { info: (m) => logs.push(`info ${m}`), warn: (m) => logs.push(`warn ${m}`) },
    });
    const events: ClusterEvent[] = [];
    const names = (): string[] => [...source.snapshot().pods.values()].map((p) => p.name).sort();
    try {
      await source.start();
      source.subscribe((e) => events.push(e));
      assert.deepEqual(names(), ["a", "b", "c"]);
      assert.deepEqual(source.snapshot().topology, seedTopology);
      assert.deepEqual(source.status(), { connected: true, revision: api.currentRevision() });

      await api.apply([podObject("d", "10.244.3.4")]);
      await until("the event for d", () => names().includes("d"));
      assert.deepEqual(
        events.map((e) => `${e.type} ${e.kind}`),
        ["upsert pod"],
      );

      await api.stop();
      await until("the source notices", () => !source.status().connected);
      // While it is away the cluster changes (through a server on another socket it does not know).
      const other = await LabApiServer.start({
        stateDir: paths.stateDir,
        socketPath: join(paths.stateDir, "other.sock"),
        log: silent,
      });
      assert.ok((await other.delete([{ kind: "pod", namespace: "default", name: "a" }])).ok);
      assert.ok(
        (
          await other.apply([
            podObject("b", "10.244.3.2", { labels: { v: "2" } }),
            podObject("e", "10.244.3.5"),
          ])
        ).ok,
      );
      await other.stop();
      events.length = 0;

      api = await startServer(paths);
      await until("the source converged", () => source.status().connected && names().join() === "b,c,d,e");
      assert.deepEqual(stateBody(source.snapshot()), stateBody(api.snapshot()));
      assert.deepEqual(
        events.map((e) => `${e.type} ${e.kind} ${(e.object as ClusterPod).name}`),
        ["upsert pod b", "upsert pod e", "delete pod a"],
      );
      assert.match(
        logs[0] ?? "",
        /^warn lab API on .*api\.sock: the server closed the connection; reconnecting$/,
      );
      assert.match(logs.at(-1) ?? "", /^info lab API on .*api\.sock: watching again at revision \d+$/);
    } finally {
      await source.stop();
      await api.stop();
    }
  });

  it("fails to start with an error naming the socket when nothing answers", async () => {
    const socketPath = join(dir, "nobody.sock");
    const source = new LabClusterSource({
      socketPath,
      startTimeoutMs: 300,
      backoff: { initialMs: 10, maxMs: 50 },
    });
    await assert.rejects(source.start(), (err: Error) => {
      assert.ok(err instanceof LabApiUnavailableError);
      assert.equal(
        err.message,
        `no lab API server answered on ${socketPath} within 300 ms (cannot connect: ENOENT); is \`offmesh lab apiserver\` running?`,
      );
      return true;
    });
    await assert.rejects(
      labGet(socketPath),
      (err: Error) => err instanceof LabApiCallError && err.kind === "unreachable",
    );
  });

  it("feeds the control plane: a pod applied through the API is in its index, and leaves it when deleted", async () => {
    const paths = fresh();
    const api = await startServer(paths);
    await api.setTopology(seedTopology);
    await api.apply(BASE);
    const running = await startControlPlane(
      {
        clusterState: "",
        clusterConf: "",
        stateDir: join(paths.stateDir, "cp"),
        listen: "127.0.0.1:0",
        trustDomain: "cluster.local",
        domain: "cluster.local",
        rootNamespace: "istio-system",
        debounceMs: 5,
        log: silent,
      },
      { source: new LabClusterSource({ socketPath: paths.socketPath }) },
    );
    const workload = workloadUid("Kubernetes", { namespace: "default", name: "client" });
    try {
      assert.ok(running.cp.currentTopology().topology, "the topology came from the API");
      const applied = await labApply(paths.socketPath, [podObject("client", "10.244.3.5")]);
      assert.ok(applied.ok);
      await until(
        "the control plane indexes the pod",
        () => running.cp.index.get(TYPE_URL.address, workload) !== undefined,
      );
      assert.ok(
        (await labDelete(paths.socketPath, [{ kind: "pod", namespace: "default", name: "client" }])).ok,
      );
      await until(
        "the control plane drops the pod",
        () => running.cp.index.get(TYPE_URL.address, workload) === undefined,
      );
    } finally {
      await running.stop();
      await api.stop();
    }
  });
});

/** `offmesh lab <args>` through a `lab` command of its own (lab.ts, which main.ts registers, is not ours). */
async function lab(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = captureIo();
  let code = -1;
  const command = new Command("lab").exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
  addLabApiCommands(command, io, (c) => (code = c));
  try {
    await command.parseAsync(args, { from: "user" });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    code = 2;
  }
  return { code, out: io.stdout(), err: io.stderr() };
}

describe("offmesh lab apply | get | delete", () => {
  it("applies manifests, lists them, deletes by name and by file; problems point into the manifest", async () => {
    const paths = fresh();
    const api = await startServer(paths);
    const sock = ["--socket", paths.socketPath];
    const base = join(paths.stateDir, "base.yaml");
    const pods = join(paths.stateDir, "pods.yaml");
    writeFileSync(
      base,
      `apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Node
metadata: {name: worker1}
spec: {podCIDR: 10.244.3.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.50.133}]}
`,
    );
    writeFileSync(
      pods,
      `apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client}
spec:
  nodeName: wrker1
status: {podIP: 10.244.3.5}
`,
    );
    try {
      const conf = join(paths.stateDir, "cluster-conf.yaml");
      writeFileSync(conf, seedTopologyText());
      let r = await lab(["apply", "-f", base, "--cluster-conf", conf, ...sock]);
      assert.equal(r.code, 0, r.err);
      assert.equal(r.out, `topology ${conf} configured\nnamespace default created\nnode worker1 created\n`);

      r = await lab(["apply", "-f", pods, ...sock]);
      assert.equal(r.code, 1);
      assert.equal(r.err, `error: ${pods}:7:13: spec.nodeName: node "wrker1" does not exist\n`);
      assert.equal(api.snapshot().pods.size, 0);

      writeFileSync(pods, readFileSync(pods, "utf8").replace("wrker1", "worker1"));
      r = await lab(["apply", "-f", pods, ...sock]);
      assert.deepEqual([r.code, r.out], [0, "pod default/client created\n"]);

      r = await lab(["get", "pods", ...sock]);
      assert.equal(r.code, 0, r.err);
      const uid = [...api.snapshot().pods.keys()][0] ?? assert.fail();
      assert.equal(
        r.out,
        `NAMESPACE  POD     NODE     IP          STATUS   UID\ndefault    client  worker1  10.244.3.5  Running  ${uid}\n`,
      );
      r = await lab(["get", "--json", ...sock]);
      assert.deepEqual(JSON.parse(r.out), { revision: api.currentRevision(), ...stateBody(api.snapshot()) });
      r = await lab(["get", ...sock]);
      assert.match(
        r.out,
        /^revision 4, topology .*cluster-conf\.yaml\n\nNODE +INTERNAL-IP +POD-CIDR +LABELS\nworker1 +192\.168\.50\.133 +10\.244\.3\.0\/24 +-\n\n/,
      );
      assert.match(r.out, /\nno services\n\nno policies\n$/);

      r = await lab(["delete", "po", "default/client", ...sock]);
      assert.deepEqual([r.code, r.out], [0, "pod default/client deleted\n"]);
      r = await lab(["delete", "pod", "client", ...sock]);
      assert.deepEqual([r.code, r.err], [1, "error: pod default/client does not exist\n"]);
      r = await lab(["delete", "-f", pods, ...sock]);
      assert.deepEqual(
        [r.code, r.err],
        [1, `error: ${pods}:4:9: metadata.name: pod default/client does not exist\n`],
      );
      r = await lab(["delete", "-f", pods, "--ignore-not-found", ...sock]);
      assert.deepEqual([r.code, r.out], [0, ""]);
      r = await lab(["apply", "-f", pods, ...sock]);
      r = await lab(["delete", "-f", base, ...sock]);
      assert.deepEqual(r.out.split("\n").sort(), [
        "",
        "namespace default deleted",
        "node worker1 deleted",
        "pod default/client deleted (with its namespace or node)",
      ]);
    } finally {
      await api.stop();
    }
  });

  it("refuses wrong usage with exit code 2, and names a socket nobody serves", async () => {
    let r = await lab(["apply"]);
    assert.deepEqual(
      [r.code, r.err],
      [2, "error: give manifests with -f <file> and/or a topology with --cluster-conf <file>\n"],
    );
    r = await lab(["delete", "pod"]);
    assert.equal(r.code, 2);
    assert.match(r.err, /give -f <file>, or <kind> and <namespace>\/<name>/);
    r = await lab(["delete", "node", "a/b"]);
    assert.deepEqual([r.code, r.err], [2, "error: a node has no namespace: give its name only\n"]);
    r = await lab(["get", "deployments"]);
    assert.deepEqual(
      [r.code, r.err],
      [2, 'error: unknown kind "deployments"; one of pods, services, policies, nodes, namespaces\n'],
    );
    const nobody = join(dir, "none", "api.sock");
    r = await lab(["get", "--socket", nobody]);
    assert.deepEqual([r.code, r.err], [1, `error: cannot connect to the lab API on ${nobody}: ENOENT\n`]);
    r = await lab(["get", "--name", "nolab"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /\/run\/offmesh-lab\/nolab\/api\.sock: ENOENT/);
  });
});

describe("--cluster-api on offmesh agent run and controlplane run", () => {
  it("needs exactly one way to the cluster", async () => {
    const cases: [string[], string][] = [
      [["agent", "run", "--node", "n"], "say where the cluster comes from: --cluster-api <socket>"],
      [
        ["agent", "run", "--node", "n", "--cluster-state", "s"],
        "--cluster-state and --cluster-conf go together",
      ],
      [
        ["agent", "run", "--node", "n", "--cluster-api", "x", "--cluster-conf", "c"],
        "--cluster-api cannot be combined with --cluster-state or --cluster-conf",
      ],
      [["controlplane", "run"], "say where the cluster comes from"],
      [
        ["controlplane", "run", "--cluster-api", "x", "--cluster-state", "s", "--cluster-conf", "c"],
        "--cluster-api cannot be combined",
      ],
    ];
    for (const [args, message] of cases) {
      const io = captureIo();
      assert.equal(await runCli(args, io), 2, args.join(" "));
      assert.ok(io.stderr().startsWith(`error: ${message}`), io.stderr());
    }
  });

  it("controlplane run --cluster-api: the daemon's cluster and topology come from the lab API server", async () => {
    const paths = fresh();
    const api = await startServer(paths);
    await api.setTopology(seedTopology);
    await api.apply(BASE);
    const cp = spawn(
      fromRoot("bin/offmesh"),
      [
        "controlplane",
        "run",
        "--cluster-api",
        paths.socketPath,
        "--state-dir",
        join(paths.stateDir, "cp"),
        "--listen",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    children.push(cp);
    let stderr = "";
    cp.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
    try {
      await until("the start line", () => /http:\/\/127\.0\.0\.1:\d+/.test(stderr), 20_000);
      const http = /http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr)?.[0] ?? assert.fail();
      await until("readiness", async () => (await fetch(`${http}/ready`)).status === 200);
      const workloads = async (): Promise<string> =>
        /offmesh_index_resources\{kind="workload"\} (\d+)/.exec(
          await (await fetch(`${http}/metrics`)).text(),
        )?.[1] ?? "";
      assert.equal(await workloads(), "0");
      assert.ok((await labApply(paths.socketPath, [podObject("client", "10.244.3.5")])).ok);
      await until("the pod is indexed", async () => (await workloads()) === "1");
      cp.kill("SIGTERM");
      const [code] = (await once(cp, "exit")) as [number | null];
      assert.equal(code, 0, stderr);
    } finally {
      await api.stop();
    }
  });
});

describe("offmesh lab apiserver", () => {
  it("serves in the foreground with the topology it was given, and stops on SIGTERM, removing its socket", async () => {
    const paths = fresh();
    const conf = join(dir, `conf-${dirs}.yaml`);
    writeFileSync(conf, seedTopologyText());
    // `lab` is registered by lab.ts; this process builds its own `lab` command around ours.
    const script = `
      import { Command } from "commander";
      const { addLabApiCommands } = await import(${JSON.stringify(pathToFileURL(fromRoot("dist/src/cli/lab-api.js")).href)});
      const lab = new Command("lab").exitOverride();
      let code = 0;
      addLabApiCommands(lab, { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) }, (c) => (code = c));
      await lab.parseAsync(process.argv.slice(1), { from: "user" });
      process.exitCode = code;
    `;
    const run = (extra: string[]): ChildProcess => {
      const child = spawn(
        process.execPath,
        ["--input-type=module", "-e", script, "apiserver", "--state-dir", paths.stateDir, ...extra],
        { cwd: fromRoot(), stdio: ["ignore", "ignore", "pipe"] },
      );
      children.push(child);
      return child;
    };
    const server = run(["--cluster-conf", conf]);
    let stderr = "";
    server.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
    await until("the start line", () => stderr.includes("offmesh lab API server on"), 20_000);
    assert.match(
      stderr,
      new RegExp(`offmesh lab API server on ${paths.socketPath}: .*cluster\\.json, revision 1`),
    );
    const got = await labGet(paths.socketPath);
    assert.ok(got.ok);
    assert.equal(got.state.topology?.source, conf);

    // A second one on the same socket refuses to start and leaves the first alone.
    const second = run([]);
    let secondErr = "";
    second.stderr?.on("data", (b: Buffer) => (secondErr += b.toString()));
    const [secondCode] = (await once(second, "exit")) as [number | null];
    assert.equal(secondCode, 1);
    assert.match(secondErr, /error: another lab API server \(process \d+\) uses the state directory/);
    assert.ok((await labGet(paths.socketPath)).ok);

    server.kill("SIGTERM");
    const [code] = (await once(server, "exit")) as [number | null];
    assert.equal(code, 0, stderr);
    assert.equal(existsSync(paths.socketPath), false);
  });
});
