import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { AuthzAction, AuthzScope } from "../../src/xds/types.js";
import type { Authorization, Clause, Match, Rule } from "../../src/xds/types.js";
import { authorize } from "../../src/ztunnel/policy/authorize.js";
import type { ConnectionToAuthorize } from "../../src/ztunnel/policy/authorize.js";
import { compilePolicy } from "../../src/ztunnel/policy/compile.js";
import { InvalidAuthorizationError } from "../../src/ztunnel/policy/errors.js";
import { peerIdentity } from "../../src/ztunnel/policy/peer.js";
import { parseIp } from "../../src/ztunnel/state/ip.js";

// ---- builders ---------------------------------------------------------------------------------

const SLEEP = "spiffe://cluster.local/ns/default/sa/sleep";
const DEV = "spiffe://cluster.local/ns/dev/sa/builder";

/** A connection from sleep (10.0.0.1) to 10.0.1.1:8080 over mTLS, overridable. */
const conn = (over: Partial<ConnectionToAuthorize> = {}): ConnectionToAuthorize => ({
  sourceIdentity: SLEEP,
  sourceIp: "10.0.0.1",
  destinationIp: "10.0.1.1",
  destinationPort: 8080,
  ...over,
});

/** The same without an identity: plaintext. */
const plaintext = (over: Partial<ConnectionToAuthorize> = {}): ConnectionToAuthorize => {
  const c = conn(over);
  return { sourceIp: c.sourceIp, destinationIp: c.destinationIp, destinationPort: c.destinationPort };
};

const rule = (...clauses: Match[][]): Rule => ({ clauses: clauses.map((matches): Clause => ({ matches })) });

function policy(
  name: string,
  action: "ALLOW" | "DENY",
  rules: Rule[],
  over: Partial<Authorization> = {},
): Authorization {
  return {
    name,
    namespace: "default",
    scope: AuthzScope.NAMESPACE,
    action: action === "DENY" ? AuthzAction.DENY : AuthzAction.ALLOW,
    rules,
    ...over,
  };
}

/** An ALLOW policy of one rule of one clause of one match. */
const allowIf = (m: Match): Authorization[] => [policy("allow", "ALLOW", [rule([m])])];

const cidr = (text: string) => {
  const [addr = "", len = ""] = text.split("/");
  const address = parseIp(addr);
  if (address === undefined) throw new Error(`bad test CIDR ${text}`);
  return { address, length: Number(len) };
};

const allowed = (c: ConnectionToAuthorize, policies: Authorization[]): boolean =>
  authorize(c, policies).allowed;

// ---- tests ------------------------------------------------------------------------------------

describe("authorize: decision order", () => {
  const denyDev = policy("deny-dev", "DENY", [rule([{ namespaces: [{ exact: "dev" }] }])]);
  const allowSleep = policy("allow-sleep", "ALLOW", [
    rule([{ principals: [{ exact: "cluster.local/ns/default/sa/sleep" }] }]),
  ]);
  const allowAll = policy("allow-all", "ALLOW", [rule()]);

  it("allows when no policy applies", () => {
    assert.deepEqual(authorize(conn(), []), { allowed: true, reason: "no policies apply" });
  });

  it("allows what no DENY matches when there is no ALLOW policy", () => {
    assert.deepEqual(authorize(conn(), [denyDev]), { allowed: true, reason: "no ALLOW policy applies" });
  });

  it("denies what a DENY matches", () => {
    assert.deepEqual(authorize(conn({ sourceIdentity: DEV }), [denyDev]), {
      allowed: false,
      reason: "denied by DENY policy default/deny-dev",
      policy: "default/deny-dev",
    });
  });

  it("allows what an ALLOW matches, and denies the rest once an ALLOW exists", () => {
    assert.deepEqual(authorize(conn(), [allowSleep]), {
      allowed: true,
      reason: "allowed by ALLOW policy default/allow-sleep",
      policy: "default/allow-sleep",
    });
    assert.deepEqual(authorize(conn({ sourceIdentity: DEV }), [allowSleep]), {
      allowed: false,
      reason: "allow policies exist, but none allowed",
    });
  });

  it("lets DENY win over ALLOW whatever the order", () => {
    assert.equal(allowed(conn({ sourceIdentity: DEV }), [allowAll, denyDev]), false);
    assert.equal(allowed(conn({ sourceIdentity: DEV }), [denyDev, allowAll]), false);
    assert.equal(allowed(conn(), [denyDev, allowAll]), true);
  });

  it("reports dry-run policies that match without letting them decide", () => {
    const dryDeny = policy("dry-deny", "DENY", [rule()], { dryRun: true });
    const dryAllow = policy("dry-allow", "ALLOW", [rule([{ destinationPorts: [9999] }])], { dryRun: true });
    // A dry-run DENY that matches does not deny; a dry-run ALLOW does not make ALLOW policies exist.
    assert.deepEqual(authorize(conn(), [dryDeny, dryAllow]), {
      allowed: true,
      reason: "no ALLOW policy applies",
      dryRunMatches: ["default/dry-deny"],
    });
    assert.deepEqual(authorize(conn({ sourceIdentity: DEV }), [dryDeny, denyDev, allowSleep]), {
      allowed: false,
      reason: "denied by DENY policy default/deny-dev",
      policy: "default/deny-dev",
      dryRunMatches: ["default/dry-deny"],
    });
    assert.deepEqual(authorize(conn(), [dryAllow, allowSleep]).dryRunMatches, undefined);
    assert.deepEqual(authorize(conn({ destinationPort: 9999 }), [dryAllow, allowSleep]).dryRunMatches, [
      "default/dry-allow",
    ]);
  });
});

describe("authorize: structure", () => {
  const cases: { name: string; rules: Rule[]; c?: ConnectionToAuthorize; allowed: boolean }[] = [
    { name: "a rule without clauses matches everything", rules: [rule()], allowed: true },
    { name: "a policy without rules matches nothing", rules: [], allowed: false },
    { name: "a clause without matches never matches", rules: [rule([])], allowed: false },
    {
      name: "an empty match is skipped: a clause of only {} never matches",
      rules: [rule([{}])],
      allowed: false,
    },
    {
      name: "an empty match is skipped beside a matching one",
      rules: [rule([{}, { destinationPorts: [8080] }])],
      allowed: true,
    },
    {
      name: "matches of a clause are OR-ed",
      rules: [rule([{ destinationPorts: [1] }, { destinationPorts: [8080] }])],
      allowed: true,
    },
    {
      name: "clauses of a rule are AND-ed (one fails)",
      rules: [rule([{ destinationPorts: [8080] }], [{ namespaces: [{ exact: "dev" }] }])],
      allowed: false,
    },
    {
      name: "clauses of a rule are AND-ed (all hold)",
      rules: [rule([{ destinationPorts: [8080] }], [{ namespaces: [{ exact: "default" }] }])],
      allowed: true,
    },
    {
      name: "rules are OR-ed",
      rules: [rule([{ destinationPorts: [1] }]), rule([{ destinationPorts: [8080] }])],
      allowed: true,
    },
    {
      name: "every populated list of a match must hit (one misses)",
      rules: [
        rule([{ destinationPorts: [8080], principals: [{ exact: "cluster.local/ns/dev/sa/builder" }] }]),
      ],
      allowed: false,
    },
    {
      name: "every populated list of a match must hit (all hit)",
      rules: [
        rule([{ destinationPorts: [8080], principals: [{ exact: "cluster.local/ns/default/sa/sleep" }] }]),
      ],
      allowed: true,
    },
    {
      name: "a negative list must not hit",
      rules: [rule([{ destinationPorts: [8080], notSourceIps: [cidr("10.0.0.0/24")] }])],
      allowed: false,
    },
    {
      name: "a negative list that does not hit lets the match through",
      rules: [rule([{ destinationPorts: [8080], notSourceIps: [cidr("10.9.0.0/16")] }])],
      allowed: true,
    },
    {
      name: "positive and negative lists of one attribute combine",
      rules: [rule([{ destinationPorts: [8080, 8081], notDestinationPorts: [8080] }])],
      allowed: false,
    },
  ];
  for (const t of cases) {
    it(t.name, () => {
      assert.equal(allowed(t.c ?? conn(), [policy("p", "ALLOW", t.rules)]), t.allowed);
    });
  }

  it("treats an empty-match clause in a DENY as never matching (nothing is denied)", () => {
    assert.equal(allowed(conn(), [policy("d", "DENY", [rule([{}])])]), true);
  });
});

describe("authorize: identity attributes", () => {
  const table: { name: string; m: Match; c: ConnectionToAuthorize; allowed: boolean }[] = [
    {
      name: "principal exact, spiffe:// stripped",
      m: { principals: [{ exact: "cluster.local/ns/default/sa/sleep" }] },
      c: conn(),
      allowed: true,
    },
    {
      name: "principal exact does not match the full URI",
      m: { principals: [{ exact: SLEEP }] },
      c: conn(),
      allowed: false,
    },
    {
      name: "principal prefix",
      m: { principals: [{ prefix: "cluster.local/ns/default/" }] },
      c: conn(),
      allowed: true,
    },
    {
      name: "principal prefix miss",
      m: { principals: [{ prefix: "cluster.local/ns/dev/" }] },
      c: conn(),
      allowed: false,
    },
    { name: "principal suffix", m: { principals: [{ suffix: "/sa/sleep" }] }, c: conn(), allowed: true },
    {
      name: "principal presence with an identity",
      m: { principals: [{ presence: {} }] },
      c: conn(),
      allowed: true,
    },
    {
      name: "principal presence on plaintext",
      m: { principals: [{ presence: {} }] },
      c: plaintext(),
      allowed: false,
    },
    {
      name: "principal matching any string, on plaintext",
      m: { principals: [{ suffix: "" }] },
      c: plaintext(),
      allowed: false,
    },
    {
      name: "notPrincipals presence on plaintext matches",
      m: { notPrincipals: [{ presence: {} }] },
      c: plaintext(),
      allowed: true,
    },
    {
      name: "notPrincipals presence with an identity",
      m: { notPrincipals: [{ presence: {} }] },
      c: conn(),
      allowed: false,
    },
    {
      name: "namespace from the SPIFFE id",
      m: { namespaces: [{ exact: "default" }] },
      c: conn(),
      allowed: true,
    },
    {
      name: "namespace prefix",
      m: { namespaces: [{ prefix: "de" }] },
      c: conn({ sourceIdentity: DEV }),
      allowed: true,
    },
    { name: "namespace miss", m: { namespaces: [{ exact: "dev" }] }, c: conn(), allowed: false },
    { name: "namespace on plaintext", m: { namespaces: [{ presence: {} }] }, c: plaintext(), allowed: false },
    {
      name: "notNamespaces on plaintext matches",
      m: { notNamespaces: [{ exact: "dev" }] },
      c: plaintext(),
      allowed: true,
    },
    {
      name: "notNamespaces hit",
      m: { notNamespaces: [{ exact: "dev" }] },
      c: conn({ sourceIdentity: DEV }),
      allowed: false,
    },
    {
      name: "service account",
      m: { serviceAccounts: [{ namespace: "default", serviceAccount: "sleep" }] },
      c: conn(),
      allowed: true,
    },
    {
      name: "service account of another namespace",
      m: { serviceAccounts: [{ namespace: "dev", serviceAccount: "sleep" }] },
      c: conn(),
      allowed: false,
    },
    {
      name: "service account on plaintext",
      m: { serviceAccounts: [{ namespace: "default", serviceAccount: "sleep" }] },
      c: plaintext(),
      allowed: false,
    },
    {
      name: "notServiceAccounts hit",
      m: { notServiceAccounts: [{ namespace: "default", serviceAccount: "sleep" }] },
      c: conn(),
      allowed: false,
    },
    {
      name: "notServiceAccounts on plaintext matches",
      m: { notServiceAccounts: [{ namespace: "default", serviceAccount: "sleep" }] },
      c: plaintext(),
      allowed: true,
    },
    {
      name: "an identity not of the ns/sa form has a principal but no namespace",
      m: { namespaces: [{ presence: {} }] },
      c: conn({ sourceIdentity: "spiffe://example.org/workload/x" }),
      allowed: false,
    },
    {
      name: "… and its principal still matches",
      m: { principals: [{ exact: "example.org/workload/x" }] },
      c: conn({ sourceIdentity: "spiffe://example.org/workload/x" }),
      allowed: true,
    },
  ];
  for (const t of table) {
    it(t.name, () => assert.equal(allowed(t.c, allowIf(t.m)), t.allowed));
  }

  it("denies plaintext with a DENY of notPrincipals [*] (STRICT mTLS) and lets mTLS through", () => {
    const strict = [policy("strict", "DENY", [rule([{ notPrincipals: [{ presence: {} }] }])])];
    assert.deepEqual(authorize(plaintext(), strict), {
      allowed: false,
      reason: "denied by DENY policy default/strict",
      policy: "default/strict",
    });
    assert.equal(allowed(conn(), strict), true);
  });

  it("parses peer identities", () => {
    assert.deepEqual(peerIdentity(SLEEP), {
      principal: "cluster.local/ns/default/sa/sleep",
      namespace: "default",
      serviceAccount: "sleep",
    });
    assert.equal(peerIdentity(undefined), undefined);
    assert.equal(peerIdentity(""), undefined);
    assert.deepEqual(peerIdentity("spiffe://td/ns//sa/x"), { principal: "td/ns//sa/x" });
  });
});

describe("authorize: addresses and ports", () => {
  const table: { name: string; m: Match; c: ConnectionToAuthorize; allowed: boolean }[] = [
    { name: "source in a /8", m: { sourceIps: [cidr("10.0.0.0/8")] }, c: conn(), allowed: true },
    { name: "source outside a /24", m: { sourceIps: [cidr("10.0.5.0/24")] }, c: conn(), allowed: false },
    {
      name: "host bits of the range are ignored",
      m: { sourceIps: [cidr("10.0.0.77/24")] },
      c: conn(),
      allowed: true,
    },
    { name: "a /32 is one address", m: { sourceIps: [cidr("10.0.0.1/32")] }, c: conn(), allowed: true },
    { name: "a /32 miss", m: { sourceIps: [cidr("10.0.0.2/32")] }, c: conn(), allowed: false },
    { name: "IPv4 /0 matches any IPv4", m: { sourceIps: [cidr("0.0.0.0/0")] }, c: conn(), allowed: true },
    {
      name: "IPv4 /0 does not match IPv6",
      m: { sourceIps: [cidr("0.0.0.0/0")] },
      c: conn({ sourceIp: "fd00::1" }),
      allowed: false,
    },
    {
      name: "a /17 boundary (inside)",
      m: { sourceIps: [cidr("10.0.0.0/17")] },
      c: conn({ sourceIp: "10.0.127.255" }),
      allowed: true,
    },
    {
      name: "a /17 boundary (outside)",
      m: { sourceIps: [cidr("10.0.0.0/17")] },
      c: conn({ sourceIp: "10.0.128.0" }),
      allowed: false,
    },
    {
      name: "IPv6 /64",
      m: { sourceIps: [cidr("fd00:1:2:3::/64")] },
      c: conn({ sourceIp: "fd00:1:2:3:ffff::9" }),
      allowed: true,
    },
    {
      name: "IPv6 /64 miss",
      m: { sourceIps: [cidr("fd00:1:2:3::/64")] },
      c: conn({ sourceIp: "fd00:1:2:4::9" }),
      allowed: false,
    },
    {
      name: "IPv6 /100 inside",
      m: { sourceIps: [cidr("fd00::/100")] },
      c: conn({ sourceIp: "fd00::fff:ffff" }),
      allowed: true,
    },
    {
      name: "IPv6 /100 outside",
      m: { sourceIps: [cidr("fd00::/100")] },
      c: conn({ sourceIp: "fd00::1000:0" }),
      allowed: false,
    },
    {
      name: "IPv6 /128",
      m: { sourceIps: [cidr("fd00::1/128")] },
      c: conn({ sourceIp: "fd00:0::1" }),
      allowed: true,
    },
    { name: "IPv6 range vs IPv4 connection", m: { sourceIps: [cidr("::/0")] }, c: conn(), allowed: false },
    {
      name: "an IPv4-mapped source is the IPv4 address",
      m: { sourceIps: [cidr("10.0.0.0/24")] },
      c: conn({ sourceIp: "::ffff:10.0.0.1" }),
      allowed: true,
    },
    {
      name: "an IPv4-mapped range does not match IPv4 connections",
      m: { sourceIps: [cidr("::ffff:10.0.0.0/104")] },
      c: conn(),
      allowed: false,
    },
    { name: "destination IP", m: { destinationIps: [cidr("10.0.1.0/24")] }, c: conn(), allowed: true },
    { name: "destination IP miss", m: { destinationIps: [cidr("10.0.2.0/24")] }, c: conn(), allowed: false },
    {
      name: "notDestinationIps hit",
      m: { notDestinationIps: [cidr("10.0.1.1/32")] },
      c: conn(),
      allowed: false,
    },
    {
      name: "notSourceIps miss lets through",
      m: { notSourceIps: [cidr("fd00::/8")] },
      c: conn(),
      allowed: true,
    },
    { name: "destination port", m: { destinationPorts: [80, 8080] }, c: conn(), allowed: true },
    { name: "destination port miss", m: { destinationPorts: [80] }, c: conn(), allowed: false },
    { name: "notDestinationPorts hit", m: { notDestinationPorts: [8080] }, c: conn(), allowed: false },
    { name: "notDestinationPorts miss", m: { notDestinationPorts: [80] }, c: conn(), allowed: true },
  ];
  for (const t of table) {
    it(t.name, () => assert.equal(allowed(t.c, allowIf(t.m)), t.allowed));
  }

  it("fails closed on a connection address that does not parse", () => {
    const d = authorize(conn({ sourceIp: "bogus" }), allowIf({ destinationPorts: [8080] }));
    assert.equal(d.allowed, false);
    assert.match(d.reason, /source IP "bogus" is not an IP/);
    assert.equal(authorize(conn({ destinationIp: "1.2.3" }), [policy("d", "DENY", [])]).allowed, false);
  });
});

describe("compilePolicy", () => {
  it("compiles a policy once per object", () => {
    const p = policy("p", "ALLOW", [rule()]);
    assert.equal(compilePolicy(p), compilePolicy(p));
    assert.notEqual(compilePolicy(p), compilePolicy({ ...p }));
  });

  it("refuses a policy that cannot be enforced", () => {
    const bad = policy("bad", "DENY", [rule([{ sourceIps: [{ address: new Uint8Array(5), length: 8 }] }])]);
    assert.throws(
      () => authorize(conn(), [bad]),
      (err: unknown) =>
        err instanceof InvalidAuthorizationError &&
        err.policy === "default/bad" &&
        /sourceIps\[0\]: address of 5 bytes/.test(err.problem),
    );
    assert.throws(
      () => compilePolicy(policy("s", "ALLOW", [rule([{ principals: [{ exact: "a", prefix: "b" }] }])])),
      {
        name: "InvalidAuthorizationError",
      },
    );
  });
});
