// HBONE: HTTP/2 CONNECT over mutual TLS between ztunnels (see docs/hbone.md).
export { HboneClient } from "./client.js";
export type {
  HboneClientOptions,
  HboneDialRequest,
  HboneSource,
  HboneStream,
  HboneStreamInfo,
} from "./client.js";
export { defaultConnectSocket } from "./connection.js";
export type { ConnectSocket } from "./connection.js";
export { HboneDialError, isHboneDialError } from "./errors.js";
export type { HboneDialErrorKind } from "./errors.js";
export {
  baggage,
  connectRequestHeaders,
  formatAuthority,
  forwarded,
  parseAuthority,
  parseBaggage,
  parseForwarded,
  parseTraceparent,
  traceparent,
} from "./headers.js";
export type {
  BaggageFields,
  ConnectHeaderFields,
  ForwardedFields,
  ParsedAuthority,
  ParsedForwarded,
  SocketAddress,
  TraceParent,
} from "./headers.js";
export type { PoolStats } from "./pool.js";
export { HboneServer } from "./server.js";
export type {
  HboneHandler,
  HboneHandlerResult,
  HbonePeer,
  HboneRequest,
  HboneServerOptions,
  HboneServerStats,
} from "./server.js";
export { DEFAULT_HBONE_SETTINGS, resolveHboneSettings } from "./settings.js";
export type { HboneSettings } from "./settings.js";
export { splice, SpliceAbortError } from "./splice.js";
export type { SpliceResult } from "./splice.js";
export { certificateIdentity, HBONE_ALPN, HBONE_TLS_CIPHERS, HBONE_TLS_VERSION } from "./tls.js";
export type { CertificateIdentity, WorkloadCredential } from "./tls.js";
