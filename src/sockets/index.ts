// The transparent-socket layer of the ztunnel: listeners and upstream connections with
// IP_TRANSPARENT, SO_MARK and per-namespace creation, handed to node:net. See docs/sockets.md.

export { createListener, DEFAULT_BACKLOG } from "./listener.js";
export type { ListenerOptions } from "./listener.js";
export { connectTcp, DEFAULT_CONNECT_TIMEOUT_MS } from "./connect.js";
export type { ConnectOptions } from "./connect.js";
export { probeCapabilities, setSocketMark, socketFd, socketMark } from "./marks.js";
export type { Capabilities } from "./marks.js";
export {
  ConnectError,
  isConnectError,
  isSocketSyscallError,
  NetnsRestoreError,
  SocketHandleError,
  SocketSyscallError,
} from "./errors.js";
export type { ConnectStage } from "./errors.js";
export { AddressError } from "./sockaddr.js";
export { SocketOptionsError } from "./settings.js";
export { UnsupportedPlatformError } from "./constants.js";
