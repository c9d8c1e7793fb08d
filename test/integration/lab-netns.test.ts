import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Runner } from "../../src/netapply/exec.js";
import { e2eLabName } from "../e2e/support/lab.js";
import type { CommandResult, RunOptions } from "../../src/netapply/exec.js";
import { internetNetns, labStatePaths, nodeNetns, podNetns, wireNetns } from "../../src/lab/names.js";
import {
  createLabNetwork,
  destroyLabNetwork,
  LabNetworkError,
  listLabNamespaces,
} from "../../src/lab/netns.js";
import type { LabNetwork } from "../../src/lab/netns.js";
import { resolveSpec } from "../../src/lab/spec.js";
import type { LabSpec } from "../../src/lab/spec.js";
import { rootOnly } from "../support/netns.js";

// A real lab network from a one-pair, one-single spec: nodes reach each other and the internet
// over the wire, the root namespace gains nothing, and destroyLabNetwork removes all of it (also
// when half built, and twice). Every lab here has a random name, so nothing collides with a real
// lab or another run; the file's `after` removes it whatever happened.

const run = promisify(execFile);
const WAIT_MS = 10_000;
// The lab name doubles as the NIC name's tail, so the test can tell if a NIC ever shows up in the
// root namespace.
// Named like the end-to-end labs, so scripts/test.sh removes what a crashed run left.
const LAB = e2eLabName("n");
const OTHER_LAB = `${LAB.slice(0, 5)}x`;
const NIC = `n${LAB}`;
const children: ChildProcess[] = [];
let stateDir = "";

function specText(lab: string): string {
  return [
    `name: ${lab}`,
    `nic: ${NIC}`,
    "wire: { subnet: 192.168.77.0/24 }",
    "pairs:",
    "  - cpu: { name: cpu1, ip: 192.168.77.10, podCIDR: 10.77.0.0/24 }",
    "    dpu: { name: cpu1-dpu, ip: 192.168.77.11, podCIDR: 10.77.1.0/24 }",
    "singles:",
    "  - { name: edge1, ip: 192.168.77.20, podCIDR: 10.77.2.0/24 }",
    "",
  ].join("\n");
}

function spec(lab: string): LabSpec {
  const r = resolveSpec(specText(lab), "lab-netns.yaml");
  if ("issues" in r) throw new Error(JSON.stringify(r.issues));
  return r.spec;
}

after(async () => {
  for (const c of children) if (c.exitCode === null && c.pid !== undefined) process.kill(c.pid, "SIGKILL");
  for (const lab of [LAB, OTHER_LAB]) await destroyLabNetwork(lab).catch(() => undefined);
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

function withTimeout<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

const echoModule = fileURLToPath(new URL("../../src/lab/echo.js", import.meta.url));

/** The lab's echo server in `netns`, on `host`; resolves once it listens, with its TCP port. */
async function startEcho(netns: string, host: string, pod: string): Promise<number> {
  const script =
    `const m = await import(${JSON.stringify(echoModule)});` +
    `await m.runEchoCommand({ tcpPort: 0, httpPort: 0, podName: ${JSON.stringify(pod)}, host: ${JSON.stringify(host)} });`;
  const child = spawn("ip", ["netns", "exec", netns, process.execPath, "--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  let out = "";
  return withTimeout(
    `the echo server in ${netns}`,
    new Promise<number>((resolve, reject) => {
      child.on("exit", (code) => reject(new Error(`echo server in ${netns} exited ${code}: ${out}`)));
      child.stdout?.on("data", (b: Buffer) => {
        out += b.toString("utf8");
        const m = /serving tcp (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
    }),
  );
}

// Prints the server's greeting line, or `ERROR <code>`; exits by itself after 3 s at most.
const CLIENT = `
const net = require("node:net");
const [host, port] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) });
let buf = "";
const timer = setTimeout(() => { console.log("ERROR timeout"); process.exit(0); }, 3000);
s.on("data", (d) => {
  buf += d;
  if (buf.includes("\\n")) { console.log(buf.split("\\n")[0]); clearTimeout(timer); s.destroy(); }
});
s.on("error", (e) => { console.log("ERROR " + e.code); clearTimeout(timer); });
`;

/** Connect from `netns` to host:port and return what the echo server said it saw. */
async function probe(netns: string, host: string, port: number): Promise<{ pod: string; peer: string }> {
  const { stdout } = await run(
    "ip",
    ["netns", "exec", netns, process.execPath, "-e", CLIENT, host, String(port)],
    { timeout: WAIT_MS },
  );
  const line = stdout.trim();
  if (line.startsWith("ERROR")) assert.fail(`${netns} → ${host}:${port}: ${line}`);
  return JSON.parse(line) as { pod: string; peer: string };
}

function ipJson(args: readonly string[]): unknown {
  return JSON.parse(execFileSync("ip", ["-json", ...args], { encoding: "utf8" }) || "[]");
}

interface AddrInfo {
  family: string;
  local: string;
  prefixlen: number;
  scope?: string;
}

/** The root namespace's addresses and IPv4 routes; link-local IPv6 is left out (links of other tests come and go). */
function rootNetworkState(): { addresses: string[]; routes: string[]; links: string[] } {
  const links = ipJson(["link", "show"]) as { ifname: string }[];
  const addrs = ipJson(["addr", "show"]) as { ifname: string; addr_info?: AddrInfo[] }[];
  const addresses = addrs
    .flatMap((l) => (l.addr_info ?? []).map((a) => ({ ...a, ifname: l.ifname })))
    .filter((a) => a.scope !== "link")
    .map((a) => `${a.ifname} ${a.local}/${a.prefixlen}`)
    .sort();
  const routes = (ipJson(["-4", "route", "show", "table", "all"]) as Record<string, unknown>[])
    .map((r) => JSON.stringify(r))
    .sort();
  return { addresses, routes, links: links.map((l) => l.ifname) };
}

function inNetns<T>(netns: string, args: readonly string[]): T {
  return JSON.parse(execFileSync("ip", ["-n", netns, "-json", ...args], { encoding: "utf8" }) || "[]") as T;
}

describe("lab network", rootOnly, () => {
  let net: LabNetwork;
  let rootBefore: ReturnType<typeof rootNetworkState>;

  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "offmesh-lab-netns-"));
    rootBefore = rootNetworkState();
    net = await createLabNetwork(spec(LAB), stateDir);
  });

  it("creates the wire, the internet and one namespace per node, and records them", async () => {
    assert.deepEqual(
      await listLabNamespaces(LAB),
      [
        wireNetns(LAB),
        internetNetns(LAB),
        nodeNetns(LAB, "cpu1"),
        nodeNetns(LAB, "cpu1-dpu"),
        nodeNetns(LAB, "edge1"),
      ].sort(),
    );
    const recorded = JSON.parse(await readFile(labStatePaths(stateDir).network, "utf8")) as LabNetwork;
    assert.deepEqual(recorded, JSON.parse(JSON.stringify(net)));
  });

  it("gives each node its NIC with its address, lo up, forwarding on and a route to the internet", () => {
    for (const node of net.nodes) {
      const links = inNetns<{ ifname: string; operstate: string; flags: string[] }[]>(node.netns, [
        "link",
        "show",
      ]);
      assert.deepEqual(links.map((l) => l.ifname).sort(), ["lo", NIC].sort(), `links of ${node.netns}`);
      assert.ok(links.find((l) => l.ifname === "lo")?.flags.includes("UP"), "lo is up");
      const addrs = inNetns<{ addr_info: AddrInfo[] }[]>(node.netns, ["-4", "addr", "show", "dev", NIC]);
      assert.deepEqual(
        addrs.flatMap((a) => a.addr_info.map((i) => `${i.local}/${i.prefixlen}`)),
        [node.address],
      );
      const routes = inNetns<{ dst: string; gateway?: string; dev: string }[]>(node.netns, [
        "-4",
        "route",
        "show",
      ]);
      assert.ok(
        routes.some((r) => r.dst === "203.0.113.0/24" && r.gateway === "192.168.77.254" && r.dev === NIC),
        `route to the internet in ${node.netns}: ${JSON.stringify(routes)}`,
      );
      const forwarding = execFileSync(
        "ip",
        ["netns", "exec", node.netns, "cat", "/proc/sys/net/ipv4/ip_forward"],
        {
          encoding: "utf8",
        },
      );
      assert.equal(forwarding.trim(), "1");
    }
  });

  it("the wire is a bridge without addresses, every cable plugged into it", () => {
    const wire = wireNetns(LAB);
    const addrs = inNetns<{ ifname: string; addr_info: AddrInfo[] }[]>(wire, ["-4", "addr", "show"]);
    assert.deepEqual(
      addrs.filter((l) => l.ifname !== "lo").flatMap((l) => l.addr_info.map((a) => a.local)),
      [],
    );
    const ports = inNetns<{ ifname: string; master?: string }[]>(wire, ["link", "show", "master", "br0"]);
    assert.deepEqual(ports.map((p) => p.ifname).sort(), ["p-0", "p-1", "p-2", "p-inet"]);
  });

  it("nodes reach each other over the wire and see each other's own addresses", async () => {
    const cpu = nodeNetns(LAB, "cpu1");
    const port = await startEcho(cpu, "192.168.77.10", "cpu1");
    const fromEdge = await probe(nodeNetns(LAB, "edge1"), "192.168.77.10", port);
    assert.equal(fromEdge.pod, "cpu1");
    assert.match(fromEdge.peer, /^192\.168\.77\.20:\d+$/);
    const fromDpu = await probe(nodeNetns(LAB, "cpu1-dpu"), "192.168.77.10", port);
    assert.match(fromDpu.peer, /^192\.168\.77\.11:\d+$/);
  });

  it("every node reaches the internet at 203.0.113.10 through the wire", async () => {
    const port = await startEcho(internetNetns(LAB), "203.0.113.10", "internet");
    for (const node of net.nodes) {
      const seen = await probe(node.netns, "203.0.113.10", port);
      assert.equal(seen.pod, "internet");
      assert.match(seen.peer, new RegExp(`^${node.ip.replaceAll(".", "\\.")}:\\d+$`));
    }
  });

  it("adds nothing to the root namespace", () => {
    const now = rootNetworkState();
    assert.deepEqual(now.addresses, rootBefore.addresses);
    assert.deepEqual(now.routes, rootBefore.routes);
    assert.ok(!now.links.includes(NIC), "no node NIC in the root namespace");
    assert.ok(!now.links.some((l) => /^p-(\d+|inet)$/.test(l)), "no bridge port in the root namespace");
  });

  it("refuses to build over an existing lab and leaves it standing", async () => {
    await assert.rejects(createLabNetwork(spec(LAB), stateDir), (err: unknown) => {
      assert.ok(err instanceof LabNetworkError);
      assert.match(err.message, /already has network namespaces/);
      return true;
    });
    assert.equal((await listLabNamespaces(LAB)).length, 5);
  });

  it("destroy removes pod namespaces too, and a second destroy finds nothing", async () => {
    const pod = podNetns(LAB, "cpu1", "default", "client");
    execFileSync("ip", ["netns", "add", pod]);
    assert.ok((await listLabNamespaces(LAB)).includes(pod));
    for (const c of children) if (c.exitCode === null && c.pid !== undefined) process.kill(c.pid, "SIGTERM");
    const removed = await destroyLabNetwork(LAB);
    assert.equal(removed.length, 6);
    assert.equal(removed[0], pod, "pods go first");
    assert.deepEqual(await listLabNamespaces(LAB), []);
    assert.deepEqual(await destroyLabNetwork(LAB), []);
    assert.deepEqual(rootNetworkState().addresses, rootBefore.addresses);
  });
});

/** Fails the first `ip ... route add`, as a kernel refusing a step halfway through would. */
class FailingRouteRunner extends Runner {
  override async run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<CommandResult> {
    if (cmd === "ip" && args.includes("route") && args.includes("add"))
      return super.run("ip", ["route", "add", "not-a-route"], opts);
    return super.run(cmd, args, opts);
  }
}

describe("lab network: failures", rootOnly, () => {
  it("a build failing halfway removes what it made and says which step failed", async () => {
    const dir = await mkdtemp(join(tmpdir(), "offmesh-lab-netns-fail-"));
    try {
      await assert.rejects(
        createLabNetwork(spec(OTHER_LAB), dir, new FailingRouteRunner()),
        (err: unknown) => {
          assert.ok(err instanceof LabNetworkError);
          assert.match(err.message, /routing 203\.0\.113\.0\/24/);
          assert.equal(err.netns, nodeNetns(OTHER_LAB, "cpu1"));
          return true;
        },
      );
      assert.deepEqual(await listLabNamespaces(OTHER_LAB), []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("destroy cleans a half-made lab (some namespaces only)", async () => {
    execFileSync("ip", ["netns", "add", wireNetns(OTHER_LAB)]);
    execFileSync("ip", ["netns", "add", nodeNetns(OTHER_LAB, "cpu1")]);
    assert.equal((await listLabNamespaces(OTHER_LAB)).length, 2);
    assert.deepEqual(
      (await destroyLabNetwork(OTHER_LAB)).sort(),
      [nodeNetns(OTHER_LAB, "cpu1"), wireNetns(OTHER_LAB)].sort(),
    );
    assert.deepEqual(await listLabNamespaces(OTHER_LAB), []);
  });
});
