export { authorize } from "./authorize.js";
export type { AuthorizationDecision, ConnectionToAuthorize } from "./authorize.js";
export { compilePolicy } from "./compile.js";
export type { CompiledPolicy, ConnectionFacts } from "./compile.js";
export { InvalidAuthorizationError } from "./errors.js";
export { peerIdentity } from "./peer.js";
export type { PeerIdentity } from "./peer.js";
export { authorizationProblem } from "./validate.js";
