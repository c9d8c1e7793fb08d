import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import { before, describe, it } from "node:test";
import { pino } from "pino";
import type { Logger } from "pino";
import { x509 } from "../../src/identity/x509.js";
import {
  baggage,
  connectRequestHeaders,
  formatAuthority,
  forwarded,
  HboneClient,
  HboneDialError,
  HboneServer,
  parseAuthority,
  parseBaggage,
  parseForwarded,
  parseTraceparent,
  traceparent,
} from "../../src/ztunnel/hbone/index.js";
import type {
  HboneDialRequest,
  HboneHandler,
  HboneRequest,
  HboneSettings,
  HboneStream,
  WorkloadCredential,
} from "../../src/ztunnel/hbone/index.js";
import { until } from "../support/wait.js";

// HBONE between an HboneClient and an HboneServer on loopback: real TLS 1.3 with certificates made
// here, real HTTP/2, a TCP echo server as the destination workload.

const TD = "cluster.local";
const SERVER_ID = `spiffe://${TD}/ns/server/sa/server`;
const SERVER2_ID = `spiffe://${TD}/ns/server/sa/second`;
const CLIENT_ID = `spiffe://${TD}/ns/client/sa/client`;
const CLIENT2_ID = `spiffe://${TD}/ns/client/sa/other`;
const FOREIGN_ID = "spiffe://other.example/ns/client/sa/client";
const TEST_TIMEOUT = { timeout: 60_000 };

// ---- certificates ----

const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGN = { name: "ECDSA", hash: "SHA-256" } as const;

interface TestCa {
  readonly rootPem: string;
  issue(identity: string): Promise<Source>;
}

interface Source extends WorkloadCredential {
  readonly identity: string;
}

async function createCa(name: string): Promise<TestCa> {
  const keys = await crypto.subtle.generateKey(EC, true, ["sign", "verify"]);
  const now = Date.now();
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(8).toString("hex"),
    name: `O=${name}`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 86_400_000),
    keys,
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const aki = await x509.AuthorityKeyIdentifierExtension.create(keys.publicKey);
  return {
    rootPem: root.toString("pem") + "\n",
    async issue(identity) {
      const leafKeys = await crypto.subtle.generateKey(EC, true, ["sign", "verify"]);
      const leaf = await x509.X509CertificateGenerator.create({
        serialNumber: `01${randomBytes(8).toString("hex")}`,
        subject: "",
        issuer: root.subjectName,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 86_400_000),
        publicKey: leafKeys.publicKey,
        signingKey: keys.privateKey,
        signingAlgorithm: SIGN,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(
            x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
            true,
          ),
          new x509.ExtendedKeyUsageExtension(
            [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
            false,
          ),
          new x509.SubjectAlternativeNameExtension([{ type: "url", value: identity }], true),
          aki,
        ],
      });
      const pkcs8 = await crypto.subtle.exportKey("pkcs8", leafKeys.privateKey);
      return {
        identity,
        certChainPem: leaf.toString("pem") + "\n",
        keyPem: x509.PemConverter.encode(pkcs8, "PRIVATE KEY") + "\n",
      };
    },
  };
}

let ca: TestCa;
let otherCa: TestCa;
let server1: Source;
let server2: Source;
let client1: Source;
let client2: Source;

before(async () => {
  ca = await createCa("mesh");
  otherCa = await createCa("other mesh");
  [server1, server2, client1, client2] = await Promise.all([
    ca.issue(SERVER_ID),
    ca.issue(SERVER2_ID),
    ca.issue(CLIENT_ID),
    ca.issue(CLIENT2_ID),
  ]);
});

// ---- plumbing ----

const silent = pino({ level: "silent" });

function capturingLog(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: pino({ level: "debug" }, { write: (line: string) => void lines.push(line) }), lines };
}

function listenOn(server: net.Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

/** A TCP server with its open connections, closed with `stop`. */
interface TcpServer {
  readonly port: number;
  readonly open: Set<net.Socket>;
  accepted: number;
  stop(): Promise<void>;
}

async function tcpServer(host: string, onConnection: (s: net.Socket) => void): Promise<TcpServer> {
  const open = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true });
  const state: TcpServer = {
    port: 0,
    open,
    accepted: 0,
    stop: async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  server.on("connection", (socket: net.Socket) => {
    state.accepted++;
    open.add(socket);
    socket.on("error", () => undefined);
    socket.once("close", () => open.delete(socket));
    onConnection(socket);
  });
  (state as { port: number }).port = await listenOn(server, host);
  return state;
}

/** The destination workload: echoes everything, and ends its side when the client has ended. */
const startEcho = (host = "127.0.0.1"): Promise<TcpServer> => tcpServer(host, (s) => s.pipe(s));

function connectTcp(address: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: address, port, allowHalfOpen: true });
    s.once("error", reject);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
  });
}

/** A handler that records each request and connects it to its target. */
function connectingHandler(calls: HboneRequest[]): HboneHandler {
  return async (req) => {
    calls.push(req);
    try {
      const upstream = await connectTcp(req.target.address, req.target.port);
      return { status: 200, upstream, responseHeaders: { baggage: "k8s.namespace.name=server" } };
    } catch (e) {
      return { status: 503, reason: `upstream: ${(e as Error).message}` };
    }
  };
}

/** Everything `stream` sends until its end; rejects if it fails or closes first. */
function collect(stream: Duplex): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.once("end", () => resolve(Buffer.concat(chunks)));
    stream.once("error", reject);
    stream.once("close", () => reject(new Error("stream closed before its end")));
  });
}

/** Writes `payload` with back-pressure, ends, and returns what came back and how much came after `end()`. */
async function exchange(stream: Duplex, payload: Buffer): Promise<{ echoed: Buffer; afterEnd: number }> {
  let received = 0;
  stream.on("data", (c: Buffer) => (received += c.length));
  const echoed = collect(stream);
  const chunk = 256 * 1024;
  for (let i = 0; i < payload.length; i += chunk) {
    if (!stream.write(payload.subarray(i, i + chunk))) await once(stream, "drain");
  }
  const atEnd = received;
  stream.end();
  const all = await echoed;
  return { echoed: all, afterEnd: all.length - atEnd };
}

async function dialError(p: Promise<unknown>): Promise<HboneDialError> {
  try {
    const s = await p;
    (s as Duplex).destroy();
  } catch (e) {
    assert.ok(e instanceof HboneDialError, `expected an HboneDialError, got ${String(e)}`);
    return e;
  }
  assert.fail("the dial succeeded");
}

interface Harness {
  readonly client: HboneClient;
  readonly server: HboneServer;
  readonly listener: TcpServer;
  readonly echo: TcpServer;
  readonly calls: HboneRequest[];
  request(over?: Partial<HboneDialRequest>): HboneDialRequest;
  dial(over?: Partial<HboneDialRequest>): Promise<HboneStream>;
  stop(): Promise<void>;
}

interface HarnessOptions {
  readonly handler?: HboneHandler;
  readonly settings?: Partial<HboneSettings>;
  readonly credentialFor?: (local: string) => Promise<WorkloadCredential | undefined>;
  readonly serverLog?: Logger;
  readonly trustDomain?: string;
}

/** A server on 127.0.0.1 as SERVER_ID, a client, an echo destination. */
async function harness(o: HarnessOptions = {}): Promise<Harness> {
  const calls: HboneRequest[] = [];
  const server = new HboneServer({
    credentialFor: o.credentialFor ?? (async (local) => (local === "127.0.0.1" ? server1 : undefined)),
    rootsPem: () => ca.rootPem,
    trustDomain: o.trustDomain ?? TD,
    handler: o.handler ?? connectingHandler(calls),
    ...(o.settings ? { settings: o.settings } : {}),
    log: o.serverLog ?? silent,
  });
  const listener = await tcpServer("127.0.0.1", (s) => server.handleConnection(s));
  const echo = await startEcho();
  const client = new HboneClient({ ...(o.settings ? { settings: o.settings } : {}), log: silent });
  const request = (over: Partial<HboneDialRequest> = {}): HboneDialRequest => ({
    peer: { address: "127.0.0.1", port: listener.port },
    authority: formatAuthority("127.0.0.1", echo.port),
    source: client1,
    expectedIdentities: [SERVER_ID],
    rootsPem: ca.rootPem,
    ...over,
  });
  return {
    client,
    server,
    listener,
    echo,
    calls,
    request,
    dial: (over) => client.dial(request(over)),
    stop: async () => {
      await client.close();
      await server.close();
      await listener.stop();
      await echo.stop();
    },
  };
}

// ---- tests ----

describe("HBONE headers", () => {
  it("formats and strictly parses authorities", () => {
    assert.equal(formatAuthority("10.0.0.1", 80), "10.0.0.1:80");
    assert.equal(formatAuthority("::1", 80), "[::1]:80");
    assert.equal(formatAuthority("fd00:0:0::1", 8080), "[fd00::1]:8080");
    assert.throws(() => formatAuthority("example.com", 80), RangeError);
    assert.throws(() => formatAuthority("10.0.0.1", 0), RangeError);
    assert.deepEqual(parseAuthority("10.0.0.1:80"), { address: "10.0.0.1", port: 80, family: 4 });
    assert.deepEqual(parseAuthority("[::1]:65535"), { address: "::1", port: 65535, family: 6 });
    assert.deepEqual(parseAuthority("[FD00:0::1]:1"), { address: "fd00::1", port: 1, family: 6 });
    for (const bad of [
      "10.0.0.1",
      "10.0.0.1:0",
      "10.0.0.1:65536",
      "10.0.0.1:080",
      "10.0.0.1:+80",
      "010.0.0.1:80",
      "10.0.0:80",
      "::1:80",
      "[::1]",
      "[fe80::1%eth0]:80",
      "[10.0.0.1]:80",
      "example.com:80",
      " 10.0.0.1:80",
      "",
    ]) {
      assert.equal(parseAuthority(bad), undefined, bad);
    }
  });

  it("formats and parses baggage, forwarded and traceparent", () => {
    const fields = {
      clusterName: "Kubernetes",
      namespace: "shop",
      workloadType: "deployment",
      workloadName: "cart",
      serviceName: "cart",
      serviceVersion: "v 1,2",
    };
    const text = baggage(fields);
    assert.equal(
      text,
      "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart,service.name=cart,service.version=v%201%2C2",
    );
    assert.deepEqual(parseBaggage(text), fields);
    assert.throws(() => baggage({ workloadName: "x", workloadType: "namespace" }), RangeError);

    assert.equal(forwarded({ for: { address: "10.0.0.1", port: 5678 } }), 'for="10.0.0.1:5678"');
    assert.equal(
      forwarded({ for: "[fd00::1]:5678", host: "cart.shop.svc.cluster.local" }),
      'for="[fd00::1]:5678";host=cart.shop.svc.cluster.local',
    );
    assert.deepEqual(parseForwarded('for="[fd00::1]:5678";host=cart.shop.svc.cluster.local, for=1.2.3.4'), {
      for: { address: "fd00::1", port: 5678 },
      host: "cart.shop.svc.cluster.local",
    });
    assert.throws(() => forwarded({ for: "cart:80" }), RangeError);

    const a = traceparent();
    const b = traceparent();
    assert.notEqual(a, b);
    const parsed = parseTraceparent(a);
    assert.ok(parsed, a);
    assert.match(parsed.traceId, /^[0-9a-f]{32}$/);
    assert.equal(parseTraceparent(`00-${"0".repeat(32)}-${"1".repeat(16)}-00`), undefined);

    const headers = connectRequestHeaders({
      baggage: { namespace: "shop" },
      forwarded: { for: "10.0.0.1:1" },
    });
    assert.deepEqual(Object.keys(headers), ["baggage", "forwarded", "traceparent"]);
  });
});

describe("HBONE over loopback", () => {
  it(
    "carries 32 MiB both ways with half-close, and each side learns the other's identity",
    TEST_TIMEOUT,
    async () => {
      const h = await harness();
      try {
        const headers = connectRequestHeaders({
          baggage: { namespace: "client", workloadType: "pod", workloadName: "client-0" },
          forwarded: { for: { address: "127.0.0.1", port: 40000 }, host: "echo.server.svc.cluster.local" },
        });
        const stream = await h.dial({ headers });
        assert.equal(stream.status, 200);
        assert.equal(stream.peerIdentity, SERVER_ID);
        assert.equal(stream.pooled, false);
        assert.equal(stream.responseHeaders["baggage"], "k8s.namespace.name=server");

        const payload = randomBytes(32 * 1024 * 1024);
        const { echoed, afterEnd } = await exchange(stream, payload);
        assert.equal(echoed.length, payload.length);
        assert.ok(echoed.equals(payload), "the echo differs from what was sent");
        // The windows hold far less than 32 MiB: much of the echo arrived after our END_STREAM.
        assert.ok(afterEnd > 0, "nothing arrived after the client ended its side");

        const [req] = h.calls;
        assert.ok(req);
        assert.equal(h.calls.length, 1);
        assert.equal(req.peer.identity, CLIENT_ID);
        assert.equal(req.peer.address, "127.0.0.1");
        assert.equal(req.localAddress, "127.0.0.1");
        assert.equal(req.localPort, h.listener.port);
        assert.deepEqual(req.target, { address: "127.0.0.1", port: h.echo.port, family: 4 });
        assert.equal(req.headers[":method"], "CONNECT");
        assert.equal(req.headers[":scheme"], undefined);
        assert.equal(req.headers[":path"], undefined);
        assert.deepEqual(parseBaggage(String(req.headers["baggage"])), {
          namespace: "client",
          workloadType: "pod",
          workloadName: "client-0",
        });
        assert.deepEqual(parseForwarded(String(req.headers["forwarded"])), {
          for: { address: "127.0.0.1", port: 40000 },
          host: "echo.server.svc.cluster.local",
        });
        assert.ok(parseTraceparent(String(req.headers["traceparent"])));

        await until(
          "the stream to close on both ends",
          () => h.client.stats().streams === 0 && h.server.stats().streams === 0,
        );
        await until("the upstream connection to close", () => h.echo.open.size === 0);
      } finally {
        await h.stop();
      }
    },
  );

  it(
    "shares a connection between dials of one key; another source identity gets its own",
    TEST_TIMEOUT,
    async () => {
      const h = await harness();
      try {
        const a = await h.dial();
        const b = await h.dial();
        assert.equal(a.pooled, false);
        assert.equal(b.pooled, true);
        assert.equal(h.listener.accepted, 1);
        assert.deepEqual(h.client.stats(), { connections: 1, streams: 2, connecting: 0 });

        const c = await h.dial({ source: client2 });
        assert.equal(c.pooled, false);
        assert.equal(h.listener.accepted, 2);
        assert.equal(h.calls[2]?.peer.identity, CLIENT2_ID);

        // Concurrent dials for a new key share one connection setup.
        const d = await Promise.all(
          [1, 2, 3].map(() => h.dial({ expectedIdentities: [SERVER_ID, SERVER2_ID] })),
        );
        assert.equal(h.listener.accepted, 3);
        assert.deepEqual(
          d.map((s) => s.pooled),
          [false, true, true],
        );

        for (const s of [a, b, c, ...d]) {
          const { echoed } = await exchange(s, Buffer.from("ping"));
          assert.equal(echoed.toString(), "ping");
        }
        assert.equal(h.server.stats().connections, 3);
      } finally {
        await h.stop();
      }
    },
  );

  it("opens a second connection past 100 concurrent streams", TEST_TIMEOUT, async () => {
    const h = await harness();
    try {
      const streams = await Promise.all(Array.from({ length: 150 }, () => h.dial()));
      assert.equal(h.listener.accepted, 2);
      assert.equal(streams.filter((s) => !s.pooled).length, 2);
      assert.deepEqual(h.client.stats(), { connections: 2, streams: 150, connecting: 0 });
      assert.equal(h.server.stats().streams, 150);
      const echoes = await Promise.all(streams.map((s, i) => exchange(s, Buffer.from(`stream ${i}`))));
      echoes.forEach(({ echoed }, i) => assert.equal(echoed.toString(), `stream ${i}`));
      await until(
        "all streams to close",
        () => h.client.stats().streams === 0 && h.server.stats().streams === 0,
      );
    } finally {
      await h.stop();
    }
  });

  it(
    "refuses client certificates from another CA or trust domain before any HTTP",
    TEST_TIMEOUT,
    async () => {
      const { log, lines } = capturingLog();
      const h = await harness({ serverLog: log });
      try {
        const foreignCa = await otherCa.issue(FOREIGN_ID);
        const e1 = await dialError(h.dial({ source: foreignCa }));
        assert.equal(e1.kind, "tls");

        // Chains to the mesh roots, but names another trust domain.
        const foreignDomain = await ca.issue(FOREIGN_ID);
        const e2 = await dialError(h.dial({ source: foreignDomain }));
        assert.equal(e2.kind, "tls");
        assert.ok(lines.some((l) => l.includes("trust domain is not cluster.local")));

        assert.equal(h.calls.length, 0);
        assert.equal(h.listener.accepted, 2);
        await until("the refused connections to close", () => h.listener.open.size === 0);
        assert.deepEqual(h.client.stats(), { connections: 0, streams: 0, connecting: 0 });
      } finally {
        await h.stop();
      }
    },
  );

  it("refuses a server outside the expected identities or the client's roots", TEST_TIMEOUT, async () => {
    const h = await harness();
    try {
      const e1 = await dialError(h.dial({ expectedIdentities: [SERVER2_ID] }));
      assert.equal(e1.kind, "identity");
      assert.match(e1.reason, /ns\/server\/sa\/server/);
      assert.deepEqual(e1.peer, { address: "127.0.0.1", port: h.listener.port });

      const e2 = await dialError(h.dial({ rootsPem: otherCa.rootPem }));
      assert.equal(e2.kind, "tls");
      assert.equal(h.calls.length, 0);
    } finally {
      await h.stop();
    }
  });

  it(
    "surfaces the handler's 401 and 503, an unreachable peer and a slow answer as typed errors",
    TEST_TIMEOUT,
    async () => {
      let release: () => void = () => undefined;
      const slow = new Promise<void>((r) => (release = r));
      const handler: HboneHandler = async (req) => {
        if (req.target.port === 1) return { status: 401, reason: "denied by policy" };
        if (req.target.port === 2) return { status: 503, reason: "unknown workload" };
        if (req.target.port === 3) throw new Error("handler bug");
        await slow;
        return { status: 503, reason: "too late" };
      };
      const h = await harness({ handler });
      try {
        const denied = await dialError(h.dial({ authority: "127.0.0.1:1" }));
        assert.equal(denied.kind, "status");
        assert.equal(denied.status, 401);
        assert.equal(denied.authority, "127.0.0.1:1");
        const unknown = await dialError(h.dial({ authority: "127.0.0.1:2" }));
        assert.deepEqual([unknown.kind, unknown.status], ["status", 503]);
        const failed = await dialError(h.dial({ authority: "127.0.0.1:3" }));
        assert.deepEqual([failed.kind, failed.status], ["status", 503]);

        const late = await dialError(h.dial({ authority: "127.0.0.1:4", timeoutMs: 300 }));
        assert.equal(late.kind, "timeout");
        release();

        const closed = await tcpServer("127.0.0.1", () => undefined);
        await closed.stop();
        const refused = await dialError(h.dial({ peer: { address: "127.0.0.1", port: closed.port } }));
        assert.equal(refused.kind, "connect");

        await until(
          "refused streams to close",
          () => h.client.stats().streams === 0 && h.server.stats().streams === 0,
        );
        // The connection survives refused streams.
        assert.equal(h.listener.accepted, 1);
      } finally {
        await h.stop();
      }
    },
  );

  it(
    "answers a malformed CONNECT or another method 400 without the handler, with HBONE's settings",
    TEST_TIMEOUT,
    async () => {
      const h = await harness();
      const session = http2.connect(`https://127.0.0.1:${h.listener.port}`, {
        ca: ca.rootPem,
        cert: client1.certChainPem,
        key: client1.keyPem,
        checkServerIdentity: () => undefined,
        minVersion: "TLSv1.3",
      });
      session.on("error", () => undefined);
      try {
        const [settings] = (await once(session, "remoteSettings")) as [http2.Settings];
        assert.equal(settings.maxConcurrentStreams, 200);
        assert.equal(settings.initialWindowSize, 4 * 1024 * 1024);
        assert.equal(settings.maxFrameSize, 1024 * 1024);
        assert.equal(settings.maxHeaderListSize, 64 * 1024);

        const statusOf = async (headers: http2.OutgoingHttpHeaders, endStream = false): Promise<number> => {
          const stream = session.request(headers, { endStream });
          stream.on("error", () => undefined);
          // Listening first: a refusal can close the stream in the tick that delivers the response.
          const closed = once(stream, "close");
          const [response] = (await once(stream, "response")) as [http2.IncomingHttpHeaders];
          stream.resume();
          stream.end();
          await closed;
          return Number(response[":status"]);
        };
        assert.equal(await statusOf({ ":method": "CONNECT", ":authority": "echo.example:80" }), 400);
        assert.equal(await statusOf({ ":method": "CONNECT", ":authority": "127.0.0.1:0" }), 400);
        assert.equal(await statusOf({ ":method": "CONNECT", ":authority": "[::1]" }), 400);
        assert.equal(await statusOf({ ":method": "GET", ":path": "/" }, true), 400);
        assert.equal(await statusOf({ ":method": "POST", ":path": "/" }), 400);
        assert.equal(h.calls.length, 0);
        // The same connection still serves a good CONNECT.
        assert.equal(await statusOf({ ":method": "CONNECT", ":authority": `127.0.0.1:${h.echo.port}` }), 200);
        assert.equal(h.calls.length, 1);
      } finally {
        session.destroy();
        await h.stop();
      }
    },
  );

  it(
    "chooses the certificate by the accepted address and closes connections to addresses without one",
    TEST_TIMEOUT,
    async () => {
      const { log, lines } = capturingLog();
      const credentials = new Map<string, Source>([
        ["127.0.0.1", server1],
        ["127.0.0.2", server2],
        ["::1", server1],
      ]);
      const h = await harness({ serverLog: log, credentialFor: async (local) => credentials.get(local) });
      // One server behind several listeners, as behind one transparent listener for many pod IPs.
      const second = await tcpServer("127.0.0.2", (s) => h.server.handleConnection(s));
      const third = await tcpServer("127.0.0.3", (s) => h.server.handleConnection(s));
      const v6 = await tcpServer("::1", (s) => h.server.handleConnection(s));
      const echo6 = await startEcho("::1");
      try {
        const s2 = await h.dial({
          peer: { address: "127.0.0.2", port: second.port },
          expectedIdentities: [SERVER2_ID],
        });
        assert.equal(s2.peerIdentity, SERVER2_ID);
        assert.equal(h.calls[0]?.localAddress, "127.0.0.2");
        assert.equal((await exchange(s2, Buffer.from("two"))).echoed.toString(), "two");

        const wrong = await dialError(
          h.dial({ peer: { address: "127.0.0.2", port: second.port }, expectedIdentities: [SERVER_ID] }),
        );
        assert.equal(wrong.kind, "identity");

        const none = await dialError(h.dial({ peer: { address: "127.0.0.3", port: third.port } }));
        assert.equal(none.kind, "tls");
        assert.ok(lines.some((l) => l.includes("no workload certificate") && l.includes("127.0.0.3")));

        const s6 = await h.dial({
          peer: { address: "::1", port: v6.port },
          authority: formatAuthority("::1", echo6.port),
        });
        assert.equal(s6.peerIdentity, SERVER_ID);
        const req6 = h.calls.at(-1);
        assert.equal(req6?.authority, `[::1]:${echo6.port}`);
        assert.deepEqual(req6?.target, { address: "::1", port: echo6.port, family: 6 });
        assert.equal(req6?.localAddress, "::1");
        assert.equal((await exchange(s6, Buffer.from("six"))).echoed.toString(), "six");
        assert.equal(third.accepted, 1);
        await until("the refused connection to close", () => third.open.size === 0);
      } finally {
        await h.stop();
        await Promise.all([second.stop(), third.stop(), v6.stop(), echo6.stop()]);
      }
    },
  );

  it("drains: an open stream finishes while new dials go to a new connection", TEST_TIMEOUT, async () => {
    const h = await harness();
    const calls2: HboneRequest[] = [];
    const successor = new HboneServer({
      credentialFor: async () => server1,
      rootsPem: ca.rootPem,
      trustDomain: TD,
      handler: connectingHandler(calls2),
      log: silent,
    });
    // The listener hands new connections to whichever server is current, as a restarted ztunnel
    // takes over the listening port.
    let current = h.server;
    const listener = await tcpServer("127.0.0.1", (s) => current.handleConnection(s));
    try {
      const open = await h.dial({ peer: { address: "127.0.0.1", port: listener.port } });
      const firstEcho = collect(open);
      open.write("before ");

      let drained = false;
      const draining = h.server.drain().then(() => (drained = true));
      current = successor;

      const next = await h.dial({ peer: { address: "127.0.0.1", port: listener.port } });
      assert.equal(next.pooled, false);
      assert.equal(listener.accepted, 2);
      assert.equal(calls2.length, 1);
      assert.equal((await exchange(next, Buffer.from("new"))).echoed.toString(), "new");
      assert.equal(drained, false, "drain finished while a stream was open");

      open.end("after");
      assert.equal((await firstEcho).toString(), "before after");
      await draining;
      assert.deepEqual(h.server.stats(), { connections: 0, streams: 0, handshakes: 0 });
      assert.equal(successor.stats().connections, 1);
    } finally {
      await h.stop();
      await successor.close();
      await listener.stop();
    }
  });

  it(
    "uses a rotated client certificate for new connections and retires the old one",
    TEST_TIMEOUT,
    async () => {
      const h = await harness();
      try {
        const old = await h.dial();
        const renewed = await ca.issue(CLIENT_ID);
        const fresh = await h.dial({ source: renewed });
        assert.equal(fresh.pooled, false);
        assert.equal(h.listener.accepted, 2);
        // The old connection keeps its stream…
        assert.equal((await exchange(old, Buffer.from("old"))).echoed.toString(), "old");
        // …and closes once it has none; the new one stays pooled.
        await until("the old connection to close", () => h.server.stats().connections === 1);
        assert.equal((await exchange(fresh, Buffer.from("new"))).echoed.toString(), "new");
        const again = await h.dial({ source: renewed });
        assert.equal(again.pooled, true);
        again.destroy();
      } finally {
        await h.stop();
      }
    },
  );

  it("releases idle pooled connections", TEST_TIMEOUT, async () => {
    const h = await harness({ settings: { poolIdleTimeoutMs: 200 } });
    try {
      const s = await h.dial();
      await exchange(s, Buffer.from("x"));
      await until("the idle connection to be released", () => h.client.stats().connections === 0);
      await until("the server to see it close", () => h.server.stats().connections === 0);
      const again = await h.dial();
      assert.equal(again.pooled, false);
      again.destroy();
    } finally {
      await h.stop();
    }
  });

  it("drops a connection whose PINGs go unanswered", TEST_TIMEOUT, async () => {
    const h = await harness({ settings: { pingIntervalMs: 100, pingTimeoutMs: 400 } });
    // A relay that can stop forwarding, as a peer that vanished without closing.
    let blackhole = false;
    const relay = await tcpServer("127.0.0.1", (down) => {
      const up = net.connect(h.listener.port, "127.0.0.1");
      up.on("error", () => undefined);
      down.on("data", (d: Buffer) => void (blackhole || up.write(d)));
      up.on("data", (d: Buffer) => void (blackhole || down.write(d)));
      down.once("close", () => up.destroy());
      up.once("close", () => down.destroy());
    });
    try {
      const s = await h.dial({ peer: { address: "127.0.0.1", port: relay.port } });
      assert.equal((await exchange(s, Buffer.from("alive"))).echoed.toString(), "alive");
      const open = await h.dial({ peer: { address: "127.0.0.1", port: relay.port } });
      const failed = collect(open);
      blackhole = true;
      await assert.rejects(failed);
      await until("the client to drop the connection", () => h.client.stats().connections === 0);
      await until("the server to drop the connection", () => h.server.stats().connections === 0);
      await until("the upstream to be reset", () => h.echo.open.size === 0);
    } finally {
      await h.stop();
      await relay.stop();
    }
  });

  it(
    "carries resets across: upstream reset → RST_STREAM, client reset → upstream closed",
    TEST_TIMEOUT,
    async () => {
      const upstreamClosed: net.Socket[] = [];
      const resetter = await tcpServer("127.0.0.1", (s) => s.once("data", () => s.resetAndDestroy()));
      let sunk = 0;
      const sink = await tcpServer("127.0.0.1", (s) => {
        s.on("data", (d: Buffer) => (sunk += d.length));
        s.once("close", () => upstreamClosed.push(s));
      });
      const h = await harness();
      try {
        const a = await h.dial({ authority: formatAuthority("127.0.0.1", resetter.port) });
        const aDone = collect(a);
        a.write("boom");
        // A reset, not a clean end: the data stops with an error, no END_STREAM.
        await assert.rejects(aDone, /NGHTTP2_INTERNAL_ERROR/);
        await until("stream a to close", () => a.destroyed);
        assert.equal(a.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);

        const b = await h.dial({ authority: formatAuthority("127.0.0.1", sink.port) });
        b.on("error", () => undefined);
        b.write("data");
        // Read first: a reset that finds unread data in the receive queue reads as data + EOF.
        await until("the data at the upstream", () => sunk === 4);
        // How `splice` resets a tunnel whose client connection failed: RST_STREAM without END_STREAM.
        b.destroy(new Error("the client connection failed"));
        await until("the upstream to be closed", () => upstreamClosed.length === 1);
        await until(
          "no streams left",
          () => h.server.stats().streams === 0 && h.client.stats().streams === 0,
        );
      } finally {
        await h.stop();
        await resetter.stop();
        await sink.stop();
      }
    },
  );

  it("holds no streams after 500 sequential ones, and no sockets after close", TEST_TIMEOUT, async () => {
    const h = await harness();
    let stopped = false;
    try {
      for (let i = 0; i < 500; i++) {
        const s = await h.dial();
        const { echoed } = await exchange(s, Buffer.from(`message ${i}`));
        assert.equal(echoed.toString(), `message ${i}`);
      }
      await until("streams to close", () => h.client.stats().streams === 0 && h.server.stats().streams === 0);
      assert.equal(h.listener.accepted, 1);
      assert.deepEqual(h.client.stats(), { connections: 1, streams: 0, connecting: 0 });
      assert.equal(h.echo.accepted, 500);
      await until("upstream connections to close", () => h.echo.open.size === 0);

      await h.client.close();
      await h.server.close();
      assert.deepEqual(h.client.stats(), { connections: 0, streams: 0, connecting: 0 });
      assert.deepEqual(h.server.stats(), { connections: 0, streams: 0, handshakes: 0 });
      await until("accepted sockets to close", () => h.listener.open.size === 0);
      await h.stop();
      stopped = true;
    } finally {
      if (!stopped) await h.stop();
    }
  });
});
