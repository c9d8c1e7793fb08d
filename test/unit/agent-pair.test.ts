import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { buildFacts } from "../../src/agent/facts.js";
import {
  openReply,
  PAIR_CLOCK_SKEW_MS,
  parseBody,
  parseRequestLine,
  RequestVerifier,
  signReply,
  signRequest,
} from "../../src/agent/pair.js";
import type { PairBody, PairPod, PairReply } from "../../src/agent/pair.js";
import { judgeHold, PairHolds } from "../../src/agent/pair-holds.js";
import type { HeldPod } from "../../src/agent/pair-holds.js";
import { answerPairRequest, PairServerSupervisor } from "../../src/agent/pair-server.js";
import type { PairEndpoint } from "../../src/agent/pair-server.js";
import { admitCaller, admitHold, pairedCpu } from "../../src/agent/pair-validate.js";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import { pino } from "pino";
import { parseTopology } from "../../src/topology/index.js";
import type { Topology, TopologyNode } from "../../src/topology/index.js";
import { ambient, pod, SEED_NODES, seedTopologyText } from "../support/cluster.js";

const KEY = Buffer.from("k".repeat(64));
const OTHER_KEY = Buffer.from("x".repeat(64));
const T0 = 1_700_000_000_000;

function seedTopology(): Topology {
  const parsed = parseTopology(seedTopologyText(), "cluster-conf.yaml");
  assert.ok(parsed.ok);
  return parsed.value;
}
const SEED = seedTopology();
const node = (name: string): TopologyNode => SEED.byName.get(name) ?? assert.fail(`no ${name}`);
const MASTER = node("master");

const sleep: PairPod = { uid: "u1", name: "sleep", namespace: "apps", node: "master", ips: ["10.244.0.5"] };
const hold = (p: PairPod = sleep): PairBody => ({ op: "hold", pod: p });
const envelopeOf = (line: string): Exclude<ReturnType<typeof parseRequestLine>, { ok: false }>["value"] => {
  const parsed = parseRequestLine(line);
  assert.ok(parsed.ok, parsed.ok ? "" : parsed.error);
  return parsed.value;
};

describe("pair messages: signing and verification", () => {
  it("accepts a request signed with the shared key, once", () => {
    const verifier = new RequestVerifier(KEY, () => T0);
    const req = signRequest(KEY, hold(), T0);
    const first = verifier.verify(envelopeOf(req.line));
    assert.deepEqual(first, { ok: true, body: hold() });
    const again = verifier.verify(envelopeOf(req.line));
    assert.equal(again.ok, false);
    assert.match(again.ok ? "" : again.reason, /replayed request/);
  });

  it("refuses a request signed with another key", () => {
    const verifier = new RequestVerifier(KEY, () => T0);
    const v = verifier.verify(envelopeOf(signRequest(OTHER_KEY, hold(), T0).line));
    assert.deepEqual(v, {
      ok: false,
      credential: true,
      reason: "bad credential: the request's MAC does not verify",
    });
  });

  it("refuses a request whose body, timestamp or nonce was changed after signing", () => {
    const verifier = new RequestVerifier(KEY, () => T0);
    const env = envelopeOf(signRequest(KEY, hold(), T0).line);
    const forgedBody = JSON.stringify(hold({ ...sleep, ips: ["10.244.0.6"] }));
    for (const changed of [
      { ...env, body: forgedBody },
      { ...env, ts: env.ts + 1 },
      { ...env, nonce: "0".repeat(32) },
    ]) {
      const v = verifier.verify(changed);
      assert.equal(v.ok, false);
      assert.match(v.ok ? "" : v.reason, /bad credential/);
    }
  });

  it("refuses timestamps more than the window away, both ways, and takes those inside it", () => {
    const verifier = new RequestVerifier(KEY, () => T0);
    for (const skew of [PAIR_CLOCK_SKEW_MS + 1000, -(PAIR_CLOCK_SKEW_MS + 1000)]) {
      const v = verifier.verify(envelopeOf(signRequest(KEY, hold(), T0 + skew).line));
      assert.equal(v.ok, false);
      assert.match(v.ok ? "" : v.reason, /stale request/);
    }
    for (const skew of [PAIR_CLOCK_SKEW_MS - 1000, -(PAIR_CLOCK_SKEW_MS - 1000)]) {
      assert.equal(verifier.verify(envelopeOf(signRequest(KEY, hold(), T0 + skew).line)).ok, true);
    }
  });

  it("forgets a request's MAC once its timestamp left the window (the timestamp check takes over)", () => {
    let now = T0;
    const verifier = new RequestVerifier(KEY, () => now);
    const req = signRequest(KEY, hold(), T0);
    assert.equal(verifier.verify(envelopeOf(req.line)).ok, true);
    assert.equal(verifier.remembered, 1);
    now = T0 + PAIR_CLOCK_SKEW_MS + 1;
    const replay = verifier.verify(envelopeOf(req.line));
    assert.match(replay.ok ? "" : replay.reason, /stale request/, "still refused, now as stale");
    assert.equal(verifier.verify(envelopeOf(signRequest(KEY, hold(), now).line)).ok, true);
    assert.equal(verifier.remembered, 1, "the old MAC was dropped");
  });

  it("tells a malformed body from a bad credential", () => {
    const verifier = new RequestVerifier(KEY, () => T0);
    const v = verifier.verify(envelopeOf(signRequest(KEY, hold({ ...sleep, ips: [] }), T0).line));
    assert.equal(v.ok, false);
    assert.equal(v.ok ? undefined : v.credential, false);
    assert.match(v.ok ? "" : v.reason, /"pod\.ips" must be a non-empty list/);
  });

  it("rejects request lines that are not envelopes", () => {
    for (const [line, why] of [
      ["not json", /not JSON/],
      [`{"proto":"other/1"}`, /"proto" must be offmesh-pair\/1/],
      [`{"proto":"offmesh-pair/1","ts":"x"}`, /"ts"/],
      [`{"proto":"offmesh-pair/1","ts":1,"nonce":"zz"}`, /"nonce"/],
      [`{"proto":"offmesh-pair/1","ts":1,"nonce":"${"a".repeat(32)}","body":"{}","mac":"ab"}`, /"mac"/],
    ] as const) {
      const parsed = parseRequestLine(line);
      assert.equal(parsed.ok, false, line);
      assert.match(parsed.ok ? "" : parsed.error, why);
    }
  });

  it("parses both operations and nothing else", () => {
    assert.deepEqual(parseBody(`{"op":"release","uid":"u1"}`), {
      ok: true,
      value: { op: "release", uid: "u1" },
    });
    assert.equal(parseBody(`{"op":"capture-everything"}`).ok, false);
    assert.equal(
      parseBody(`{"op":"hold","pod":{"uid":"u","name":"n","namespace":"","node":"m","ips":["1.2.3.4"]}}`).ok,
      false,
    );
  });

  it("binds a reply to its request and to the key", () => {
    const req = signRequest(KEY, hold(), T0);
    const reply: PairReply = { ok: true, detail: "held", captured: ["10.244.0.5"] };
    const line = signReply(KEY, req.mac, reply);
    assert.deepEqual(openReply(KEY, req.mac, line), { ok: true, value: reply });
    const other = signRequest(KEY, hold(), T0);
    const moved = openReply(KEY, other.mac, line);
    assert.equal(moved.ok, false, "a reply to another request does not verify");
    const forged = openReply(KEY, req.mac, signReply(OTHER_KEY, req.mac, reply));
    assert.match(forged.ok ? "" : forged.error, /MAC does not verify/);
  });

  it("shows what a DPU with another key said, while still refusing its answer", () => {
    const req = signRequest(OTHER_KEY, hold(), T0);
    const refusal: PairReply = { ok: false, error: "bad credential: nope", retryable: false };
    const opened = openReply(OTHER_KEY, req.mac, signReply(KEY, req.mac, refusal));
    assert.equal(opened.ok, false);
    assert.match(opened.ok ? "" : opened.error, /pair key differs.*it said: bad credential: nope/);
  });
});

describe("pair admission: who may hold what", () => {
  it("serves only on a DPU, for its own CPU", () => {
    const dpu = pairedCpu(SEED, "master-dpu");
    assert.equal(dpu.ok && dpu.cpu.name, "master");
    const cpu = pairedCpu(SEED, "master");
    assert.match(cpu.ok ? "" : cpu.reason, /master is a cpu node, not a DPU/);
    const unknown = pairedCpu(SEED, "edge9");
    assert.match(unknown.ok ? "" : unknown.reason, /edge9 is not declared/);
    const none = pairedCpu(undefined, "master-dpu", "the API has none");
    assert.deepEqual(none, {
      ok: false,
      reason: "master-dpu has no topology yet (the API has none)",
      retryable: true,
    });
  });

  it("admits the paired CPU's node address only (IPv4-mapped form included)", () => {
    assert.deepEqual(admitCaller(MASTER, "192.168.50.130"), { ok: true });
    assert.deepEqual(admitCaller(MASTER, "::ffff:192.168.50.130"), { ok: true });
    const other = admitCaller(MASTER, "192.168.50.133");
    assert.deepEqual(other, {
      ok: false,
      reason: "caller 192.168.50.133 is not master (192.168.50.130), this DPU's paired CPU",
      retryable: false,
    });
    assert.equal(admitCaller(MASTER, undefined).ok, false);
  });

  it("admits addresses inside the CPU's pod CIDRs, in canonical form, without duplicates", () => {
    const admitted = admitHold(MASTER, ["10.244.0.0/24", "fd00:244::/64"], {
      ...sleep,
      ips: ["10.244.0.5", "fd00:244:0:0::5", "10.244.0.5"],
    });
    assert.deepEqual(admitted, { ok: true, pod: { ...sleep, ips: ["10.244.0.5", "fd00:244::5"] } });
  });

  it("refuses an address outside the CPU's pod CIDR, another node's pod, and garbage", () => {
    const outside = admitHold(MASTER, ["10.244.0.0/24"], { ...sleep, ips: ["10.244.0.5", "10.244.3.7"] });
    assert.deepEqual(outside, {
      ok: false,
      reason: "pod apps/sleep: address 10.244.3.7 is outside the pod CIDR of master (10.244.0.0/24)",
      retryable: false,
    });
    const elsewhere = admitHold(MASTER, ["10.244.0.0/24"], { ...sleep, node: "worker1" });
    assert.match(elsewhere.ok ? "" : elsewhere.reason, /is on node worker1, not on master/);
    const garbage = admitHold(MASTER, ["10.244.0.0/24"], { ...sleep, ips: ["10.244.0.0/24"] });
    assert.match(garbage.ok ? "" : garbage.reason, /"10\.244\.0\.0\/24" is not an IP address/);
  });

  it("asks the caller to retry while the CPU's pod CIDR is unknown here", () => {
    const r = admitHold(MASTER, [], sleep);
    assert.equal(r.ok, false);
    assert.equal(r.ok ? undefined : r.retryable, true);
  });
});

describe("pair requests: the order of the checks", () => {
  function endpoint(): PairEndpoint & { calls: string[] } {
    const calls: string[] = [];
    return {
      calls,
      pairedCpu: () => pairedCpu(SEED, "master-dpu"),
      hold: (cpu, p) => {
        calls.push(`hold ${cpu.name} ${p.uid}`);
        return Promise.resolve({ ok: true, detail: "held", captured: [...p.ips] });
      },
      release: (cpu, uid) => {
        calls.push(`release ${cpu.name} ${uid}`);
        return Promise.resolve({ ok: true, detail: "released" });
      },
    };
  }

  it("serves a signed request from the paired CPU and signs the answer", async () => {
    const e = endpoint();
    const req = signRequest(KEY, hold(), T0);
    const a = await answerPairRequest(KEY, new RequestVerifier(KEY, () => T0), e, "192.168.50.130", req.line);
    assert.deepEqual(e.calls, ["hold master u1"]);
    assert.equal(a.op, "hold");
    assert.deepEqual(openReply(KEY, req.mac, a.line.trim()), {
      ok: true,
      value: { ok: true, detail: "held", captured: ["10.244.0.5"] },
    });
  });

  it("refuses, without calling the agent, a caller at another address even with the key", async () => {
    const e = endpoint();
    const req = signRequest(KEY, { op: "release", uid: "u1" }, T0);
    const a = await answerPairRequest(KEY, new RequestVerifier(KEY, () => T0), e, "192.168.50.133", req.line);
    assert.deepEqual(e.calls, []);
    assert.deepEqual(a.reply, {
      ok: false,
      error: "caller 192.168.50.133 is not master (192.168.50.130), this DPU's paired CPU",
      retryable: false,
    });
  });

  it("refuses a wrong key and a malformed line, still answering with a reason", async () => {
    const e = endpoint();
    const verifier = new RequestVerifier(KEY, () => T0);
    const forged = await answerPairRequest(
      KEY,
      verifier,
      e,
      "192.168.50.130",
      signRequest(OTHER_KEY, hold(), T0).line,
    );
    assert.match(forged.reply.ok ? "" : forged.reply.error, /bad credential/);
    const junk = await answerPairRequest(KEY, verifier, e, "192.168.50.130", "hello");
    assert.match(junk.reply.ok ? "" : junk.reply.error, /malformed request: not JSON/);
    assert.deepEqual(e.calls, []);
  });

  it("turns an agent failure into a retryable refusal", async () => {
    const e: PairEndpoint = { ...endpoint(), hold: () => Promise.reject(new Error("ipset exploded")) };
    const a = await answerPairRequest(
      KEY,
      new RequestVerifier(KEY, () => T0),
      e,
      "192.168.50.130",
      signRequest(KEY, hold(), T0).line,
    );
    assert.deepEqual(a.reply, { ok: false, error: "the DPU agent failed: ipset exploded", retryable: true });
  });
});

describe("held pods: the grace period", () => {
  const held: HeldPod = { ...sleep, heldAt: T0 };
  const GRACE = 60_000;
  const api = (over: Partial<Parameters<typeof pod>[0]> = {}) =>
    pod({ uid: "u1", name: "sleep", namespace: "apps", nodeName: "master", ...over });

  it("stays pending while the API does not know the pod, or knows it without an address", () => {
    assert.deepEqual(judgeHold(held, undefined, false, T0 + GRACE - 1, GRACE), { state: "pending" });
    assert.deepEqual(judgeHold(held, api({ ips: [] }), false, T0 + 10, GRACE), { state: "pending" });
  });

  it("is confirmed once the API shows the held addresses", () => {
    assert.deepEqual(judgeHold(held, api({ ips: ["10.244.0.5"] }), false, T0 + 10, GRACE), {
      state: "confirmed",
    });
  });

  it("expires when the API has not confirmed it within the grace period", () => {
    const v = judgeHold(held, api({ ips: [] }), false, T0 + GRACE, GRACE);
    assert.deepEqual(v, {
      state: "expired",
      reason: "the API did not confirm the pod within 60 s of its hold",
    });
  });

  it("is contradicted by a deletion, another node or other addresses, grace or not", () => {
    assert.equal(judgeHold(held, undefined, true, T0, GRACE).state, "contradicted");
    assert.deepEqual(judgeHold(held, api({ nodeName: "worker1" }), false, T0, GRACE), {
      state: "contradicted",
      reason: "the API places the pod on worker1",
    });
    assert.deepEqual(judgeHold(held, api({ ips: ["10.244.0.9"] }), false, T0, GRACE), {
      state: "contradicted",
      reason: "the API gives the pod 10.244.0.9, not 10.244.0.5",
    });
  });

  it("keeps the bookkeeping: renew, release, deletion of held pods only, review", () => {
    let now = T0;
    const holds = new PairHolds(GRACE, () => now);
    holds.hold(sleep);
    holds.markDeleted("not-held");
    now += GRACE - 1;
    holds.hold({ ...sleep, ips: ["10.244.0.7"] }); // a retried ADD renews the hold
    assert.deepEqual(holds.get("u1"), { ...sleep, ips: ["10.244.0.7"], heldAt: T0 + GRACE - 1 });
    now += 10;
    assert.deepEqual(
      holds.review(() => undefined),
      [],
      "renewed: not expired",
    );
    holds.hold({ ...sleep, uid: "u2" });
    holds.markDeleted("u2");
    now += GRACE;
    const removed = holds.review((uid) => (uid === "u1" ? undefined : api({ uid })));
    assert.deepEqual(
      removed.map((r) => [r.hold.uid, r.verdict.state]),
      [
        ["u1", "expired"],
        ["u2", "contradicted"],
      ],
    );
    assert.equal(holds.size, 0);
    holds.hold(sleep);
    assert.equal(holds.release("u1")?.uid, "u1");
    assert.equal(holds.release("u1"), undefined);
  });
});

describe("held pods in the node facts", () => {
  it("count as the CPU's meshed pods and win over the API's view of the same uid", async () => {
    const source = new MemoryClusterSource();
    await source.start();
    for (const n of SEED_NODES) source.upsertNode(n);
    source.upsertNamespace(ambient("apps"));
    source.upsertPod(
      pod({ uid: "u1", name: "sleep", namespace: "apps", nodeName: "master", phase: "Pending" }),
    );
    source.upsertPod(
      pod({ uid: "u3", name: "web", namespace: "apps", nodeName: "master", ips: ["10.244.0.9"] }),
    );
    const facts = buildFacts({
      topology: SEED,
      self: node("master-dpu"),
      snapshot: source.snapshot(),
      kernel: { nic: { name: "ens32", ip: "192.168.50.131", mtu: 1500 }, tunnel: "vxlan" },
      cniAddresses: new Map(),
      heldPods: [
        {
          uid: "u1",
          name: "sleep",
          namespace: "apps",
          node: "master",
          ips: ["10.244.0.5"],
          hostNetwork: false,
        },
        {
          uid: "u2",
          name: "new",
          namespace: "apps",
          node: "master",
          ips: ["10.244.0.6"],
          hostNetwork: false,
        },
      ],
    });
    assert.deepEqual(
      facts.pods.map((p) => [p.uid, p.ips]),
      [
        ["u3", ["10.244.0.9"]],
        ["u1", ["10.244.0.5"]],
        ["u2", ["10.244.0.6"]],
      ],
    );
  });
});

describe("the DPU's listener follows the node's role", () => {
  function fakeStarts(failFor: Set<string>): {
    supervisor: PairServerSupervisor;
    events: string[];
  } {
    const events: string[] = [];
    const supervisor = new PairServerSupervisor(
      (address) => {
        events.push(`start ${address}`);
        if (failFor.has(address)) return Promise.reject(new Error("EADDRNOTAVAIL"));
        return Promise.resolve({
          address,
          port: 15031,
          close: () => {
            events.push(`close ${address}`);
            return Promise.resolve();
          },
        });
      },
      pino({ level: "silent" }),
    );
    return { supervisor, events };
  }

  it("starts once per address, moves when the address changes, stops when not a DPU", async () => {
    const { supervisor, events } = fakeStarts(new Set());
    assert.equal(supervisor.describe(), "not serving (not a DPU)");
    await supervisor.follow("192.168.50.131");
    await supervisor.follow("192.168.50.131");
    assert.equal(supervisor.describe(), "serving 192.168.50.131:15031");
    await supervisor.follow("192.168.50.132");
    await supervisor.follow(undefined);
    assert.deepEqual(events, [
      "start 192.168.50.131",
      "close 192.168.50.131",
      "start 192.168.50.132",
      "close 192.168.50.132",
    ]);
  });

  it("says why it cannot listen and tries again on the next follow", async () => {
    const failing = new Set(["192.168.50.131"]);
    const { supervisor, events } = fakeStarts(failing);
    await supervisor.follow("192.168.50.131");
    assert.equal(supervisor.describe(), "not serving: 192.168.50.131: EADDRNOTAVAIL");
    failing.clear();
    await supervisor.follow("192.168.50.131");
    assert.equal(supervisor.describe(), "serving 192.168.50.131:15031");
    assert.equal(events.length, 2);
  });

  it("opens nothing after close, even if a sync still asks", async () => {
    const { supervisor, events } = fakeStarts(new Set());
    await supervisor.follow("192.168.50.131");
    const closing = supervisor.close();
    void supervisor.follow("192.168.50.131");
    await closing;
    await supervisor.settled();
    assert.deepEqual(events, ["start 192.168.50.131", "close 192.168.50.131"]);
  });
});
