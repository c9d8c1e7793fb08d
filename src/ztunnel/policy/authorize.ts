import type { Authorization } from "../../xds/types.js";
import { ipWords } from "./cidr.js";
import { compilePolicy } from "./compile.js";
import type { CompiledPolicy, ConnectionFacts } from "./compile.js";
import { peerIdentity } from "./peer.js";

// L4 authorization as ztunnel decides it: dry-run policies are evaluated and reported but never
// decide; a matching DENY denies; with no ALLOW policy everything else is allowed; otherwise a
// matching ALLOW allows and anything else is denied.

export interface ConnectionToAuthorize {
  /** The peer's SPIFFE id (spiffe://…); absent for plaintext. */
  readonly sourceIdentity?: string;
  readonly sourceIp: string;
  readonly destinationIp: string;
  readonly destinationPort: number;
}

export interface AuthorizationDecision {
  readonly allowed: boolean;
  readonly reason: string;
  /** `<namespace>/<name>` of the policy that decided, when one did. */
  readonly policy?: string;
  /** Dry-run policies that matched (`<namespace>/<name>`), when any did. */
  readonly dryRunMatches?: string[];
}

function decide(
  allowed: boolean,
  reason: string,
  policy: string | undefined,
  dryRunMatches: string[] | undefined,
): AuthorizationDecision {
  return {
    allowed,
    reason,
    ...(policy !== undefined ? { policy } : {}),
    ...(dryRunMatches !== undefined ? { dryRunMatches } : {}),
  };
}

/**
 * Decide one connection against the policies that apply to its destination workload. Policies are
 * compiled on first use and cached by object, so calling this per connection costs a walk over
 * precompiled predicates. Throws InvalidAuthorizationError for a policy that fails validation
 * (state never hands out such a policy).
 */
export function authorize(
  conn: ConnectionToAuthorize,
  policies: readonly Authorization[],
): AuthorizationDecision {
  if (policies.length === 0) return decide(true, "no policies apply", undefined, undefined);
  const compiled: CompiledPolicy[] = policies.map(compilePolicy);

  const source = ipWords(conn.sourceIp);
  const destination = ipWords(conn.destinationIp);
  // Addresses come from the kernel; one that does not parse is a bug upstream of here, and
  // guessing could let a DENY by address miss.
  if (source === undefined)
    return decide(false, `source IP ${JSON.stringify(conn.sourceIp)} is not an IP`, undefined, undefined);
  if (destination === undefined) {
    return decide(
      false,
      `destination IP ${JSON.stringify(conn.destinationIp)} is not an IP`,
      undefined,
      undefined,
    );
  }
  const facts: ConnectionFacts = {
    peer: peerIdentity(conn.sourceIdentity),
    source,
    destination,
    destinationPort: conn.destinationPort,
  };

  let dryRunMatches: string[] | undefined;
  for (const p of compiled) {
    if (p.dryRun && p.matches(facts)) (dryRunMatches ??= []).push(p.key);
  }
  for (const p of compiled) {
    if (p.deny && !p.dryRun && p.matches(facts)) {
      return decide(false, `denied by DENY policy ${p.key}`, p.key, dryRunMatches);
    }
  }
  let allowPolicies = false;
  for (const p of compiled) {
    if (p.deny || p.dryRun) continue;
    allowPolicies = true;
    if (p.matches(facts)) return decide(true, `allowed by ALLOW policy ${p.key}`, p.key, dryRunMatches);
  }
  if (!allowPolicies) return decide(true, "no ALLOW policy applies", undefined, dryRunMatches);
  return decide(false, "allow policies exist, but none allowed", undefined, dryRunMatches);
}
