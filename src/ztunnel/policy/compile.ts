import type { Authorization, Match, ServiceAccountMatch, StringMatch } from "../../xds/types.js";
import { AuthzAction } from "../../xds/types.js";
import { cidrContains, compileCidr } from "./cidr.js";
import type { IpWords } from "./cidr.js";
import { InvalidAuthorizationError } from "./errors.js";
import type { PeerIdentity } from "./peer.js";
import { authorizationProblem } from "./validate.js";

// An Authorization turned into predicates once, so evaluating it per connection walks closures
// instead of re-reading the message. Matching follows upstream ztunnel (src/rbac.rs):
// - a policy matches when any rule does; a rule when all its clauses do (none: it matches all);
// - a clause when any of its matches does; a Match with no field set is skipped, so a clause of
//   only empty matches never matches;
// - a match when every populated positive list has a hit and no populated negative list has one.
// Identity attributes of a plaintext connection hit nothing: positive lists fail, negative ones
// pass (so `notPrincipals: [presence]` matches exactly the connections without an identity).

/** What a connection offers to be matched. */
export interface ConnectionFacts {
  readonly peer: PeerIdentity | undefined;
  readonly source: IpWords;
  readonly destination: IpWords;
  readonly destinationPort: number;
}

export type Predicate = (facts: ConnectionFacts) => boolean;

export interface CompiledPolicy {
  /** `<namespace>/<name>`. */
  readonly key: string;
  readonly deny: boolean;
  readonly dryRun: boolean;
  readonly matches: Predicate;
}

const never: Predicate = () => false;
const always: Predicate = () => true;

function stringTest(m: StringMatch): (value: string) => boolean {
  if (m.exact !== undefined) {
    const exact = m.exact;
    return (v) => v === exact;
  }
  if (m.prefix !== undefined) {
    const prefix = m.prefix;
    return (v) => v.startsWith(prefix);
  }
  if (m.suffix !== undefined) {
    const suffix = m.suffix;
    return (v) => v.endsWith(suffix);
  }
  // presence: any value at all (validation guarantees one of the four is set).
  return (v) => v !== "";
}

const populated = <T>(list: readonly T[] | undefined): list is readonly T[] =>
  list !== undefined && list.length > 0;

/** Whether any entry hits: one predicate over a whole list, without allocating per call. */
function anyOf<T>(list: readonly T[], test: (entry: T) => Predicate): Predicate {
  const tests = list.map(test);
  if (tests.length === 1) return tests[0] as Predicate;
  return (facts) => {
    for (const t of tests) if (t(facts)) return true;
    return false;
  };
}

function allOf(tests: readonly Predicate[]): Predicate {
  if (tests.length === 0) return always;
  if (tests.length === 1) return tests[0] as Predicate;
  return (facts) => {
    for (const t of tests) if (!t(facts)) return false;
    return true;
  };
}

const principalTest = (m: StringMatch): Predicate => {
  const test = stringTest(m);
  return (f) => f.peer !== undefined && test(f.peer.principal);
};

const namespaceTest = (m: StringMatch): Predicate => {
  const test = stringTest(m);
  return (f) => f.peer?.namespace !== undefined && test(f.peer.namespace);
};

const serviceAccountTest =
  (m: ServiceAccountMatch): Predicate =>
  (f) =>
    f.peer?.namespace === m.namespace && f.peer.serviceAccount === m.serviceAccount;

const sourceIpTest = (a: Parameters<typeof compileCidr>[0]): Predicate => {
  const cidr = compileCidr(a);
  return (f) => cidrContains(cidr, f.source);
};

const destinationIpTest = (a: Parameters<typeof compileCidr>[0]): Predicate => {
  const cidr = compileCidr(a);
  return (f) => cidrContains(cidr, f.destination);
};

const portTest =
  (port: number): Predicate =>
  (f) =>
    f.destinationPort === port;

/** The predicate of one Match; undefined for an empty Match (skipped by its clause). */
function compileMatch(m: Match): Predicate | undefined {
  const tests: Predicate[] = [];
  const both = <T>(
    positive: readonly T[] | undefined,
    negative: readonly T[] | undefined,
    test: (entry: T) => Predicate,
  ): void => {
    if (populated(positive)) tests.push(anyOf(positive, test));
    if (populated(negative)) {
      const hit = anyOf(negative, test);
      tests.push((f) => !hit(f));
    }
  };
  // Cheapest attributes first: a port or address mismatch is the common way a match fails.
  both(m.destinationPorts, m.notDestinationPorts, portTest);
  both(m.sourceIps, m.notSourceIps, sourceIpTest);
  both(m.destinationIps, m.notDestinationIps, destinationIpTest);
  both(m.principals, m.notPrincipals, principalTest);
  both(m.namespaces, m.notNamespaces, namespaceTest);
  both(m.serviceAccounts, m.notServiceAccounts, serviceAccountTest);
  return tests.length === 0 ? undefined : allOf(tests);
}

function compileRules(authorization: Authorization): Predicate {
  const rules = authorization.rules.map((rule) =>
    allOf(
      rule.clauses.map((clause) => {
        const matches = clause.matches.map(compileMatch).filter((p): p is Predicate => p !== undefined);
        return matches.length === 0 ? never : anyOf(matches, (p) => p);
      }),
    ),
  );
  if (rules.length === 0) return never;
  return anyOf(rules, (p) => p);
}

const cache = new WeakMap<Authorization, CompiledPolicy>();

/**
 * The compiled form of `authorization`, made once per object (decoded policies are never
 * mutated; a changed policy arrives as a new object). Throws InvalidAuthorizationError for a
 * policy validation would have rejected.
 */
export function compilePolicy(authorization: Authorization): CompiledPolicy {
  const cached = cache.get(authorization);
  if (cached !== undefined) return cached;
  const key = `${authorization.namespace}/${authorization.name}`;
  const problem = authorizationProblem(authorization);
  if (problem !== undefined) throw new InvalidAuthorizationError(key, problem);
  const compiled: CompiledPolicy = {
    key,
    deny: authorization.action === AuthzAction.DENY,
    dryRun: authorization.dryRun === true,
    matches: compileRules(authorization),
  };
  cache.set(authorization, compiled);
  return compiled;
}
