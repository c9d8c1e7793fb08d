export { ZtunnelState } from "./state.js";
export type {
  ConfigDump,
  ServedNodesView,
  ServiceEndpoint,
  ServiceResolution,
  StateChange,
  ZtunnelStateEvents,
  ZtunnelStateOptions,
} from "./state.js";
export type { GatewayDump, PolicyDump, ServiceDump, WorkloadDump } from "./dump.js";
export { DEFAULT_SERVICE_ACCOUNT, identityOf } from "./identity.js";
export {
  canonicalIpBytes,
  canonicalIpText,
  canonicalizeIpText,
  formatIp,
  formatSocketAddress,
  lookupKey,
  networkAddressKey,
  parseIp,
} from "./ip.js";
export { serviceKeyOf } from "./validate.js";
