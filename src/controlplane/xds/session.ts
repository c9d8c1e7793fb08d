import { createHash } from "node:crypto";
import { encodeServedNodes } from "../../xds/proto.js";
import type { DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource } from "../../xds/messages.js";
import type { ServedNodes } from "../../xds/types.js";
import { TYPE_URL } from "../../xds/types.js";
import type { AmbientIndex, IndexedType } from "../index/index.js";

/** Who is on the other end of a stream, as the control plane authenticated it. */
export interface ProxyPeer {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly podName: string;
  readonly podUid: string;
  readonly node: string;
}

interface TypeState {
  /** Wildcard: every resource of the type; otherwise only `watching`. */
  wildcard: boolean;
  /** On-demand keys the proxy asked for (resource names or aliases such as `/10.0.0.5`). */
  readonly keys: Set<string>;
  /** name → version the proxy has (or has been sent). */
  readonly sent: Map<string, string>;
  lastNonce?: string;
  lastAckedNonce?: string;
  nacks: number;
  lastNack?: string;
}

export interface SessionEvents {
  /** A response left for the proxy; `oldestChange` is when the oldest change it carries happened. */
  onPush(typeUrl: string, resources: number, removed: number, oldestChange: number | undefined): void;
  onNack(typeUrl: string, message: string): void;
}

const SERVED = TYPE_URL.servedNodes;
/** Resources per delta response. */
export const MAX_RESOURCES_PER_RESPONSE = 2000;
const INDEXED: readonly string[] = [TYPE_URL.address, TYPE_URL.authorization];

/**
 * One ztunnel's delta ADS stream. Keeps, per type, what the proxy has, so that every response
 * carries only what differs from it: on connect the difference from `initial_resource_versions`,
 * later only resources that changed. A NACK is recorded and never answered by re-sending the same
 * versions (the proxy would reject them again); the next change of a resource sends it anew.
 */
export class ProxySession {
  private readonly types = new Map<string, TypeState>();
  private nonce = 0;
  private served: { value: ServedNodes; version: string; bytes: Uint8Array } | undefined;
  readonly connectedAt = new Date();

  constructor(
    readonly id: string,
    readonly peer: ProxyPeer,
    private readonly index: AmbientIndex,
    private readonly servedNodes: (node: string) => ServedNodes,
    private readonly send: (res: DeltaDiscoveryResponse) => void,
    private readonly events: SessionEvents,
  ) {
    this.refreshServed();
  }

  onRequest(req: DeltaDiscoveryRequest): void {
    const typeUrl = req.typeUrl;
    let state = this.types.get(typeUrl);
    if (req.responseNonce && state) {
      if (req.errorDetail && (req.errorDetail.message || req.errorDetail.code)) {
        state.nacks++;
        state.lastNack = req.errorDetail.message ?? `code ${req.errorDetail.code}`;
        this.events.onNack(typeUrl, state.lastNack);
      } else {
        state.lastAckedNonce = req.responseNonce;
      }
    }
    const subscribe = req.resourceNamesSubscribe ?? [];
    const unsubscribe = req.resourceNamesUnsubscribe ?? [];
    if (!state) {
      // The first request of a type opens it: empty lists = wildcard; `*` both subscribed and
      // unsubscribed = on-demand with nothing yet.
      const onDemand = subscribe.includes("*") && unsubscribe.includes("*");
      state = {
        wildcard: !onDemand && (subscribe.length === 0 || subscribe.includes("*")),
        keys: new Set(),
        sent: new Map(Object.entries(req.initialResourceVersions ?? {})),
        nacks: 0,
      };
      this.types.set(typeUrl, state);
      for (const k of subscribe) if (k !== "*") state.keys.add(k);
      this.sendDiff(
        typeUrl,
        state,
        state.wildcard ? undefined : this.watched(typeUrl, state),
        undefined,
        true,
      );
      return;
    }
    if (subscribe.length === 0 && unsubscribe.length === 0) return; // a plain ACK/NACK
    for (const k of unsubscribe) {
      if (k === "*") state.wildcard = false;
      state.keys.delete(k);
      for (const name of this.resolve(typeUrl, k)) state.sent.delete(name);
      state.sent.delete(k);
    }
    const asked = new Set<string>();
    for (const k of subscribe) {
      if (k === "*") {
        state.wildcard = true;
        continue;
      }
      state.keys.add(k);
      const names = this.resolve(typeUrl, k);
      for (const name of names) asked.add(name);
      // A key that names nothing is answered with a removal of that key, so the proxy's
      // lookup ends instead of waiting.
      if (names.length === 0) asked.add(k);
    }
    this.sendDiff(
      typeUrl,
      state,
      state.wildcard && subscribe.includes("*") ? undefined : asked,
      undefined,
      true,
    );
  }

  /** Resources changed in the index; send each proxy what differs from what it has. */
  push(changed: ReadonlyMap<IndexedType, ReadonlySet<string>>, oldestChange: number): void {
    for (const [typeUrl, names] of changed) {
      const state = this.types.get(typeUrl);
      if (!state) continue;
      let candidates: Set<string>;
      if (state.wildcard) candidates = new Set(names);
      else {
        const watched = this.watched(typeUrl, state);
        candidates = new Set([...names].filter((n) => watched.has(n) || state.sent.has(n)));
      }
      if (candidates.size > 0) this.sendDiff(typeUrl, state, candidates, oldestChange, false);
    }
  }

  /** Recompute the served-node set (the topology changed) and push it if it differs. */
  refreshServed(): void {
    const value = this.servedNodes(this.peer.node);
    const bytes = encodeServedNodes(value);
    const version = createHash("sha1").update(bytes).digest("hex").slice(0, 16);
    if (this.served?.version === version) return;
    this.served = { value, version, bytes };
    const state = this.types.get(SERVED);
    if (state) this.sendDiff(SERVED, state, new Set([this.peer.node]), undefined, false);
  }

  servedNodesValue(): ServedNodes | undefined {
    return this.served?.value;
  }

  /** What this proxy has, per type, for /debug. */
  debug(): Record<string, unknown> {
    const types: Record<string, unknown> = {};
    for (const [typeUrl, s] of this.types) {
      types[typeUrl] = {
        mode: s.wildcard ? "wildcard" : "on-demand",
        ...(s.wildcard ? {} : { subscribed: [...s.keys] }),
        resources: s.sent.size,
        lastNonce: s.lastNonce,
        lastAckedNonce: s.lastAckedNonce,
        nacks: s.nacks,
        ...(s.lastNack ? { lastNack: s.lastNack } : {}),
      };
    }
    return {
      id: this.id,
      node: this.peer.node,
      identity: `${this.peer.namespace}/${this.peer.serviceAccount}`,
      pod: `${this.peer.namespace}/${this.peer.podName}`,
      connectedAt: this.connectedAt.toISOString(),
      servedNodes: this.served?.value.nodes ?? [],
      types,
    };
  }

  /** name → version per type, as the proxy holds them (the per-proxy config dump). */
  versions(): Record<string, Record<string, string>> {
    const out: Record<string, Record<string, string>> = {};
    for (const [typeUrl, s] of this.types) out[typeUrl] = Object.fromEntries(s.sent);
    return out;
  }

  private watched(typeUrl: string, state: TypeState): Set<string> {
    const names = new Set<string>();
    for (const k of state.keys) for (const n of this.resolve(typeUrl, k)) names.add(n);
    return names;
  }

  private resolve(typeUrl: string, keyName: string): string[] {
    if (typeUrl === SERVED) return keyName === this.peer.node ? [keyName] : [];
    if (!INDEXED.includes(typeUrl)) return [];
    return this.index.resolve(typeUrl as IndexedType, keyName);
  }

  private current(
    typeUrl: string,
    name: string,
  ): { version: string; bytes: Uint8Array; aliases: readonly string[] } | undefined {
    if (typeUrl === SERVED)
      return name === this.peer.node && this.served ? { ...this.served, aliases: [] } : undefined;
    if (!INDEXED.includes(typeUrl)) return undefined;
    return this.index.get(typeUrl as IndexedType, name);
  }

  /**
   * Send the difference between what the proxy has and the index, over `names` (all of the
   * type when undefined). `reportEmpty`: answer even when nothing differs (a subscription must
   * be answered, or the proxy waits for its first response).
   */
  private sendDiff(
    typeUrl: string,
    state: TypeState,
    names: ReadonlySet<string> | undefined,
    oldest: number | undefined,
    reportEmpty: boolean,
  ): void {
    const resources: Resource[] = [];
    const removed: string[] = [];
    const consider = (name: string): void => {
      const cur = this.current(typeUrl, name);
      if (cur) {
        if (state.sent.get(name) !== cur.version) {
          resources.push({
            name,
            version: cur.version,
            resource: { typeUrl, value: cur.bytes },
            ...(cur.aliases.length > 0 ? { aliases: [...cur.aliases] } : {}),
          });
          state.sent.set(name, cur.version);
        }
      } else if (state.sent.has(name) || (names !== undefined && !state.wildcard)) {
        removed.push(name);
        state.sent.delete(name);
      }
    };
    if (names) for (const n of names) consider(n);
    else {
      const all =
        typeUrl === SERVED
          ? [this.peer.node]
          : INDEXED.includes(typeUrl)
            ? [...this.index.all(typeUrl as IndexedType).keys()]
            : [];
      for (const n of all) consider(n);
      // What the proxy reported having on reconnect but no longer exists.
      const present = new Set(all);
      for (const n of [...state.sent.keys()]) if (!present.has(n)) consider(n);
    }
    if (resources.length === 0 && removed.length === 0 && !reportEmpty) return;
    // A first push of a large cluster goes out in parts: one response of every workload would be
    // tens of megabytes, serialised at once for every proxy connecting.
    for (let i = 0; i === 0 || i < resources.length; i += MAX_RESOURCES_PER_RESPONSE) {
      const part = resources.slice(i, i + MAX_RESOURCES_PER_RESPONSE);
      const gone = i === 0 ? removed : [];
      const nonce = String(++this.nonce);
      state.lastNonce = nonce;
      this.send({ typeUrl, nonce, systemVersionInfo: "", resources: part, removedResources: gone });
      this.events.onPush(typeUrl, part.length, gone.length, oldest);
    }
  }
}
