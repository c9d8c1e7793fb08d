import type {
  Authorization,
  AuthzAddress,
  Match,
  ServiceAccountMatch,
  StringMatch,
} from "../../xds/types.js";
import { AuthzAction, AuthzScope } from "../../xds/types.js";

// What makes an Authorization unenforceable. Everything here would otherwise have to be guessed
// at evaluation time, and a guess that makes a list entry match nothing widens a DENY policy.

const SCOPES = new Set<number>(Object.values(AuthzScope));
const ACTIONS = new Set<number>(Object.values(AuthzAction));

/** Why `authorization` cannot be enforced, or undefined when it can. */
export function authorizationProblem(authorization: Authorization): string | undefined {
  if (authorization.name === "") return "policy without a name";
  if (authorization.namespace === "") return "policy without a namespace";
  if (!SCOPES.has(authorization.scope)) return `unknown scope ${authorization.scope}`;
  if (!ACTIONS.has(authorization.action)) return `unknown action ${authorization.action}`;
  for (const [r, rule] of authorization.rules.entries()) {
    for (const [c, clause] of rule.clauses.entries()) {
      for (const [m, match] of clause.matches.entries()) {
        const problem = matchProblem(match);
        if (problem !== undefined) return `rules[${r}].clauses[${c}].matches[${m}].${problem}`;
      }
    }
  }
  return undefined;
}

function matchProblem(match: Match): string | undefined {
  const lists = [
    ["namespaces", match.namespaces, stringMatchProblem],
    ["notNamespaces", match.notNamespaces, stringMatchProblem],
    ["principals", match.principals, stringMatchProblem],
    ["notPrincipals", match.notPrincipals, stringMatchProblem],
    ["serviceAccounts", match.serviceAccounts, serviceAccountProblem],
    ["notServiceAccounts", match.notServiceAccounts, serviceAccountProblem],
    ["sourceIps", match.sourceIps, addressProblem],
    ["notSourceIps", match.notSourceIps, addressProblem],
    ["destinationIps", match.destinationIps, addressProblem],
    ["notDestinationIps", match.notDestinationIps, addressProblem],
    ["destinationPorts", match.destinationPorts, portProblem],
    ["notDestinationPorts", match.notDestinationPorts, portProblem],
  ] as const;
  for (const [field, list, check] of lists) {
    for (const [i, value] of (list ?? []).entries()) {
      const problem = (check as (v: unknown) => string | undefined)(value);
      if (problem !== undefined) return `${field}[${i}]: ${problem}`;
    }
  }
  return undefined;
}

export function stringMatchProblem(m: StringMatch): string | undefined {
  const set =
    (m.exact !== undefined ? 1 : 0) +
    (m.prefix !== undefined ? 1 : 0) +
    (m.suffix !== undefined ? 1 : 0) +
    (m.presence !== undefined ? 1 : 0);
  if (set === 0) return "string match with no exact, prefix, suffix or presence";
  if (set > 1) return "string match with more than one of exact, prefix, suffix and presence";
  return undefined;
}

function serviceAccountProblem(m: ServiceAccountMatch): string | undefined {
  if (m.namespace === "" || m.serviceAccount === "")
    return "service account match needs a namespace and a name";
  return undefined;
}

export function addressProblem(a: AuthzAddress): string | undefined {
  const bits = a.address.length * 8;
  if (bits !== 32 && bits !== 128) return `address of ${a.address.length} bytes; an IP address has 4 or 16`;
  if (!Number.isInteger(a.length) || a.length < 0 || a.length > bits) {
    return `prefix length ${a.length} out of range for a ${bits}-bit address`;
  }
  return undefined;
}

function portProblem(port: number): string | undefined {
  return Number.isInteger(port) && port >= 0 && port <= 65535 ? undefined : `${port} is not a port`;
}
