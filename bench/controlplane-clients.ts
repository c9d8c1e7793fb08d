// Child process of controlplane.bench.ts: N delta ADS clients, as N ztunnels would connect.
// Reports over IPC: when every client holds the whole initial state, and when each watched
// resource name reached every client. Times are epoch milliseconds with sub-ms precision,
// comparable across the two processes.
import * as grpc from "@grpc/grpc-js";
import { createAdsClient } from "../src/xds/grpc.js";
import type { DeltaDiscoveryResponse } from "../src/xds/messages.js";
import { TYPE_URL } from "../src/xds/types.js";

interface Start {
  readonly mode: "offmesh" | "baseline";
  readonly target: string;
  readonly rootCa?: string;
  readonly tokens: readonly string[];
  readonly expect: number;
}

const now = (): number => performance.timeOrigin + performance.now();
const send = (m: unknown): void => void process.send?.(m);

process.once("message", (msg: Start) => {
  const seen = new Map<string, number[]>();
  const record = (name: string): void => {
    let list = seen.get(name);
    if (!list) seen.set(name, (list = []));
    list.push(now());
    if (list.length === msg.tokens.length) send({ kind: "seen", name, at: Math.max(...list) });
  };
  if (msg.mode === "baseline") {
    // Raw streams: the transport floor, no client logic.
    const client = createAdsClient(msg.target, grpc.credentials.createSsl(Buffer.from(msg.rootCa ?? "")));
    for (let i = 0; i < msg.tokens.length; i++) {
      const stream = client.DeltaAggregatedResources(new grpc.Metadata());
      stream.on("data", (res: DeltaDiscoveryResponse) => {
        for (const r of res.resources) record(r.name);
      });
      stream.on("error", () => undefined);
      stream.write({ typeUrl: TYPE_URL.address });
    }
    send({ kind: "connected" });
    return;
  }
  // Lightweight proxies: a real delta ADS stream each (authenticated, initial wildcard request,
  // every response ACKed with its nonce) without a ztunnel's bookkeeping, so that a hundred of
  // them in one process measure the control plane rather than themselves.
  const client = createAdsClient(msg.target, grpc.credentials.createSsl(Buffer.from(msg.rootCa ?? "")));
  let complete = 0;
  msg.tokens.forEach((token, i) => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    const stream = client.DeltaAggregatedResources(md);
    let count = 0;
    stream.on("data", (res: DeltaDiscoveryResponse) => {
      const before = count;
      count += res.resources.length;
      if (before < msg.expect && count >= msg.expect && ++complete === msg.tokens.length)
        send({ kind: "initial", at: now() });
      if (before >= msg.expect) for (const r of res.resources) record(r.name);
      stream.write({ typeUrl: res.typeUrl, responseNonce: res.nonce });
    });
    stream.on("error", () => undefined);
    stream.write({ node: { id: `ztunnel~bench~${i}` }, typeUrl: TYPE_URL.address });
  });
  process.once("disconnect", () => client.close());
});
