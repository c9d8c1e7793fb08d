import { ECHO_TCP_PORT } from "./kubelet.js";
import { internetNetns, nodeNetns } from "./names.js";
import type { AccessLogReader } from "./verify-access.js";
import type { Cast, LabPodView, LabView, ZtunnelView } from "./verify-cast.js";
import { ztunnelOf } from "./verify-cast.js";
import type { CounterWatch, WatchedRule } from "./verify-counters.js";
import {
  CAPTURED_REPLY,
  MESHED_TCP_MARK,
  nicSkip,
  TPROXY_HBONE,
  TPROXY_OUTBOUND,
  TPROXY_PLAINTEXT,
  UDP_SKIP,
} from "./verify-rules.js";
import { cpuProcessStep, loggedEchoStep } from "./verify-steps.js";
import type { EchoStep, Evidence, WireRule } from "./verify-steps.js";
import { askUdpEchoFrom, startTcpEchoIn, startUdpEcho } from "./verify-traffic.js";

// The packet walks of the lab's design, each a live check: what it sends, where, and what it
// must find — the answer, the ztunnels' access-log lines, the rules' counters, the wire.

export interface CheckContext {
  readonly view: LabView;
  readonly cast: Cast;
  readonly logs: AccessLogReader;
  /** A payload no other check sends, to find on the wire. */
  marker(id: string): string;
}

export interface Watch extends CounterWatch {
  /** The rule must match packets of the check (else it is only reported). */
  readonly must: boolean;
}

export interface PlannedCheck {
  readonly path: string;
  readonly expected: string;
  readonly watches: readonly Watch[];
  /** Runs the traffic and its steps; returns what the wire must show, judged after the capture. */
  run(ev: Evidence): Promise<WireRule | undefined>;
}

export interface PathCheck {
  readonly id: string;
  readonly title: string;
  plan(ctx: CheckContext): PlannedCheck | { readonly skip: string };
}

/** UDP port of the check's echo: DNS's, the traffic a CPU must leave alone. */
export const UDP_CHECK_PORT = 53;

const at = (p: LabPodView): string => `${p.ref}@${p.node.name} ${p.ip}`;
const target = (p: LabPodView): string => `${p.ip}:${ECHO_TCP_PORT}`;

function nodeWatch(ctx: CheckContext, node: string, rule: WatchedRule, must: boolean): Watch {
  return { where: node, netns: nodeNetns(ctx.view.lab, node), rule, must };
}

function ztWatch(zt: ZtunnelView, rule: WatchedRule, must: boolean): Watch {
  return { where: `${zt.node}/ztunnel`, netns: zt.netns, rule, must };
}

/** The echo exchange between two pods: the answer must come from `to`, which must see `from`'s address. */
const podEcho = (from: LabPodView, to: LabPodView, marker: string): EchoStep => ({
  netns: from.netns,
  from: from.ref,
  host: to.ip,
  port: ECHO_TCP_PORT,
  marker,
  answeredBy: to.ref,
  peer: from.ip,
});

const missing = (what: string): { skip: string } => ({ skip: `the lab has no ${what}` });

// ---- a: meshed → meshed across nodes ------------------------------------------------------------

/**
 * Meshed `from` → meshed `to` on nodes served by different ztunnels: HBONE between the two, both
 * logging both identities, the server seeing the client's address, only TLS on :15008 between nodes.
 */
function hboneWalk(
  ctx: CheckContext,
  id: string,
  from: LabPodView,
  to: LabPodView,
  cpuCheck: boolean,
): PlannedCheck {
  const zf = ztunnelOf(ctx.view, from.node.name);
  const zt = ztunnelOf(ctx.view, to.node.name);
  const marker = ctx.marker(id);
  return {
    path: `${at(from)} → ${at(to)}:${ECHO_TCP_PORT}`,
    expected:
      `connects; the server sees ${from.ip}; the ${zf.node} (outbound) and ${zt.node} (inbound) ztunnels log both ` +
      `SPIFFE identities; between nodes only TLS on TCP :15008, never the plaintext marker` +
      (cpuCheck ? "; no proxy process in a CPU node's namespaces" : ""),
    watches: [
      nodeWatch(ctx, from.node.name, MESHED_TCP_MARK, true),
      ztWatch(zf, TPROXY_OUTBOUND, true),
      ztWatch(zt, TPROXY_HBONE, true),
    ],
    async run(ev) {
      const ids = { srcIdentity: from.identity, dstIdentity: to.identity };
      await loggedEchoStep(ev, ctx.logs, podEcho(from, to, marker), [
        [zf, { direction: "outbound", srcIp: from.ip, target: target(to), hbone: true, ...ids }],
        [zt, { direction: "inbound", srcIp: from.ip, target: target(to), ...ids }],
      ]);
      if (cpuCheck) await cpuProcessStep(ev, ctx.view);
      return { kind: "tunnel-only", a: from.ip, b: to.ip, marker };
    },
  };
}

const acrossNodes: PathCheck = {
  id: "a",
  title: "meshed → meshed, across nodes (HBONE)",
  plan(ctx) {
    const { client, remote } = ctx.cast;
    if (!client || !remote) return missing("meshed pods on two CPU nodes");
    return hboneWalk(ctx, "a", client, remote, true);
  },
};

// ---- b: meshed → meshed on one CPU ---------------------------------------------------------------

const sameNode: PathCheck = {
  id: "b",
  title: "meshed → meshed, same CPU node (through its DPU's ztunnel)",
  plan(ctx) {
    const { client, neighbour } = ctx.cast;
    if (!client || !neighbour) return missing("two meshed pods on one CPU node");
    const zt = ztunnelOf(ctx.view, client.node.name);
    const marker = ctx.marker("b");
    return {
      path: `${at(client)} → ${at(neighbour)}:${ECHO_TCP_PORT}`,
      expected: `connects through the ${zt.node} ztunnel (an outbound line with both identities, dst.addr the pod itself: no HBONE); the server sees ${client.ip}; the flow never leaves the ${client.node.name}–${zt.node} pair`,
      watches: [
        nodeWatch(ctx, client.node.name, MESHED_TCP_MARK, true),
        ztWatch(zt, TPROXY_OUTBOUND, true),
        ztWatch(zt, TPROXY_HBONE, false),
      ],
      async run(ev) {
        await loggedEchoStep(ev, ctx.logs, podEcho(client, neighbour, marker), [
          [
            zt,
            {
              direction: "outbound",
              srcIp: client.ip,
              target: target(neighbour),
              hbone: false,
              srcIdentity: client.identity,
              dstIdentity: neighbour.identity,
            },
          ],
        ]);
        return { kind: "stays-in-pair", a: client.ip, b: neighbour.ip, marker };
      },
    };
  },
};

// ---- c: meshed → outside the mesh ----------------------------------------------------------------

const toPlainSameNode: PathCheck = {
  id: "c1",
  title: "meshed → non-mesh, same CPU node (bug 14)",
  plan(ctx) {
    const { client, plainNeighbour } = ctx.cast;
    if (!client || !plainNeighbour) return missing("non-mesh pod on the meshed client's node");
    const zt = ztunnelOf(ctx.view, client.node.name);
    return {
      path: `${at(client)} → ${at(plainNeighbour)}:${ECHO_TCP_PORT}`,
      expected: `the ${zt.node} ztunnel passes it through back to ${client.node.name}, which takes it from its NIC without bouncing it to the DPU again: connects, the server sees ${client.ip}`,
      watches: [
        nodeWatch(ctx, client.node.name, MESHED_TCP_MARK, true),
        ztWatch(zt, TPROXY_OUTBOUND, true),
        nodeWatch(ctx, client.node.name, nicSkip(ctx.view.spec.nic), true),
      ],
      run: passthroughRun(ctx, zt, client, plainNeighbour, "c1"),
    };
  },
};

/** A meshed client's connection to a non-mesh pod: answered from the client's address, logged as passthrough. */
function passthroughRun(
  ctx: CheckContext,
  zt: ZtunnelView,
  client: LabPodView,
  to: LabPodView,
  id: string,
): PlannedCheck["run"] {
  return async (ev) => {
    await loggedEchoStep(ev, ctx.logs, podEcho(client, to, ctx.marker(id)), [
      [zt, { direction: "outbound", srcIp: client.ip, target: target(to), hbone: false, dstIdentity: null }],
    ]);
    return undefined;
  };
}

const toPlainOtherNode: PathCheck = {
  id: "c2",
  title: "meshed → non-mesh, other node",
  plan(ctx) {
    const { client, plainRemote } = ctx.cast;
    if (!client || !plainRemote) return missing("non-mesh pod on another node than the meshed client's");
    const zt = ztunnelOf(ctx.view, client.node.name);
    return {
      path: `${at(client)} → ${at(plainRemote)}:${ECHO_TCP_PORT}`,
      expected: `passthrough by the ${zt.node} ztunnel: connects, the server sees ${client.ip}`,
      watches: [nodeWatch(ctx, client.node.name, MESHED_TCP_MARK, true), ztWatch(zt, TPROXY_OUTBOUND, true)],
      run: passthroughRun(ctx, zt, client, plainRemote, "c2"),
    };
  },
};

const toInternet: PathCheck = {
  id: "c3",
  title: "meshed → the internet namespace",
  plan(ctx) {
    const { client } = ctx.cast;
    if (!client) return missing("meshed pod on a CPU node");
    const zt = ztunnelOf(ctx.view, client.node.name);
    const address = ctx.view.spec.internet.address;
    return {
      path: `${at(client)} → ${address} (a TCP echo started in ${internetNetns(ctx.view.lab)} for the check)`,
      expected: `passthrough by the ${zt.node} ztunnel: connects (the source is masqueraded on the way out)`,
      watches: [nodeWatch(ctx, client.node.name, MESHED_TCP_MARK, true), ztWatch(zt, TPROXY_OUTBOUND, true)],
      async run(ev) {
        const server = await startTcpEchoIn(internetNetns(ctx.view.lab), address, "internet");
        try {
          const exchange = {
            netns: client.netns,
            from: client.ref,
            host: address,
            port: server.port,
            marker: ctx.marker("c3"),
            answeredBy: "internet",
          };
          await loggedEchoStep(ev, ctx.logs, exchange, [
            [
              zt,
              {
                direction: "outbound",
                srcIp: client.ip,
                target: `${address}:${server.port}`,
                dstIdentity: null,
              },
            ],
          ]);
        } finally {
          await server.close();
        }
        return undefined;
      },
    };
  },
};

const udpAcross: PathCheck = {
  id: "c4",
  title: `UDP (port ${UDP_CHECK_PORT}, as DNS) → a pod on another node`,
  plan(ctx) {
    const { client } = ctx.cast;
    const to = ctx.cast.remote ?? ctx.cast.plainRemote;
    if (!client || !to) return missing("pod on another node than the meshed client's");
    const zt = ztunnelOf(ctx.view, client.node.name);
    return {
      path: `${at(client)} → ${at(to)} udp/${UDP_CHECK_PORT} (a UDP echo started in the pod for the check)`,
      expected: `not captured: the CPU skips UDP and the echo answers, having seen ${client.ip}`,
      watches: [nodeWatch(ctx, client.node.name, UDP_SKIP, true), ztWatch(zt, TPROXY_OUTBOUND, false)],
      async run(ev) {
        const stateDir = ctx.view.paths.dir;
        const echo = await startUdpEcho({
          netns: to.netns,
          port: UDP_CHECK_PORT,
          stateDir,
          lifetimeMs: 15_000,
        });
        try {
          const payload = ctx.marker("c4");
          const r = await askUdpEchoFrom({
            netns: client.netns,
            host: to.ip,
            port: UDP_CHECK_PORT,
            payload,
            stateDir,
          });
          if ("error" in r) {
            ev.see(`UDP ${client.ref} → ${to.ip}:${UDP_CHECK_PORT}: FAILED (${r.error})`);
            ev.fail(`no UDP answer: ${r.error}`);
          } else {
            ev.see(`UDP ${client.ref} → ${to.ip}:${UDP_CHECK_PORT}: answered, the echo saw ${r.peer}`);
            if (r.payload !== payload) ev.fail("the UDP answer did not carry the payload");
            if (!r.peer.startsWith(`${client.ip}:`))
              ev.fail(`the UDP echo saw ${r.peer}, expected ${client.ip}`);
          }
        } finally {
          echo.close();
        }
        return undefined;
      },
    };
  },
};

// ---- d, e: into a meshed pod from its own node --------------------------------------------------

const plainToMeshedSameNode: PathCheck = {
  id: "d",
  title: "non-mesh pod → meshed pod, same CPU node: captured (bug 15)",
  plan(ctx) {
    const { plainSource } = ctx.cast;
    const to = ctx.cast.neighbour ?? ctx.cast.client;
    if (!plainSource || !to) return missing("non-mesh pod next to a meshed pod on a CPU node");
    const zt = ztunnelOf(ctx.view, to.node.name);
    const marker = ctx.marker("d");
    return {
      path: `${at(plainSource)} → ${at(to)}:${ECHO_TCP_PORT}`,
      expected: `routed to ${zt.node} and into its ztunnel's plaintext inbound port 15006: an inbound line without a source identity; the server sees ${plainSource.ip}; never leaves the pair`,
      watches: [ztWatch(zt, TPROXY_PLAINTEXT, true)],
      async run(ev) {
        await loggedEchoStep(ev, ctx.logs, podEcho(plainSource, to, marker), [
          [
            zt,
            {
              direction: "inbound",
              srcIp: plainSource.ip,
              target: target(to),
              srcIdentity: null,
              dstIdentity: to.identity,
            },
          ],
        ]);
        return { kind: "stays-in-pair", a: plainSource.ip, b: to.ip, marker };
      },
    };
  },
};

const hostToMeshed: PathCheck = {
  id: "e",
  title: "host process of a CPU node → meshed pod on it: captured (bug 15)",
  plan(ctx) {
    const to = ctx.cast.neighbour ?? ctx.cast.client;
    if (!to) return missing("meshed pod on a CPU node");
    const zt = ztunnelOf(ctx.view, to.node.name);
    const cpu = to.node;
    const marker = ctx.marker("e");
    return {
      path: `host of ${cpu.name} ${cpu.ip} → ${at(to)}:${ECHO_TCP_PORT}`,
      expected: `table 100 sends it to ${zt.node}, whose ztunnel takes it on 15006 (inbound line from ${cpu.ip}, no identity); the replies come back through the DPU (connmark 0x80); the server sees ${cpu.ip}`,
      watches: [nodeWatch(ctx, cpu.name, CAPTURED_REPLY, true), ztWatch(zt, TPROXY_PLAINTEXT, true)],
      async run(ev) {
        const exchange = {
          netns: nodeNetns(ctx.view.lab, cpu.name),
          from: `host of ${cpu.name}`,
          host: to.ip,
          port: ECHO_TCP_PORT,
          marker,
          answeredBy: to.ref,
          peer: cpu.ip,
        };
        await loggedEchoStep(ev, ctx.logs, exchange, [
          [
            zt,
            {
              direction: "inbound",
              srcIp: cpu.ip,
              target: target(to),
              srcIdentity: null,
              dstIdentity: to.identity,
            },
          ],
        ]);
        return { kind: "stays-in-pair", a: cpu.ip, b: to.ip, marker };
      },
    };
  },
};

// ---- f: a single node's pod and a CPU node's pod -------------------------------------------------

function singleWalk(id: string, outbound: boolean): PathCheck {
  return {
    id,
    title: outbound ? "single node's pod → CPU-node pod" : "CPU-node pod → single node's pod",
    plan(ctx) {
      const { single, client } = ctx.cast;
      if (!single || !client) return missing("meshed pod on a single node and one on a CPU node");
      const [from, to] = outbound ? [single, client] : [client, single];
      return hboneWalk(ctx, id, from, to, false);
    },
  };
}

/** Every walk, in the order of the design. */
export const PATH_CHECKS: readonly PathCheck[] = [
  acrossNodes,
  sameNode,
  toPlainSameNode,
  toPlainOtherNode,
  toInternet,
  udpAcross,
  plainToMeshedSameNode,
  hostToMeshed,
  singleWalk("f1", true),
  singleWalk("f2", false),
];
