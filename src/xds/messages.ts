// Plain-object shapes of the delta ADS and CA messages (proto/envoy/service/discovery/v3/xds.proto,
// proto/istio/v1/auth/ca.proto), as src/xds/proto.ts encodes and decodes them. Same conventions as
// types.ts: camelCase names, bytes as Uint8Array, enums as numbers, unset optional fields omitted.
// google.protobuf.Struct fields are plain JSON-like records here; the codec converts them.

/** google.protobuf.Any. `typeUrl` names the message that `value` encodes. */
export interface AnyMessage {
  typeUrl: string;
  value: Uint8Array;
}

/** Envoy's Node: who the client is. `metadata` travels as a google.protobuf.Struct. */
export interface Node {
  id: string;
  cluster?: string;
  metadata?: Record<string, unknown>;
}

/** google.rpc.Status as a NACK carries it. */
export interface ErrorDetail {
  code?: number;
  message: string;
}

export interface Resource {
  name: string;
  version: string;
  resource?: AnyMessage;
  aliases?: string[];
}

export interface DeltaDiscoveryRequest {
  node?: Node;
  typeUrl: string;
  resourceNamesSubscribe?: string[];
  resourceNamesUnsubscribe?: string[];
  /** Decoded requests always carry this map, empty when the client held nothing. */
  initialResourceVersions?: Record<string, string>;
  responseNonce?: string;
  errorDetail?: ErrorDetail;
}

export interface DeltaDiscoveryResponse {
  systemVersionInfo?: string;
  resources: Resource[];
  typeUrl: string;
  nonce: string;
  removedResources: string[];
}

export interface IstioCertificateRequest {
  /** PEM-encoded certificate signing request. */
  csr: string;
  /** Requested lifetime in seconds. */
  validityDuration: number;
  metadata: Record<string, unknown>;
}

export interface IstioCertificateResponse {
  /** Leaf first; the last element is the root bundle. */
  certChain: string[];
}
