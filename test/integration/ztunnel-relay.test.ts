import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import { after, describe, it } from "node:test";
import { relay } from "../../src/ztunnel/proxy/relay.js";
import type { RelayResult } from "../../src/ztunnel/proxy/relay.js";

// relay() between two real loopback TCP connections: client ⇄ [downstream | relay | upstream] ⇄ server.

const servers: net.Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

interface Rig {
  client: net.Socket;
  server: net.Socket;
  result: Promise<RelayResult>;
}

async function rig(opts: Parameters<typeof relay>[2] = {}): Promise<Rig> {
  const backend = net.createServer({ allowHalfOpen: true });
  const front = net.createServer({ allowHalfOpen: true });
  servers.push(backend, front);
  await Promise.all([
    new Promise<void>((r) => backend.listen(0, "127.0.0.1", r)),
    new Promise<void>((r) => front.listen(0, "127.0.0.1", r)),
  ]);
  const serverSide = once(backend, "connection") as Promise<[net.Socket]>;
  const result = new Promise<RelayResult>((resolve) => {
    front.once("connection", (downstream: net.Socket) => {
      const upstream = net.connect({
        port: (backend.address() as net.AddressInfo).port,
        host: "127.0.0.1",
        allowHalfOpen: true,
      });
      upstream.once("connect", () => resolve(relay(downstream, upstream, opts)));
    });
  });
  const client = net.connect({
    port: (front.address() as net.AddressInfo).port,
    host: "127.0.0.1",
    allowHalfOpen: true,
  });
  const [server] = await serverSide;
  // Failure cases reset the test's own ends too; each test asserts on what it expects.
  client.on("error", () => undefined);
  server.on("error", () => undefined);
  return { client, server, result };
}

function readAll(s: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on("data", (c: Buffer) => chunks.push(c));
  return new Promise((resolve, reject) => {
    s.once("end", () => resolve(Buffer.concat(chunks)));
    s.once("error", reject);
  });
}

// events.once would reject on the reset's error; only the close matters here.
const closed = (s: net.Socket): Promise<void> => new Promise((r) => s.once("close", () => r()));

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

describe("relay", () => {
  it("passes a request, a half-close, and the reply that follows it", async () => {
    const { client, server, result } = await rig();
    const request = readAll(server);
    client.end("question");
    assert.equal((await request).toString(), "question", "server saw the request and the FIN");
    const reply = readAll(client);
    server.end("answer after the client's FIN");
    assert.equal((await reply).toString(), "answer after the client's FIN");
    const r = await result;
    assert.deepEqual(r, { sentUpstream: 8, sentDownstream: 29 });
  });

  it("moves 64 MiB each way intact under back-pressure, counting bytes as they pass", async () => {
    let up = 0;
    let down = 0;
    const { client, server, result } = await rig({
      onUpstreamBytes: (n) => (up += n),
      onDownstreamBytes: (n) => (down += n),
    });
    const payload = randomBytes(64 * 1024 * 1024);
    const atServer = readAll(server);
    const atClient = readAll(client);
    client.end(payload);
    server.end(payload);
    assert.equal(sha(await atServer), sha(payload));
    assert.equal(sha(await atClient), sha(payload));
    const r = await result;
    assert.equal(r.sentUpstream, payload.length);
    assert.equal(r.sentDownstream, payload.length);
    assert.equal(up, payload.length);
    assert.equal(down, payload.length);
  });

  it("closes both legs when one side resets, and says which", async () => {
    const { client, server, result } = await rig();
    const serverClosed = closed(server);
    client.write("partial");
    // Reset once the bytes are through: with a write still queued, node closes with a FIN instead.
    await once(server, "data");
    client.resetAndDestroy();
    const r = await result;
    assert.match(r.error ?? "", /^downstream/);
    await serverClosed;
  });

  it("closes an idle connection", async () => {
    const { client, server, result } = await rig({ idleTimeoutMs: 200 });
    const bothClosed = Promise.all([closed(client), closed(server)]);
    const r = await result;
    assert.equal(r.error, "idle for 200 ms");
    await bothClosed;
  });
});
