import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatConflist } from "../../src/cni/conflist-install.js";
import {
  CNI_ERROR,
  CniFailure,
  DEFAULT_TIMEOUT_MS,
  parseCniArgs,
  parseCniEnv,
  parsePluginConfig,
  podIps,
  runPlugin,
} from "../../src/cni/plugin.js";
import type { PluginDeps } from "../../src/cni/plugin.js";
import { DEFAULT_AGENT_SOCKET } from "../../src/cni/protocol.js";
import type { AgentRequest, AgentResponse } from "../../src/cni/protocol.js";
import { formatCniArgs, kubernetesCniArgs, pluginStdin } from "../../src/cni/runtime.js";
import { AgentCallError, parseAgentRequest, parseAgentResponse } from "../../src/cni/socket.js";

// The pure parts of the CNI glue: the plugin's env/config parsing, its answers to each agent
// outcome (with a fake agent), the protocol validation and the runtime's stdin assembly.

const POD_ENV = {
  CNI_CONTAINERID: "c0ffee",
  CNI_NETNS: "/var/run/netns/pod1",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin",
  CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=sleep-1;K8S_POD_UID=uid-1",
};

const RESULT_1_0 = {
  cniVersion: "1.0.0",
  interfaces: [
    { name: "veth1234", mac: "aa:bb:cc:dd:ee:01" },
    { name: "eth0", sandbox: "/var/run/netns/pod1" },
  ],
  ips: [{ interface: 1, address: "10.244.0.5/24", gateway: "10.244.0.1" }],
  routes: [{ dst: "0.0.0.0/0" }],
  dns: {},
};

const RESULT_0_4 = {
  cniVersion: "0.4.0",
  interfaces: RESULT_1_0.interfaces,
  ips: [{ version: "4", interface: 1, address: "10.244.0.5/24", gateway: "10.244.0.1" }],
  routes: [{ dst: "0.0.0.0/0" }],
  dns: {},
};

function config(extra: Record<string, unknown> = {}, version = "1.0.0"): string {
  return JSON.stringify({ cniVersion: version, name: "offmesh", type: "offmesh-cni", ...extra });
}

/** A fake agent: records requests, answers with `answer` (or throws it). */
function fakeAgent(answer: AgentResponse | Error): PluginDeps & { requests: AgentRequest[]; logs: string[] } {
  const requests: AgentRequest[] = [];
  const logs: string[] = [];
  return {
    requests,
    logs,
    log: (m) => logs.push(m),
    callAgent: (_socket, req) => {
      requests.push(req);
      return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);
    },
  };
}

async function invoke(
  command: string,
  stdin: string,
  deps: PluginDeps,
  env: Record<string, string> = POD_ENV,
) {
  const outcome = await runPlugin(
    { env: { ...env, CNI_COMMAND: command }, readStdin: () => Promise.resolve(stdin) },
    deps,
  );
  return {
    ...outcome,
    json: outcome.stdout ? (JSON.parse(outcome.stdout) as Record<string, unknown>) : undefined,
  };
}

function expectCniFailure(fn: () => unknown, code: number, msg: RegExp): void {
  assert.throws(fn, (err) => {
    assert.ok(err instanceof CniFailure, `expected a CniFailure, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.msg, msg);
    return true;
  });
}

const unreachable = new AgentCallError("unreachable", DEFAULT_AGENT_SOCKET, "cannot connect", "ENOENT");

describe("offmesh-cni environment", () => {
  it("reads the pod's CNI variables and CNI_ARGS", () => {
    const env = parseCniEnv({ ...POD_ENV, CNI_COMMAND: "ADD" });
    if (env.command !== "ADD") assert.fail(`expected ADD, got ${env.command}`);
    assert.equal(env.containerId, "c0ffee");
    assert.equal(env.netns, "/var/run/netns/pod1");
    assert.equal(env.ifName, "eth0");
    assert.equal(env.args.get("K8S_POD_NAME"), "sleep-1");
    assert.equal(env.args.get("K8S_POD_UID"), "uid-1");
  });

  it("VERSION needs no other variable", () => {
    assert.deepEqual(parseCniEnv({ CNI_COMMAND: "VERSION" }), { command: "VERSION" });
  });

  it("rejects a missing or unknown command and missing variables with code 4", () => {
    expectCniFailure(() => parseCniEnv({}), 4, /CNI_COMMAND is not set/);
    expectCniFailure(() => parseCniEnv({ ...POD_ENV, CNI_COMMAND: "GC" }), 4, /unknown CNI_COMMAND "GC"/);
    expectCniFailure(
      () => parseCniEnv({ ...POD_ENV, CNI_COMMAND: "ADD", CNI_CONTAINERID: "" }),
      4,
      /CNI_CONTAINERID is not set/,
    );
    expectCniFailure(
      () => parseCniEnv({ ...POD_ENV, CNI_COMMAND: "CHECK", CNI_NETNS: undefined }),
      4,
      /CNI_NETNS is not set/,
    );
  });

  it("DEL may come without a namespace (the runtime already removed it)", () => {
    const env = parseCniEnv({ ...POD_ENV, CNI_COMMAND: "DEL", CNI_NETNS: undefined });
    assert.ok(env.command === "DEL" && env.netns === "");
  });

  it("parses CNI_ARGS pairs, keeps '=' inside values, rejects pairs without a key", () => {
    const args = parseCniArgs("IgnoreUnknown=1;K8S_POD_NAME=a=b;;X=");
    assert.deepEqual(
      [...args],
      [
        ["IgnoreUnknown", "1"],
        ["K8S_POD_NAME", "a=b"],
        ["X", ""],
      ],
    );
    expectCniFailure(() => parseCniArgs("K8S_POD_NAME"), 4, /"K8S_POD_NAME" is not KEY=VALUE/);
    expectCniFailure(() => parseCniArgs("=x"), 4, /not KEY=VALUE/);
  });
});

describe("offmesh-cni configuration", () => {
  it("applies the defaults", () => {
    const conf = parsePluginConfig(config());
    assert.equal(conf.agentSocket, DEFAULT_AGENT_SOCKET);
    assert.equal(conf.timeoutMs, DEFAULT_TIMEOUT_MS);
    assert.equal(conf.prevResult, undefined);
  });

  it("accepts 0.4.0 and 1.0.0, refuses other versions with code 1", () => {
    assert.equal(parsePluginConfig(config({}, "0.4.0")).cniVersion, "0.4.0");
    expectCniFailure(() => parsePluginConfig(config({}, "0.3.1")), 1, /incompatible CNI version 0\.3\.1/);
  });

  it("reports undecodable input with code 6 and invalid settings with code 7", () => {
    expectCniFailure(() => parsePluginConfig("{not json"), 6, /cannot decode/);
    expectCniFailure(() => parsePluginConfig("[]"), 7, /must be a JSON object/);
    expectCniFailure(
      () => parsePluginConfig(JSON.stringify({ name: "x", type: "t" })),
      7,
      /"cniVersion" is missing/,
    );
    expectCniFailure(() => parsePluginConfig(config({ name: "" })), 7, /"name" is missing/);
    expectCniFailure(() => parsePluginConfig(config({ agentSocket: "run/x.sock" })), 7, /absolute path/);
    expectCniFailure(() => parsePluginConfig(config({ timeoutMs: 0 })), 7, /"timeoutMs"/);
    expectCniFailure(() => parsePluginConfig(config({ timeoutMs: "5s" })), 7, /"timeoutMs"/);
    expectCniFailure(
      () => parsePluginConfig(config({ prevResult: [] })),
      7,
      /"prevResult" must be an object/,
    );
  });

  it("takes the pod's addresses from prevResult: sandbox side only, without prefix length", () => {
    assert.deepEqual(podIps(RESULT_1_0), ["10.244.0.5"]);
    assert.deepEqual(podIps(RESULT_0_4), ["10.244.0.5"]);
    const dual = {
      interfaces: RESULT_1_0.interfaces,
      ips: [
        { interface: 0, address: "10.244.0.1/32" },
        { interface: 1, address: "10.244.0.5/24" },
        { interface: 1, address: "fd00:10:244::5/64" },
        { address: "10.244.9.9/24" },
      ],
    };
    assert.deepEqual(podIps(dual), ["10.244.0.5", "fd00:10:244::5", "10.244.9.9"]);
    assert.deepEqual(podIps({ cniVersion: "1.0.0" }), []);
    expectCniFailure(() => podIps({ ips: [{ address: "nope/24" }] }), 7, /not an address/);
  });
});

describe("offmesh-cni commands", () => {
  it("VERSION answers 1.0.0 with 0.4.0 and 1.0.0 supported, without reading stdin", async () => {
    const outcome = await runPlugin(
      { env: { CNI_COMMAND: "VERSION" }, readStdin: () => Promise.reject(new Error("must not read")) },
      fakeAgent({ ok: true }),
    );
    assert.equal(outcome.exitCode, 0);
    assert.deepEqual(JSON.parse(outcome.stdout), {
      cniVersion: "1.0.0",
      supportedVersions: ["0.4.0", "1.0.0"],
    });
  });

  it("ADD sends the pod and its addresses and prints prevResult unchanged", async () => {
    const agent = fakeAgent({ ok: true, captured: true });
    const out = await invoke("ADD", config({ prevResult: RESULT_1_0 }), agent);
    assert.equal(out.exitCode, 0);
    assert.deepEqual(out.json, RESULT_1_0);
    assert.deepEqual(agent.requests, [
      {
        op: "add",
        pod: {
          namespace: "default",
          name: "sleep-1",
          uid: "uid-1",
          containerId: "c0ffee",
          netns: "/var/run/netns/pod1",
          ifname: "eth0",
        },
        ips: ["10.244.0.5"],
      },
    ]);
  });

  it("ADD of a 0.4.0 configuration returns the 0.4.0 result as it came", async () => {
    const out = await invoke(
      "ADD",
      config({ prevResult: RESULT_0_4 }, "0.4.0"),
      fakeAgent({ ok: true, captured: true }),
    );
    assert.equal(out.exitCode, 0);
    assert.deepEqual(out.json, RESULT_0_4);
  });

  it("ADD of a pod that is not meshed (captured: false) succeeds", async () => {
    const out = await invoke(
      "ADD",
      config({ prevResult: RESULT_1_0 }),
      fakeAgent({ ok: true, captured: false }),
    );
    assert.equal(out.exitCode, 0);
    assert.deepEqual(out.json, RESULT_1_0);
  });

  it("ADD without prevResult is an invalid configuration (7), before calling the agent", async () => {
    const agent = fakeAgent({ ok: true, captured: true });
    const out = await invoke("ADD", config(), agent);
    assert.equal(out.exitCode, 1);
    assert.equal(out.json?.code, CNI_ERROR.invalidConfig);
    assert.match(String(out.json?.msg), /needs "prevResult".*chained after/);
    assert.equal(agent.requests.length, 0);
  });

  it("ADD without the Kubernetes pod names in CNI_ARGS is an invalid environment (4)", async () => {
    const out = await invoke("ADD", config({ prevResult: RESULT_1_0 }), fakeAgent({ ok: true }), {
      ...POD_ENV,
      CNI_ARGS: "IgnoreUnknown=1",
    });
    assert.equal(out.json?.code, CNI_ERROR.invalidEnv);
    assert.match(String(out.json?.msg), /K8S_POD_NAMESPACE and K8S_POD_NAME/);
  });

  it("ADD with the agent unreachable: code 11 naming the socket and the agent", async () => {
    const out = await invoke("ADD", config({ prevResult: RESULT_1_0 }), fakeAgent(unreachable));
    assert.equal(out.exitCode, 1);
    assert.deepEqual(Object.keys(out.json ?? {}), ["cniVersion", "code", "msg", "details"]);
    assert.equal(out.json?.cniVersion, "1.0.0");
    assert.equal(out.json?.code, CNI_ERROR.tryAgainLater);
    assert.equal(
      out.json?.msg,
      `offmesh node agent is not running: cannot connect to ${DEFAULT_AGENT_SOCKET}`,
    );
    assert.match(String(out.json?.details), /ENOENT/);
  });

  it("ADD with the agent silent or hanging up: code 11", async () => {
    const timeout = new AgentCallError("timeout", "/s.sock", "the agent did not answer within 10 ms");
    const out = await invoke(
      "ADD",
      config({ prevResult: RESULT_1_0, agentSocket: "/s.sock", timeoutMs: 10 }),
      fakeAgent(timeout),
    );
    assert.equal(out.json?.code, 11);
    assert.match(
      String(out.json?.msg),
      /offmesh node agent at \/s\.sock is not answering: no answer within 10 ms/,
    );
    const closed = new AgentCallError("closed", "/s.sock", "closed");
    const out2 = await invoke("ADD", config({ prevResult: RESULT_1_0 }), fakeAgent(closed));
    assert.equal(out2.json?.code, 11);
  });

  it("ADD refused by the agent: code 100 with the agent's message; a garbled answer: 101", async () => {
    const refused = await invoke(
      "ADD",
      config({ prevResult: RESULT_1_0 }),
      fakeAgent({ ok: false, error: "ipset full" }),
    );
    assert.equal(refused.json?.code, CNI_ERROR.agentRefused);
    assert.match(String(refused.json?.msg), /refused pod default\/sleep-1/);
    assert.equal(refused.json?.details, "ipset full");
    const garbled = new AgentCallError("bad-response", "/s", 'answered "x": not JSON');
    assert.equal(
      (await invoke("ADD", config({ prevResult: RESULT_1_0 }), fakeAgent(garbled))).json?.code,
      101,
    );
    const noCaptured = await invoke("ADD", config({ prevResult: RESULT_1_0 }), fakeAgent({ ok: true }));
    assert.equal(noCaptured.json?.code, CNI_ERROR.agentProtocol);
  });

  it("an error keeps the configuration's version (0.4.0)", async () => {
    const out = await invoke("ADD", config({ prevResult: RESULT_0_4 }, "0.4.0"), fakeAgent(unreachable));
    assert.equal(out.json?.cniVersion, "0.4.0");
  });

  it("DEL tells the agent and never fails because of it", async () => {
    const agent = fakeAgent({ ok: true });
    const ok = await invoke("DEL", config(), agent);
    assert.deepEqual(ok, { exitCode: 0, stdout: "", json: undefined });
    assert.equal(agent.requests[0]?.op, "del");
    for (const answer of [unreachable, { ok: false as const, error: "busy" }]) {
      const quiet = fakeAgent(answer);
      const out = await invoke("DEL", config(), quiet);
      assert.equal(out.exitCode, 0);
      assert.equal(out.stdout, "");
      assert.match(quiet.logs.join("\n"), /DEL of pod default\/sleep-1/);
    }
  });

  it("DEL without pod names succeeds without calling the agent", async () => {
    const agent = fakeAgent({ ok: true });
    const out = await invoke("DEL", config(), agent, { ...POD_ENV, CNI_ARGS: "" });
    assert.equal(out.exitCode, 0);
    assert.equal(agent.requests.length, 0);
  });

  it("CHECK passes when the agent agrees and fails with 102 when the pod is not captured as it should be", async () => {
    const agent = fakeAgent({ ok: true, captured: true });
    const ok = await invoke("CHECK", config({ prevResult: RESULT_1_0 }), agent);
    assert.equal(ok.exitCode, 0);
    assert.equal(ok.stdout, "");
    assert.deepEqual(
      agent.requests[0] && {
        op: agent.requests[0].op,
        ips: "ips" in agent.requests[0] ? agent.requests[0].ips : [],
      },
      {
        op: "check",
        ips: ["10.244.0.5"],
      },
    );
    const bad = await invoke(
      "CHECK",
      config({ prevResult: RESULT_1_0 }),
      fakeAgent({ ok: false, error: "10.244.0.5 not in ipset" }),
    );
    assert.equal(bad.json?.code, CNI_ERROR.notCaptured);
    assert.equal(bad.json?.details, "10.244.0.5 not in ipset");
    const noPrev = await invoke("CHECK", config(), fakeAgent({ ok: true }));
    assert.equal(noPrev.json?.code, 7);
  });

  it("an unexpected failure is reported as code 103, not as a crash", async () => {
    const deps: PluginDeps = { log: () => undefined, callAgent: () => Promise.reject(new TypeError("boom")) };
    const out = await invoke("ADD", config({ prevResult: RESULT_1_0 }), deps);
    assert.equal(out.exitCode, 1);
    assert.equal(out.json?.code, CNI_ERROR.internal);
  });
});

describe("agent protocol validation", () => {
  const pod = { namespace: "ns", name: "p", containerId: "c", netns: "/n", ifname: "eth0" };

  it("accepts the four requests", () => {
    assert.deepEqual(parseAgentRequest(JSON.stringify({ op: "add", pod, ips: ["10.0.0.1"] })), {
      ok: true,
      value: { op: "add", pod, ips: ["10.0.0.1"] },
    });
    assert.equal(parseAgentRequest(JSON.stringify({ op: "del", pod })).ok, true);
    assert.equal(
      parseAgentRequest(JSON.stringify({ op: "check", pod: { ...pod, uid: "u" }, ips: [] })).ok,
      true,
    );
    assert.deepEqual(parseAgentRequest('{"op":"status"}'), { ok: true, value: { op: "status" } });
  });

  it("rejects malformed requests with a reason", () => {
    const reject = (line: string, reason: RegExp): void => {
      const parsed = parseAgentRequest(line);
      assert.equal(parsed.ok, false, line);
      if (!parsed.ok) assert.match(parsed.error, reason);
    };
    reject("hello", /not JSON/);
    reject("[1]", /JSON object/);
    reject('{"op":"nuke"}', /"op" must be one of/);
    reject(JSON.stringify({ op: "add", ips: [] }), /"pod" must be an object/);
    reject(JSON.stringify({ op: "add", pod: { ...pod, name: 3 }, ips: [] }), /"pod\.name"/);
    reject(JSON.stringify({ op: "add", pod, ips: "10.0.0.1" }), /"ips"/);
  });

  it("validates responses", () => {
    assert.deepEqual(parseAgentResponse('{"ok":true,"captured":false,"reason":"not meshed"}'), {
      ok: true,
      value: { ok: true, captured: false, reason: "not meshed" },
    });
    assert.deepEqual(parseAgentResponse('{"ok":false,"error":"x"}'), {
      ok: true,
      value: { ok: false, error: "x" },
    });
    assert.equal(parseAgentResponse('{"ok":false}').ok, false);
    assert.equal(parseAgentResponse('{"ok":"yes"}').ok, false);
    assert.equal(parseAgentResponse('{"ok":true,"captured":"yes"}').ok, false);
  });
});

describe("CNI runtime (pure parts)", () => {
  const conflist = {
    cniVersion: "1.0.0",
    name: "offmesh",
    plugins: [
      { type: "ptp", ipMasq: false },
      { type: "portmap", capabilities: { portMappings: true } },
      { type: "offmesh-cni" },
    ],
  };
  const prev = { cniVersion: "1.0.0", ips: [{ address: "10.244.0.5/24" }] };
  const ports = { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }] };

  it("gives each plugin the network's name and version, and prevResult when there is one", () => {
    assert.deepEqual(pluginStdin(conflist, conflist.plugins[0] ?? {}, undefined, ports), {
      type: "ptp",
      ipMasq: false,
      name: "offmesh",
      cniVersion: "1.0.0",
    });
    assert.deepEqual(pluginStdin(conflist, conflist.plugins[2] ?? {}, prev, ports), {
      type: "offmesh-cni",
      name: "offmesh",
      cniVersion: "1.0.0",
      prevResult: prev,
    });
  });

  it("passes runtimeConfig only to plugins declaring the capability, only when given", () => {
    const portmap = conflist.plugins[1] ?? {};
    assert.deepEqual(pluginStdin(conflist, portmap, prev, ports).runtimeConfig, ports);
    assert.equal(pluginStdin(conflist, portmap, prev, undefined).runtimeConfig, undefined);
    assert.equal(pluginStdin(conflist, portmap, prev, { bandwidth: {} }).runtimeConfig, undefined);
  });

  it("formats CNI_ARGS as kubelet passes them", () => {
    const args = kubernetesCniArgs({ namespace: "default", name: "web-0", uid: "u-1", containerId: "c1" });
    assert.equal(
      formatCniArgs(args),
      "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1",
    );
    assert.throws(() => formatCniArgs({ K: "a;b" }), /contains ";"/);
  });

  it("formats a conflist stably: name keys first, the rest sorted, whatever the input order", () => {
    const a = formatConflist({
      plugins: [{ mtu: 1500, type: "ptp", ipam: { type: "host-local", dataDir: "/d" } }],
      name: "offmesh",
      cniVersion: "1.0.0",
    });
    const b = formatConflist({
      cniVersion: "1.0.0",
      name: "offmesh",
      plugins: [{ type: "ptp", ipam: { dataDir: "/d", type: "host-local" }, mtu: 1500 }],
    });
    assert.equal(a, b);
    assert.match(a, /^\{\n {2}"cniVersion": "1\.0\.0",\n {2}"name": "offmesh",\n {2}"plugins"/);
    assert.match(a, /"type": "ptp",\n\s+"ipam": \{\n\s+"type": "host-local",\n\s+"dataDir": "\/d"/);
    assert.ok(a.endsWith("}\n"));
  });
});
