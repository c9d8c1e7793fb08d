import { EventEmitter } from "node:events";
import * as grpc from "@grpc/grpc-js";
import { createAdsClient } from "./grpc.js";
import type { AdsClient } from "./grpc.js";
import type { DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Resource } from "./messages.js";
import { encodeDeltaDiscoveryRequest, loadProtos } from "./proto.js";

// A delta ADS client that behaves like upstream ztunnel's on the wire (see docs/xds.md): one
// initial request per watched type, ACK/NACK per response with per-resource rejection, on-demand
// subscriptions, reconnects with backoff that report the versions it holds.

export type WatchMode = "wildcard" | "on-demand";

/** What one response changes for a type: resources added or updated, and names removed. */
export interface ResourceChanges {
  added: Resource[];
  removed: string[];
}

export interface RejectedResource {
  name: string;
  reason: string;
}

export interface ApplyResult {
  /** Resources of `added` the handler refused; the rest count as applied. */
  rejected: RejectedResource[];
}

export interface WatchedType {
  typeUrl: string;
  /**
   * `wildcard`: the server sends every resource of the type. `on-demand`: nothing until `lookup`
   * subscribes to a key.
   */
  mode: WatchMode;
  /**
   * Apply one response. Called once per response, in order; every `added` resource has a name and
   * a body whose type_url is `typeUrl` (others are rejected before). Throwing rejects all of
   * `added`.
   */
  apply(changes: ResourceChanges): ApplyResult;
}

export type AdsCredentials =
  | {
      kind: "tls";
      /** PEM bundle of the CA(s) that sign the server's certificate. */
      rootCa: string | Uint8Array;
      /** Name to verify the certificate against when it differs from the target's host. */
      serverName?: string;
    }
  | { kind: "insecure" };

export interface BackoffOptions {
  /** First reconnect delay after an error, and the delay after a clean end. Default 10 ms. */
  initialMs?: number;
  /** Upper bound the delay doubles up to. Default 15 s. */
  maxMs?: number;
}

export interface DeltaAdsClientOptions {
  /** host:port of the server. */
  target: string;
  credentials: AdsCredentials;
  /**
   * Sent as `authorization: Bearer <token>` on every stream. A function is called before each
   * (re)connect, so a rotated token file is picked up.
   */
  token?: string | (() => string | Promise<string>);
  /** Sent as the `clusterid` header. */
  clusterId?: string;
  /** More headers for every stream. */
  headers?: Record<string, string>;
  node: Node;
  types: WatchedType[];
  backoff?: BackoffOptions;
  /** Default time `lookup` waits for an answer. Default 5 s. */
  lookupTimeoutMs?: number;
  /** Extra gRPC channel options (keepalive, authority …); the 200 MiB limits are always set. */
  channelOptions?: grpc.ChannelOptions;
}

export type RequestKind = "initial" | "ack" | "nack" | "subscribe";

export interface ResponseInfo {
  stream: number;
  typeUrl: string;
  nonce: string;
  added: number;
  removed: number;
  rejected: RejectedResource[];
  /** Not a watched type: acknowledged and otherwise ignored. */
  unknownType: boolean;
}

export interface DisconnectInfo {
  stream: number;
  /** The gRPC status code the stream ended with (UNAUTHENTICATED when no token could be had). */
  code: grpc.status;
  details: string;
  /** Responses the stream delivered before it ended. */
  responses: number;
  /** When the next stream starts. (Closing the client ends its stream without this event.) */
  retryInMs: number;
}

export interface DeltaAdsClientEvents {
  /** The server answered on a new stream (headers or a first response). */
  connected: [info: { stream: number }];
  disconnected: [info: DisconnectInfo];
  request: [info: { stream: number; typeUrl: string; kind: RequestKind }];
  response: [info: ResponseInfo];
}

export interface DeltaAdsClientStats {
  streams: number;
  connected: boolean;
  requests: Record<RequestKind, number>;
  responses: number;
  unknownTypeResponses: number;
  resourcesAccepted: number;
  resourcesRejected: number;
  resourcesRemoved: number;
}

/** Misuse of the client: bad options, or a lookup on a type that is not watched on demand. */
export class XdsClientUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "XdsClientUsageError";
  }
}

export class XdsClientClosedError extends Error {
  constructor(readonly operation: string) {
    super(`${operation}: the ADS client is closed`);
    this.name = "XdsClientClosedError";
  }
}

export class XdsLookupTimeoutError extends Error {
  constructor(
    readonly typeUrl: string,
    readonly key: string,
    readonly timeoutMs: number,
  ) {
    super(`no answer for ${key} (${typeUrl}) within ${timeoutMs} ms`);
    this.name = "XdsLookupTimeoutError";
  }
}

const DEFAULT_INITIAL_BACKOFF_MS = 10;
const DEFAULT_MAX_BACKOFF_MS = 15_000;
const DEFAULT_LOOKUP_TIMEOUT_MS = 5_000;

/** The resources of one type the client holds, by name; for on-demand types also by alias. */
class TypeState {
  /** Accepted resources: name → version, reported as initial_resource_versions on reconnect. */
  readonly versions = new Map<string, string>();
  private readonly aliasesOf = new Map<string, readonly string[]>();
  /** Name or alias → name. Only on-demand types need it (for lookup). */
  private readonly keys = new Map<string, string>();

  constructor(readonly watch: WatchedType) {}

  get onDemand(): boolean {
    return this.watch.mode === "on-demand";
  }

  accept(resource: Resource): void {
    this.forget(resource.name);
    this.versions.set(resource.name, resource.version);
    if (!this.onDemand) return;
    this.keys.set(resource.name, resource.name);
    const aliases = resource.aliases ?? [];
    for (const alias of aliases) this.keys.set(alias, resource.name);
    if (aliases.length > 0) this.aliasesOf.set(resource.name, aliases);
  }

  forget(name: string): void {
    this.versions.delete(name);
    if (!this.onDemand) return;
    if (this.keys.get(name) === name) this.keys.delete(name);
    for (const alias of this.aliasesOf.get(name) ?? []) {
      if (this.keys.get(alias) === name) this.keys.delete(alias);
    }
    this.aliasesOf.delete(name);
  }

  knows(key: string): boolean {
    return this.keys.has(key);
  }
}

interface PendingLookup {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

interface ActiveStream {
  readonly id: number;
  readonly call: grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
  connected: boolean;
  responses: number;
  status: grpc.StatusObject | undefined;
  ended: boolean;
}

export class DeltaAdsClient extends EventEmitter<DeltaAdsClientEvents> {
  /**
   * Resolves once the first response of every wildcard type has been ACKed (a NACK does not
   * count: the client is not ready with rejected config); with no wildcard type, once the first
   * stream is open. Rejects with XdsClientClosedError if the client closes before.
   */
  readonly ready: Promise<void>;

  private readonly options: DeltaAdsClientOptions;
  private readonly grpcClient: AdsClient;
  private readonly states = new Map<string, TypeState>();
  private readonly lookups = new Map<string, Map<string, PendingLookup>>();
  private readonly awaitingFirstAck: Set<string>;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private nextBackoffMs: number;
  private stream: ActiveStream | undefined;
  private streamCount = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readyDone = false;
  private settleReady!: (err?: Error) => void;
  private readonly counters = {
    requests: { initial: 0, ack: 0, nack: 0, subscribe: 0 } as Record<RequestKind, number>,
    responses: 0,
    unknownTypeResponses: 0,
    resourcesAccepted: 0,
    resourcesRejected: 0,
    resourcesRemoved: 0,
  };

  /**
   * Connects on the next turn of the event loop, so listeners added right after construction see
   * every event.
   */
  constructor(options: DeltaAdsClientOptions) {
    super();
    this.options = options;
    if (options.target === "") throw new XdsClientUsageError("target is empty");
    for (const watch of options.types) {
      if (this.states.has(watch.typeUrl)) throw new XdsClientUsageError(`${watch.typeUrl} is watched twice`);
      this.states.set(watch.typeUrl, new TypeState(watch));
    }
    this.initialBackoffMs = options.backoff?.initialMs ?? DEFAULT_INITIAL_BACKOFF_MS;
    if (!(this.initialBackoffMs > 0)) {
      throw new XdsClientUsageError(`backoff.initialMs must be positive, not ${this.initialBackoffMs}`);
    }
    this.maxBackoffMs = Math.max(this.initialBackoffMs, options.backoff?.maxMs ?? DEFAULT_MAX_BACKOFF_MS);
    this.nextBackoffMs = this.initialBackoffMs;
    // grpc-js throws on invalid header names or values, and a node whose metadata has no Struct
    // form would fail every stream's serialization; find out now rather than on each connect.
    try {
      this.staticMetadata();
    } catch (err) {
      throw new XdsClientUsageError(`headers: ${err instanceof Error ? err.message : String(err)}`);
    }
    loadProtos();
    try {
      encodeDeltaDiscoveryRequest({ node: options.node, typeUrl: "" });
    } catch (err) {
      throw new XdsClientUsageError(`node: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.awaitingFirstAck = new Set(options.types.filter((t) => t.mode === "wildcard").map((t) => t.typeUrl));

    const ready = new Promise<void>((resolve, reject) => {
      this.settleReady = (err) => (err === undefined ? resolve() : reject(err));
    });
    // Nobody has to await `ready`; its rejection on close must not count as unhandled.
    ready.catch(() => undefined);
    this.ready = ready;

    this.grpcClient = createAdsClient(options.target, channelCredentials(options.credentials), {
      ...tlsNameOptions(options.credentials),
      ...options.channelOptions,
    });
    this.reconnectTimer = setTimeout(() => void this.openStream(), 0);
  }

  /** Whether a stream is open and the server has answered on it. */
  get connected(): boolean {
    return this.stream?.connected ?? false;
  }

  stats(): DeltaAdsClientStats {
    return {
      streams: this.streamCount,
      connected: this.connected,
      requests: { ...this.counters.requests },
      responses: this.counters.responses,
      unknownTypeResponses: this.counters.unknownTypeResponses,
      resourcesAccepted: this.counters.resourcesAccepted,
      resourcesRejected: this.counters.resourcesRejected,
      resourcesRemoved: this.counters.resourcesRemoved,
    };
  }

  /** The accepted resources of a type: name → version (what a reconnect reports). */
  versions(typeUrl: string): ReadonlyMap<string, string> {
    return this.states.get(typeUrl)?.versions ?? new Map();
  }

  /**
   * Subscribe to `key` (a resource name or alias) of an on-demand type. Resolves when a response
   * mentions the key, whether it added, rejected or removed it (removal is the server's "no such
   * resource"), or at once when the client already holds it; the handler has run by then.
   * Rejects with XdsLookupTimeoutError after `timeoutMs`; the subscription stays.
   */
  lookup(typeUrl: string, key: string, options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closed) return Promise.reject(new XdsClientClosedError(`lookup ${key}`));
    const state = this.states.get(typeUrl);
    if (state === undefined || !state.onDemand) {
      return Promise.reject(
        new XdsClientUsageError(`lookup ${key}: ${typeUrl} is not watched on demand by this client`),
      );
    }
    if (state.knows(key)) return Promise.resolve();
    let pendingOfType = this.lookups.get(typeUrl);
    if (pendingOfType === undefined) {
      pendingOfType = new Map();
      this.lookups.set(typeUrl, pendingOfType);
    }
    const existing = pendingOfType.get(key);
    if (existing !== undefined) return existing.promise;

    const timeoutMs = options.timeoutMs ?? this.options.lookupTimeoutMs ?? DEFAULT_LOOKUP_TIMEOUT_MS;
    let resolve!: () => void;
    let reject!: (err: Error) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const pending: PendingLookup = {
      promise,
      resolve,
      reject,
      timer: setTimeout(() => {
        pendingOfType.delete(key);
        reject(new XdsLookupTimeoutError(typeUrl, key, timeoutMs));
      }, timeoutMs),
    };
    pendingOfType.set(key, pending);
    const stream = this.stream;
    // Without a stream the subscription goes out when the next one opens (openStream).
    if (stream !== undefined && stream.status === undefined) {
      this.send(stream, { typeUrl, resourceNamesSubscribe: [key] }, "subscribe");
    }
    return promise;
  }

  /** Stop: cancel the stream, stop reconnecting, fail pending lookups. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const stream = this.stream;
    this.stream = undefined;
    stream?.call.cancel();
    for (const pendingOfType of this.lookups.values()) {
      for (const [key, pending] of pendingOfType) {
        clearTimeout(pending.timer);
        pending.reject(new XdsClientClosedError(`lookup ${key}`));
      }
    }
    this.lookups.clear();
    if (!this.readyDone) {
      this.readyDone = true;
      this.settleReady(new XdsClientClosedError("ready"));
    }
    this.grpcClient.close();
  }

  private async openStream(): Promise<void> {
    this.reconnectTimer = undefined;
    if (this.closed) return;
    const id = ++this.streamCount;
    let metadata: grpc.Metadata;
    try {
      metadata = await this.metadata();
    } catch (err) {
      const details = `getting the token: ${err instanceof Error ? err.message : String(err)}`;
      this.scheduleReconnect({ id, responses: 0 }, { code: grpc.status.UNAUTHENTICATED, details });
      return;
    }
    if (this.closed) return;

    const call = this.grpcClient.DeltaAggregatedResources(metadata);
    const stream: ActiveStream = {
      id,
      call,
      connected: false,
      responses: 0,
      status: undefined,
      ended: false,
    };
    this.stream = stream;
    call.on("metadata", () => this.markConnected(stream));
    call.on("data", (response: DeltaDiscoveryResponse) => this.onResponse(stream, response));
    // The status event carries the same failure; without a listener 'error' would throw.
    call.on("error", () => undefined);
    // Responses buffered in the readable side can still arrive after the status; the stream is
    // over once both the status is in and every response has been handled.
    call.on("status", (status: grpc.StatusObject) => {
      stream.status = status;
      this.maybeFinish(stream);
    });
    call.on("end", () => {
      stream.ended = true;
      this.maybeFinish(stream);
    });

    for (const state of this.states.values()) this.send(stream, this.initialRequest(state), "initial");
    for (const [typeUrl, pendingOfType] of this.lookups) {
      const keys = [...pendingOfType.keys()];
      if (keys.length > 0) this.send(stream, { typeUrl, resourceNamesSubscribe: keys }, "subscribe");
    }
    if (this.awaitingFirstAck.size === 0) this.markReady();
  }

  private staticMetadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.options.clusterId !== undefined) metadata.set("clusterid", this.options.clusterId);
    for (const [name, value] of Object.entries(this.options.headers ?? {})) metadata.set(name, value);
    if (typeof this.options.token === "string") metadata.set("authorization", `Bearer ${this.options.token}`);
    return metadata;
  }

  private async metadata(): Promise<grpc.Metadata> {
    const metadata = this.staticMetadata();
    const token = this.options.token;
    if (typeof token === "function") metadata.set("authorization", `Bearer ${await token()}`);
    return metadata;
  }

  /**
   * Node on every initial request; the versions held (accepted, not rejected) so the server sends
   * only what changed. On demand: subscribe and unsubscribe "*" at once, which is how upstream
   * asks for nothing until a lookup, since an empty subscription means wildcard.
   */
  private initialRequest(state: TypeState): DeltaDiscoveryRequest {
    const request: DeltaDiscoveryRequest = {
      node: this.options.node,
      typeUrl: state.watch.typeUrl,
      initialResourceVersions: Object.fromEntries(state.versions),
    };
    if (state.onDemand) {
      request.resourceNamesSubscribe = ["*"];
      request.resourceNamesUnsubscribe = ["*"];
    }
    return request;
  }

  private send(stream: ActiveStream, request: DeltaDiscoveryRequest, kind: RequestKind): void {
    stream.call.write(request);
    this.counters.requests[kind]++;
    this.emit("request", { stream: stream.id, typeUrl: request.typeUrl, kind });
  }

  private markConnected(stream: ActiveStream): void {
    if (stream.connected || stream !== this.stream) return;
    stream.connected = true;
    this.emit("connected", { stream: stream.id });
  }

  private markReady(): void {
    if (this.readyDone) return;
    this.readyDone = true;
    this.settleReady();
  }

  private onResponse(stream: ActiveStream, response: DeltaDiscoveryResponse): void {
    if (this.closed || stream !== this.stream) return;
    this.markConnected(stream);
    stream.responses++;
    this.counters.responses++;
    const { typeUrl, nonce } = response;
    const state = this.states.get(typeUrl);
    if (state === undefined) {
      // Upstream ACKs types it has no handler for rather than NACKing them.
      this.counters.unknownTypeResponses++;
      this.answer(stream, { typeUrl, responseNonce: nonce }, "ack");
      this.emit("response", {
        stream: stream.id,
        typeUrl,
        nonce,
        added: response.resources.length,
        removed: response.removedResources.length,
        rejected: [],
        unknownType: true,
      });
      return;
    }

    const rejected = this.applyResponse(state, response);
    const request: DeltaDiscoveryRequest = { typeUrl, responseNonce: nonce };
    if (rejected.length > 0) {
      request.errorDetail = { message: rejected.map((r) => `${r.name}: ${r.reason}`).join("; ") };
    }
    this.answer(stream, request, rejected.length > 0 ? "nack" : "ack");
    if (rejected.length === 0 && this.awaitingFirstAck.delete(typeUrl) && this.awaitingFirstAck.size === 0) {
      this.markReady();
    }
    if (state.onDemand) this.settleLookups(typeUrl, response);
    this.emit("response", {
      stream: stream.id,
      typeUrl,
      nonce,
      added: response.resources.length,
      removed: response.removedResources.length,
      rejected,
      unknownType: false,
    });
  }

  /** Check, hand to the handler, and track what was accepted; returns every rejection. */
  private applyResponse(state: TypeState, response: DeltaDiscoveryResponse): RejectedResource[] {
    const rejected: RejectedResource[] = [];
    const valid: Resource[] = [];
    for (const resource of response.resources) {
      const problem = resourceProblem(resource, response.typeUrl);
      if (problem === undefined) valid.push(resource);
      else rejected.push({ name: resource.name, reason: problem });
    }
    try {
      const result = state.watch.apply({ added: valid, removed: response.removedResources });
      rejected.push(...result.rejected);
    } catch (err) {
      const reason = `handler failed: ${err instanceof Error ? err.message : String(err)}`;
      for (const resource of valid) rejected.push({ name: resource.name, reason });
    }

    const rejectedNames = new Set(rejected.map((r) => r.name));
    for (const resource of response.resources) {
      // A rejected resource is not held at the version sent; leaving it out of the versions makes
      // the server send it again after a reconnect.
      if (rejectedNames.has(resource.name)) state.forget(resource.name);
      else state.accept(resource);
    }
    for (const name of response.removedResources) state.forget(name);
    this.counters.resourcesAccepted += response.resources.length - countIn(response.resources, rejectedNames);
    this.counters.resourcesRejected += rejected.length;
    this.counters.resourcesRemoved += response.removedResources.length;
    return rejected;
  }

  private answer(stream: ActiveStream, request: DeltaDiscoveryRequest, kind: RequestKind): void {
    // Responses read after the status have no stream to answer on; the next stream's initial
    // request reports what they changed.
    if (stream.status === undefined) this.send(stream, request, kind);
  }

  private settleLookups(typeUrl: string, response: DeltaDiscoveryResponse): void {
    const pendingOfType = this.lookups.get(typeUrl);
    if (pendingOfType === undefined || pendingOfType.size === 0) return;
    const settle = (key: string): void => {
      const pending = pendingOfType.get(key);
      if (pending === undefined) return;
      pendingOfType.delete(key);
      clearTimeout(pending.timer);
      pending.resolve();
    };
    for (const resource of response.resources) {
      settle(resource.name);
      for (const alias of resource.aliases ?? []) settle(alias);
    }
    for (const name of response.removedResources) settle(name);
  }

  private maybeFinish(stream: ActiveStream): void {
    const status = stream.status;
    if (status === undefined || !stream.ended || stream !== this.stream) return;
    this.stream = undefined;
    if (this.closed) return;
    this.scheduleReconnect(stream, status);
  }

  /**
   * Backoff: a clean end (status OK) waits the initial delay; an error waits the current delay,
   * which then doubles up to the maximum. A stream that delivered responses proved the server
   * reachable, so the delay restarts from the initial one when it ends.
   */
  private scheduleReconnect(
    stream: Pick<ActiveStream, "id" | "responses">,
    status: Pick<grpc.StatusObject, "code" | "details">,
  ): void {
    let delay: number;
    if (status.code === grpc.status.OK) {
      delay = this.initialBackoffMs;
      this.nextBackoffMs = this.initialBackoffMs;
    } else {
      if (stream.responses > 0) this.nextBackoffMs = this.initialBackoffMs;
      delay = this.nextBackoffMs;
      this.nextBackoffMs = Math.min(this.nextBackoffMs * 2, this.maxBackoffMs);
    }
    this.reconnectTimer = setTimeout(() => void this.openStream(), delay);
    this.emit("disconnected", {
      stream: stream.id,
      code: status.code,
      details: status.details,
      responses: stream.responses,
      retryInMs: delay,
    });
  }
}

/** Why the client rejects a resource before its handler sees it, if it does. */
function resourceProblem(resource: Resource, typeUrl: string): string | undefined {
  if (resource.name === "") return "resource without a name";
  if (resource.resource === undefined) return "resource without a body";
  if (resource.resource.typeUrl !== typeUrl) return `body of type ${resource.resource.typeUrl || "(none)"}`;
  return undefined;
}

function countIn(resources: Resource[], names: Set<string>): number {
  let n = 0;
  for (const resource of resources) if (names.has(resource.name)) n++;
  return n;
}

function channelCredentials(credentials: AdsCredentials): grpc.ChannelCredentials {
  if (credentials.kind === "insecure") return grpc.credentials.createInsecure();
  const { rootCa } = credentials;
  return grpc.credentials.createSsl(
    typeof rootCa === "string" ? Buffer.from(rootCa, "utf8") : Buffer.from(rootCa),
  );
}

function tlsNameOptions(credentials: AdsCredentials): grpc.ChannelOptions {
  if (credentials.kind !== "tls" || credentials.serverName === undefined) return {};
  return {
    "grpc.ssl_target_name_override": credentials.serverName,
    "grpc.default_authority": credentials.serverName,
  };
}
