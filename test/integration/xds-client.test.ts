import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import * as grpc from "@grpc/grpc-js";
import {
  DeltaAdsClient,
  XdsClientClosedError,
  XdsClientUsageError,
  XdsLookupTimeoutError,
} from "../../src/xds/client.js";
import type {
  ApplyResult,
  DeltaAdsClientOptions,
  DisconnectInfo,
  ResourceChanges,
  WatchedType,
  WatchMode,
} from "../../src/xds/client.js";
import {
  adsServiceDefinition,
  caServiceDefinition,
  createCaClient,
  createCertificate,
  XDS_CHANNEL_OPTIONS,
} from "../../src/xds/grpc.js";
import type {
  DeltaDiscoveryRequest,
  DeltaDiscoveryResponse,
  IstioCertificateRequest,
  IstioCertificateResponse,
  Node,
  Resource,
} from "../../src/xds/messages.js";
import {
  decodeAddress,
  decodeAuthorization,
  encodeAddress,
  encodeAuthorization,
  encodeServedNodes,
  packAny,
} from "../../src/xds/proto.js";
import { TYPE_URL } from "../../src/xds/types.js";
import type { Address, Authorization } from "../../src/xds/types.js";

// The client against a test double of an ADS server: grpc-js, insecure, on 127.0.0.1, that records
// what it receives and answers only what each test tells it to.

const WAIT_MS = 5_000;

/** A FIFO whose consumers wait (with a deadline) for items not pushed yet. */
class Queue<T> {
  private readonly items: T[] = [];
  private readonly waiters: ((item: T) => void)[] = [];

  push(item: T): void {
    const waiter = this.waiters.shift();
    if (waiter !== undefined) waiter(item);
    else this.items.push(item);
  }

  get size(): number {
    return this.items.length;
  }

  next(what: string, timeoutMs = WAIT_MS): Promise<T> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise((resolve, reject) => {
      const waiter = (value: T): void => {
        clearTimeout(timer);
        resolve(value);
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }
}

type ServerCall = grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

/** One stream as the server sees it. */
class ServerStream {
  readonly openedAt = performance.now();
  readonly requests = new Queue<DeltaDiscoveryRequest>();
  cancelled = false;
  private nonce = 0;

  constructor(
    readonly index: number,
    private readonly call: ServerCall,
  ) {
    call.on("data", (request: DeltaDiscoveryRequest) => this.requests.push(request));
    call.on("cancelled", () => (this.cancelled = true));
    call.on("error", () => undefined);
  }

  header(name: string): grpc.MetadataValue[] {
    return this.call.metadata.get(name);
  }

  nextRequest(what = "a request"): Promise<DeltaDiscoveryRequest> {
    return this.requests.next(`${what} on stream ${this.index}`);
  }

  /** Send a response with a fresh nonce; returns the nonce. */
  send(typeUrl: string, resources: Resource[], removedResources: string[] = []): string {
    const nonce = `nonce-${this.index}-${++this.nonce}`;
    this.call.write({ typeUrl, nonce, resources, removedResources });
    return nonce;
  }

  end(): void {
    this.call.end();
  }

  fail(code: grpc.status, details: string): void {
    this.call.emit("error", { code, details, metadata: new grpc.Metadata() });
  }
}

class FakeAdsServer {
  readonly streams: ServerStream[] = [];
  private readonly opened = new Queue<ServerStream>();
  /** Runs on each new stream before the test sees it (e.g. to fail it at once). */
  onStream: (stream: ServerStream) => void = () => undefined;

  private constructor(
    private readonly server: grpc.Server,
    readonly target: string,
  ) {}

  static async start(t: TestContext): Promise<FakeAdsServer> {
    const server = new grpc.Server(XDS_CHANNEL_OPTIONS);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
        err === null ? resolve(p) : reject(err),
      ),
    );
    const fake = new FakeAdsServer(server, `127.0.0.1:${port}`);
    server.addService(adsServiceDefinition, {
      DeltaAggregatedResources: (call: ServerCall) => {
        const stream = new ServerStream(fake.streams.length + 1, call);
        fake.streams.push(stream);
        fake.onStream(stream);
        fake.opened.push(stream);
      },
    });
    t.after(() => server.forceShutdown());
    return fake;
  }

  nextStream(): Promise<ServerStream> {
    return this.opened.next("a new stream");
  }
}

/** A handler that decodes what it gets, keeps it, and rejects the names it is told to. */
class RecordingHandler implements WatchedType {
  readonly calls: ResourceChanges[] = [];
  readonly held = new Map<string, unknown>();
  readonly rejectNames = new Map<string, string>();

  constructor(
    readonly typeUrl: string,
    readonly mode: WatchMode,
  ) {}

  apply(changes: ResourceChanges): ApplyResult {
    this.calls.push(changes);
    const rejected: ApplyResult["rejected"] = [];
    for (const resource of changes.added) {
      const reason = this.rejectNames.get(resource.name);
      if (reason !== undefined) {
        rejected.push({ name: resource.name, reason });
        continue;
      }
      const value = resource.resource!.value;
      this.held.set(
        resource.name,
        this.typeUrl === TYPE_URL.address ? decodeAddress(value) : decodeAuthorization(value),
      );
    }
    for (const name of changes.removed) this.held.delete(name);
    return { rejected };
  }
}

const NODE: Node = {
  id: "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local",
  metadata: { NAME: "ztunnel-abc", NAMESPACE: "istio-system", NODE_NAME: "dpu1", INSTANCE_IPS: "10.0.0.5" },
};

function startClient(
  t: TestContext,
  server: FakeAdsServer,
  types: WatchedType[],
  options: Partial<DeltaAdsClientOptions> = {},
): DeltaAdsClient {
  const client = new DeltaAdsClient({
    target: server.target,
    credentials: { kind: "insecure" },
    node: NODE,
    types,
    ...options,
  });
  t.after(() => client.close());
  return client;
}

function authzResource(name: string, version: string): Resource {
  const authorization: Authorization = {
    name,
    namespace: "default",
    scope: 0,
    action: 0,
    rules: [{ clauses: [{ matches: [{ destinationPorts: [80] }] }] }],
  };
  return { name, version, resource: packAny(TYPE_URL.authorization, encodeAuthorization(authorization)) };
}

function addressResource(name: string, version: string, aliases: string[] = []): Resource {
  const address: Address = { workload: { uid: name, name: "p", namespace: "default", addresses: [] } };
  return { name, version, aliases, resource: packAny(TYPE_URL.address, encodeAddress(address)) };
}

const ack = (typeUrl: string, nonce: string): DeltaDiscoveryRequest => ({
  typeUrl,
  responseNonce: nonce,
  initialResourceVersions: {},
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe("DeltaAdsClient", () => {
  it("opens with one initial request per type: node, wildcard or on-demand shape, headers", async (t) => {
    const server = await FakeAdsServer.start(t);
    startClient(
      t,
      server,
      [
        new RecordingHandler(TYPE_URL.authorization, "wildcard"),
        new RecordingHandler(TYPE_URL.address, "on-demand"),
      ],
      { token: "tok-1", clusterId: "Kubernetes", headers: { "x-offmesh-test": "yes" } },
    );
    const stream = await server.nextStream();
    assert.deepEqual(await stream.nextRequest("the authorization initial request"), {
      node: NODE,
      typeUrl: TYPE_URL.authorization,
      initialResourceVersions: {},
    });
    assert.deepEqual(await stream.nextRequest("the address initial request"), {
      node: NODE,
      typeUrl: TYPE_URL.address,
      resourceNamesSubscribe: ["*"],
      resourceNamesUnsubscribe: ["*"],
      initialResourceVersions: {},
    });
    assert.deepEqual(stream.header("authorization"), ["Bearer tok-1"]);
    assert.deepEqual(stream.header("clusterid"), ["Kubernetes"]);
    assert.deepEqual(stream.header("x-offmesh-test"), ["yes"]);
  });

  it("ACKs with the response's nonce and is ready once every wildcard type is ACKed", async (t) => {
    const server = await FakeAdsServer.start(t);
    const authz = new RecordingHandler(TYPE_URL.authorization, "wildcard");
    const served = new RecordingHandler(TYPE_URL.servedNodes, "wildcard");
    const client = startClient(t, server, [authz, served]);
    let ready = false;
    void client.ready.then(() => (ready = true));
    const connected = new Promise((resolve) => client.once("connected", resolve));

    const stream = await server.nextStream();
    await stream.nextRequest();
    await stream.nextRequest();
    const nonce = stream.send(TYPE_URL.authorization, [authzResource("a1", "1"), authzResource("a2", "1")]);
    assert.deepEqual(await stream.nextRequest("the ACK"), ack(TYPE_URL.authorization, nonce));
    await connected;
    assert.deepEqual([...authz.held.keys()], ["a1", "a2"]);
    assert.equal(ready, false, "servedNodes has not been answered yet");

    const servedNodes = { node: "dpu1", nodes: ["cpu1", "dpu1"] };
    const body = packAny(TYPE_URL.servedNodes, encodeServedNodes(servedNodes));
    const nonce2 = stream.send(TYPE_URL.servedNodes, [{ name: "dpu1", version: "1", resource: body }]);
    assert.deepEqual(await stream.nextRequest("the second ACK"), ack(TYPE_URL.servedNodes, nonce2));
    await client.ready;
    assert.equal(client.connected, true);
    assert.deepEqual(client.stats().requests, { initial: 2, ack: 2, nack: 0, subscribe: 0 });
  });

  it("NACKs per resource while applying the valid ones; a reconnect reports only accepted versions", async (t) => {
    const server = await FakeAdsServer.start(t);
    const authz = new RecordingHandler(TYPE_URL.authorization, "wildcard");
    authz.rejectNames.set("bad", "no rules");
    let tokens = 0;
    const client = startClient(t, server, [authz], { token: () => `tok-${++tokens}` });
    const stream = await server.nextStream();
    await stream.nextRequest();

    const wrongType = addressResource("wrong", "1");
    const noBody: Resource = { name: "nobody", version: "1" };
    const nonce = stream.send(TYPE_URL.authorization, [
      authzResource("good", "1"),
      authzResource("bad", "1"),
      wrongType,
      noBody,
    ]);
    const nack = await stream.nextRequest("the NACK");
    assert.deepEqual(nack, {
      typeUrl: TYPE_URL.authorization,
      responseNonce: nonce,
      initialResourceVersions: {},
      errorDetail: {
        message: [
          `wrong: body of type ${TYPE_URL.address}`,
          "nobody: resource without a body",
          "bad: no rules",
        ].join("; "),
      },
    });
    assert.deepEqual(
      authz.calls[0]!.added.map((r) => r.name),
      ["good", "bad"],
      "the handler sees only well-formed resources",
    );
    assert.deepEqual([...authz.held.keys()], ["good"], "the valid resource is applied");
    assert.deepEqual(Object.fromEntries(client.versions(TYPE_URL.authorization)), { good: "1" });

    // An update that removes one and adds another, ACKed; then one sent right before a clean end,
    // which the client still applies (and cannot ACK any more).
    const nonce2 = stream.send(TYPE_URL.authorization, [authzResource("other", "2")], ["good"]);
    assert.deepEqual(await stream.nextRequest("the ACK"), ack(TYPE_URL.authorization, nonce2));
    stream.send(TYPE_URL.authorization, [authzResource("last", "3")]);
    stream.end();

    const second = await server.nextStream();
    assert.deepEqual(await second.nextRequest("the initial request after reconnecting"), {
      node: NODE,
      typeUrl: TYPE_URL.authorization,
      initialResourceVersions: { last: "3", other: "2" },
    });
    assert.deepEqual(stream.header("authorization"), ["Bearer tok-1"]);
    assert.deepEqual(second.header("authorization"), ["Bearer tok-2"], "the token is fetched per stream");
    assert.deepEqual([...authz.held.keys()].sort(), ["last", "other"]);
    const stats = client.stats();
    assert.equal(stats.streams, 2);
    assert.equal(stats.resourcesRejected, 3);
  });

  it("ACKs a response of a type it does not watch", async (t) => {
    const server = await FakeAdsServer.start(t);
    const client = startClient(t, server, [new RecordingHandler(TYPE_URL.authorization, "wildcard")]);
    const stream = await server.nextStream();
    await stream.nextRequest();
    const unknown = "type.googleapis.com/istio.workload.Unknown";
    const nonce = stream.send(unknown, [
      { name: "x", version: "1", resource: packAny(unknown, new Uint8Array([1])) },
    ]);
    assert.deepEqual(await stream.nextRequest("the ACK"), ack(unknown, nonce));
    assert.equal(client.stats().unknownTypeResponses, 1);
  });

  it("looks up on-demand keys by name or alias, including across a reconnect", async (t) => {
    const server = await FakeAdsServer.start(t);
    const addresses = new RecordingHandler(TYPE_URL.address, "on-demand");
    const authz = new RecordingHandler(TYPE_URL.authorization, "wildcard");
    const client = startClient(t, server, [addresses, authz]);
    const stream = await server.nextStream();
    await stream.nextRequest();
    await stream.nextRequest();

    const found = client.lookup(TYPE_URL.address, "net1/10.0.0.1");
    assert.deepEqual(await stream.nextRequest("the subscription"), {
      typeUrl: TYPE_URL.address,
      resourceNamesSubscribe: ["net1/10.0.0.1"],
      initialResourceVersions: {},
    });
    const nonce = stream.send(TYPE_URL.address, [addressResource("uid-1", "1", ["net1/10.0.0.1"])]);
    await found;
    assert.ok(addresses.held.has("uid-1"), "the handler ran before the lookup resolved");
    assert.deepEqual(await stream.nextRequest("the ACK"), ack(TYPE_URL.address, nonce));

    const subscribes = client.stats().requests.subscribe;
    await client.lookup(TYPE_URL.address, "net1/10.0.0.1");
    await client.lookup(TYPE_URL.address, "uid-1");
    assert.equal(client.stats().requests.subscribe, subscribes, "known keys resolve without a request");

    // The server's "no such resource" is a removal; it answers the lookup too.
    const missing = client.lookup(TYPE_URL.address, "net1/10.9.9.9");
    await stream.nextRequest("the second subscription");
    stream.send(TYPE_URL.address, [], ["net1/10.9.9.9"]);
    await missing;
    await stream.nextRequest("the ACK");

    await assert.rejects(client.lookup(TYPE_URL.address, "silent", { timeoutMs: 30 }), XdsLookupTimeoutError);
    await stream.nextRequest("the unanswered subscription");
    await assert.rejects(client.lookup(TYPE_URL.authorization, "a"), XdsClientUsageError);

    // A lookup still waiting when the stream ends is subscribed again on the next one.
    const later = client.lookup(TYPE_URL.address, "net1/10.0.0.2");
    await stream.nextRequest("the last subscription");
    stream.end();
    const second = await server.nextStream();
    assert.deepEqual(await second.nextRequest("initial address request"), {
      node: NODE,
      typeUrl: TYPE_URL.address,
      resourceNamesSubscribe: ["*"],
      resourceNamesUnsubscribe: ["*"],
      initialResourceVersions: { "uid-1": "1" },
    });
    await second.nextRequest("initial authorization request");
    assert.deepEqual(await second.nextRequest("the renewed subscription"), {
      typeUrl: TYPE_URL.address,
      resourceNamesSubscribe: ["net1/10.0.0.2"],
      initialResourceVersions: {},
    });
    second.send(TYPE_URL.address, [addressResource("uid-2", "1", ["net1/10.0.0.2"])]);
    await later;
  });

  it("backs off 10 ms doubling to the bound on errors, restarting after a clean end or a healthy stream", async (t) => {
    const server = await FakeAdsServer.start(t);
    let behaviour: "fail" | "end" | "answer-then-fail" = "fail";
    server.onStream = (stream) => {
      if (behaviour === "fail") stream.fail(grpc.status.UNAVAILABLE, "go away");
      else if (behaviour === "end") stream.end();
      else {
        stream.send(TYPE_URL.authorization, [authzResource("a", "1")]);
        setTimeout(() => stream.fail(grpc.status.INTERNAL, "broke"), 20);
      }
    };
    const client = startClient(t, server, [new RecordingHandler(TYPE_URL.authorization, "wildcard")], {
      backoff: { initialMs: 10, maxMs: 80 },
    });
    const seen: DisconnectInfo[] = [];
    const disconnects = new Queue<DisconnectInfo>();
    client.on("disconnected", (info) => {
      seen.push(info);
      disconnects.push(info);
    });
    // The behaviour is switched right after a disconnect, before the next stream opens (≥ 10 ms).
    const nextDelays = async (n: number): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) out.push((await disconnects.next("a disconnect")).retryInMs);
      return out;
    };

    assert.deepEqual(await nextDelays(6), [10, 20, 40, 80, 80, 80], "streams 1-6 fail");
    assert.equal(seen[0]!.code, grpc.status.UNAVAILABLE);
    assert.equal(seen[0]!.details, "go away");
    behaviour = "end";
    assert.deepEqual(await nextDelays(1), [10], "stream 7 ends cleanly");
    behaviour = "fail";
    assert.deepEqual(await nextDelays(3), [10, 20, 40], "streams 8-10 fail, from the initial delay again");
    behaviour = "answer-then-fail";
    assert.deepEqual(await nextDelays(1), [10], "stream 11 answered before it failed");
    behaviour = "fail";
    assert.deepEqual(await nextDelays(1), [20], "stream 12 fails");
    assert.equal(seen[10]!.responses, 1);

    // The delays are real: stream i+1 opened at least the announced delay after stream i.
    for (let i = 0; i + 1 < server.streams.length && i < seen.length; i++) {
      const gap = server.streams[i + 1]!.openedAt - server.streams[i]!.openedAt;
      assert.ok(
        gap >= seen[i]!.retryInMs - 1,
        `stream ${i + 2} opened ${gap.toFixed(1)} ms after stream ${i + 1}`,
      );
      assert.ok(
        gap < seen[i]!.retryInMs + 1_000,
        `stream ${i + 2} opened ${gap.toFixed(1)} ms after stream ${i + 1}`,
      );
    }
  });

  it("close stops reconnecting, cancels the stream and fails what is pending", async (t) => {
    const server = await FakeAdsServer.start(t);
    const client = startClient(t, server, [
      new RecordingHandler(TYPE_URL.address, "on-demand"),
      new RecordingHandler(TYPE_URL.authorization, "wildcard"),
    ]);
    const stream = await server.nextStream();
    await stream.nextRequest();
    await stream.nextRequest();
    const pending = client.lookup(TYPE_URL.address, "k");
    await stream.nextRequest("the subscription");

    client.close();
    await assert.rejects(pending, XdsClientClosedError);
    await assert.rejects(client.ready, XdsClientClosedError, "closed before the first ACK");
    await assert.rejects(client.lookup(TYPE_URL.address, "k2"), XdsClientClosedError);
    await sleep(150);
    assert.equal(stream.cancelled, true, "the server saw the stream cancelled");
    assert.equal(server.streams.length, 1, "no reconnect after close");
    client.close();
  });

  it("refuses bad options up front", async (t) => {
    const server = await FakeAdsServer.start(t);
    const authz = new RecordingHandler(TYPE_URL.authorization, "wildcard");
    assert.throws(() => startClient(t, server, [authz, authz]), XdsClientUsageError);
    assert.throws(
      () => startClient(t, server, [authz], { headers: { "bad header": "x" } }),
      XdsClientUsageError,
    );
    assert.throws(
      () => startClient(t, server, [authz], { node: { id: "n", metadata: { f: () => 1 } } }),
      XdsClientUsageError,
    );
  });
});

describe("IstioCertificateService definition", () => {
  it("carries CreateCertificate over gRPC with the codecs", async (t) => {
    const server = new grpc.Server(XDS_CHANNEL_OPTIONS);
    const received: { request: IstioCertificateRequest; authorization: grpc.MetadataValue[] }[] = [];
    server.addService(caServiceDefinition, {
      CreateCertificate: (
        call: grpc.ServerUnaryCall<IstioCertificateRequest, IstioCertificateResponse>,
        callback: grpc.sendUnaryData<IstioCertificateResponse>,
      ) => {
        received.push({ request: call.request, authorization: call.metadata.get("authorization") });
        if (call.request.csr === "") callback({ code: grpc.status.INVALID_ARGUMENT, details: "empty CSR" });
        else callback(null, { certChain: ["leaf", "root"] });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
        err === null ? resolve(p) : reject(err),
      ),
    );
    t.after(() => server.forceShutdown());
    const client = createCaClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    t.after(() => client.close());

    const request: IstioCertificateRequest = {
      csr: "-----BEGIN CERTIFICATE REQUEST-----",
      validityDuration: 86_400,
      metadata: { ImpersonatedIdentity: "spiffe://cluster.local/ns/default/sa/sleep" },
    };
    const metadata = new grpc.Metadata();
    metadata.set("authorization", "Bearer t");
    assert.deepEqual(await createCertificate(client, request, metadata), { certChain: ["leaf", "root"] });
    assert.deepEqual(received, [{ request, authorization: ["Bearer t"] }]);
    await assert.rejects(createCertificate(client, { ...request, csr: "" }), (err: unknown) => {
      return (err as grpc.ServiceError).code === grpc.status.INVALID_ARGUMENT;
    });
  });
});
