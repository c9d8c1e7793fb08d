import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { Labels } from "../../src/cluster/types.js";
import {
  authorizationKey,
  convertPolicy,
  selectorMatches,
  stringMatch,
} from "../../src/controlplane/policy.js";
import { AuthzAction, AuthzScope } from "../../src/xds/types.js";
import type { Authorization, Match, Rule } from "../../src/xds/types.js";

const ROOT = "istio-system";
const HINT = "Use a waypoint (targetRefs) to enforce HTTP attributes.";

function convert(spec: unknown, o: { namespace?: string; annotations?: Labels } = {}) {
  return convertPolicy(
    { namespace: o.namespace ?? "default", name: "p", spec },
    { rootNamespace: ROOT, ...(o.annotations ? { annotations: o.annotations } : {}) },
  );
}

/** A NAMESPACE-scoped ALLOW policy default/p with `rules`, overridable. */
function authz(rules: Rule[], over: Partial<Authorization> = {}): Authorization {
  return {
    name: "p",
    namespace: "default",
    scope: AuthzScope.NAMESPACE,
    action: AuthzAction.ALLOW,
    rules,
    ...over,
  };
}

/** A rule of one clause per argument, each clause OR-ing its matches. */
const rule = (...clauses: Match[][]): Rule => ({ clauses: clauses.map((matches) => ({ matches })) });

const DENY = { action: AuthzAction.DENY };
const bytes = (...b: number[]) => new Uint8Array(b);

describe("convertPolicy: sources and operations", () => {
  it("converts an ALLOW by principal", () => {
    assert.deepEqual(
      convert({
        action: "ALLOW",
        rules: [{ from: [{ source: { principals: ["cluster.local/ns/default/sa/sleep"] } }] }],
      }),
      {
        authorization: authz([rule([{ principals: [{ exact: "cluster.local/ns/default/sa/sleep" }] }])]),
        warnings: [],
      },
    );
  });

  it("converts a DENY by namespace", () => {
    assert.deepEqual(convert({ action: "DENY", rules: [{ from: [{ source: { namespaces: ["dev"] } }] }] }), {
      authorization: authz([rule([{ namespaces: [{ exact: "dev" }] }])], DENY),
      warnings: [],
    });
  });

  it("converts notPrincipals and notNamespaces", () => {
    assert.deepEqual(
      convert({
        rules: [
          {
            from: [
              { source: { notPrincipals: ["cluster.local/ns/x/sa/y"], notNamespaces: ["kube-system"] } },
            ],
          },
        ],
      }),
      {
        authorization: authz([
          rule([
            {
              notPrincipals: [{ exact: "cluster.local/ns/x/sa/y" }],
              notNamespaces: [{ exact: "kube-system" }],
            },
          ]),
        ]),
        warnings: [],
      },
    );
  });

  it("converts ipBlocks: IPv4 and IPv6 CIDRs, bare IPs as host prefixes, host bits kept", () => {
    const v6db8 = bytes(0x20, 0x01, 0x0d, 0xb8, ...new Array<number>(12).fill(0));
    const loop6 = bytes(...new Array<number>(15).fill(0), 1);
    const mapped = bytes(...new Array<number>(10).fill(0), 0xff, 0xff, 10, 1, 2, 3);
    assert.deepEqual(
      convert({
        rules: [
          {
            from: [
              {
                source: {
                  ipBlocks: [
                    "10.0.0.0/8",
                    "192.168.1.7",
                    "2001:DB8::/32",
                    "::1",
                    "::ffff:10.1.2.3",
                    "10.1.2.3/16",
                  ],
                  notIpBlocks: ["10.9.0.0/16", "0.0.0.0/0"],
                },
              },
            ],
          },
        ],
      }),
      {
        authorization: authz([
          rule([
            {
              sourceIps: [
                { address: bytes(10, 0, 0, 0), length: 8 },
                { address: bytes(192, 168, 1, 7), length: 32 },
                { address: v6db8, length: 32 },
                { address: loop6, length: 128 },
                { address: mapped, length: 128 },
                { address: bytes(10, 1, 2, 3), length: 16 },
              ],
              notSourceIps: [
                { address: bytes(10, 9, 0, 0), length: 16 },
                { address: bytes(0, 0, 0, 0), length: 0 },
              ],
            },
          ]),
        ]),
        warnings: [],
      },
    );
  });

  it("converts ports and notPorts, from digit strings or numbers", () => {
    assert.deepEqual(
      convert({ rules: [{ to: [{ operation: { ports: ["80", 8080], notPorts: ["9090"] } }] }] }),
      {
        authorization: authz([rule([{ destinationPorts: [80, 8080], notDestinationPorts: [9090] }])]),
        warnings: [],
      },
    );
  });

  it("puts from and to of one rule in two AND-ed clauses (to first, like istiod)", () => {
    assert.deepEqual(
      convert({
        rules: [
          {
            from: [{ source: { namespaces: ["web"] } }],
            to: [{ operation: { ports: ["8080"] } }],
          },
        ],
      }),
      {
        authorization: authz([rule([{ destinationPorts: [8080] }], [{ namespaces: [{ exact: "web" }] }])]),
        warnings: [],
      },
    );
  });

  it("OR-s several sources as several matches of one clause, and several rules as several rules", () => {
    assert.deepEqual(
      convert({
        rules: [
          {
            from: [
              { source: { namespaces: ["a"] } },
              { source: { principals: ["cluster.local/ns/b/sa/c"], ipBlocks: ["10.0.0.1"] } },
            ],
          },
          { to: [{ operation: { ports: ["1"] } }, { operation: { notPorts: ["2"] } }] },
        ],
      }),
      {
        authorization: authz([
          rule([
            { namespaces: [{ exact: "a" }] },
            {
              principals: [{ exact: "cluster.local/ns/b/sa/c" }],
              sourceIps: [{ address: bytes(10, 0, 0, 1), length: 32 }],
            },
          ]),
          rule([{ destinationPorts: [1] }, { notDestinationPorts: [2] }]),
        ]),
        warnings: [],
      },
    );
  });

  it("converts serviceAccounts, defaulting their namespace to the policy's", () => {
    assert.deepEqual(
      convert({
        rules: [
          { from: [{ source: { serviceAccounts: ["sleep", "other/curl"], notServiceAccounts: ["x"] } }] },
        ],
      }),
      {
        authorization: authz([
          rule([
            {
              serviceAccounts: [
                { namespace: "default", serviceAccount: "sleep" },
                { namespace: "other", serviceAccount: "curl" },
              ],
              notServiceAccounts: [{ namespace: "default", serviceAccount: "x" }],
            },
          ]),
        ]),
        warnings: [],
      },
    );
  });

  it("maps Istio's wildcard forms to StringMatch", () => {
    assert.deepEqual(
      convert({
        rules: [
          {
            from: [
              {
                source: {
                  principals: [
                    "*",
                    "cluster.local/ns/foo/*",
                    "*/sa/sleep",
                    "cluster.local/ns/a/sa/b",
                    "*mid*",
                  ],
                  namespaces: ["prod-*"],
                },
              },
            ],
          },
        ],
      }),
      {
        authorization: authz([
          rule([
            {
              principals: [
                { presence: {} },
                { prefix: "cluster.local/ns/foo/" },
                { suffix: "/sa/sleep" },
                { exact: "cluster.local/ns/a/sa/b" },
                { suffix: "mid*" },
              ],
              namespaces: [{ prefix: "prod-" }],
            },
          ]),
        ]),
        warnings: [],
      },
    );
    assert.deepEqual(stringMatch("*"), { presence: {} });
  });

  it("maps the L4 when keys, values and notValues, one clause per condition", () => {
    assert.deepEqual(
      convert({
        rules: [
          {
            when: [
              { key: "source.ip", values: ["10.0.0.0/8"], notValues: ["10.1.0.0/16"] },
              { key: "source.namespace", values: ["a*"] },
              { key: "source.principal", notValues: ["*"] },
              { key: "destination.ip", values: ["fd00::1"] },
              { key: "destination.port", values: ["443"], notValues: ["8443"] },
            ],
          },
        ],
      }),
      {
        authorization: authz([
          rule(
            [
              {
                sourceIps: [{ address: bytes(10, 0, 0, 0), length: 8 }],
                notSourceIps: [{ address: bytes(10, 1, 0, 0), length: 16 }],
              },
            ],
            [{ namespaces: [{ prefix: "a" }] }],
            [{ notPrincipals: [{ presence: {} }] }],
            [
              {
                destinationIps: [{ address: bytes(0xfd, ...new Array<number>(14).fill(0), 1), length: 128 }],
              },
            ],
            [{ destinationPorts: [443], notDestinationPorts: [8443] }],
          ),
        ]),
        warnings: [],
      },
    );
  });
});

describe("convertPolicy: rules", () => {
  it("turns an empty rule {} into a rule without clauses (it matches everything)", () => {
    assert.deepEqual(convert({ rules: [{}] }), { authorization: authz([{ clauses: [] }]), warnings: [] });
  });

  it("sends no rules when there are none: an ALLOW allows nothing, a DENY denies nothing", () => {
    for (const spec of [{}, { rules: [] }, { rules: null }, null, undefined])
      assert.deepEqual(convert(spec), { authorization: authz([]), warnings: [] }, JSON.stringify(spec));
    assert.deepEqual(convert({ action: "DENY" }), {
      authorization: authz([], DENY),
      warnings: ["default/p: a DENY policy without rules never matches; add a rule {} to deny everything."],
    });
  });
});

describe("convertPolicy: scope", () => {
  it("makes a selector-less policy of the root namespace GLOBAL", () => {
    assert.deepEqual(convert({ rules: [{}] }, { namespace: ROOT }), {
      authorization: authz([{ clauses: [] }], { namespace: ROOT, scope: AuthzScope.GLOBAL }),
      warnings: [],
    });
  });

  it("makes a policy with a selector WORKLOAD_SELECTOR and returns the selector, in the root namespace too", () => {
    const spec = { selector: { matchLabels: { app: "web", tier: "front" } }, rules: [{}] };
    assert.deepEqual(convert(spec), {
      authorization: authz([{ clauses: [] }], { scope: AuthzScope.WORKLOAD_SELECTOR }),
      selector: { app: "web", tier: "front" },
      warnings: [],
    });
    assert.deepEqual(convert(spec, { namespace: ROOT }), {
      authorization: authz([{ clauses: [] }], { namespace: ROOT, scope: AuthzScope.WORKLOAD_SELECTOR }),
      selector: { app: "web", tier: "front" },
      warnings: [],
    });
  });

  it("treats a selector without matchLabels as selecting every workload of the namespace", () => {
    assert.deepEqual(convert({ selector: {} }), {
      authorization: authz([], { scope: AuthzScope.WORKLOAD_SELECTOR }),
      selector: {},
      warnings: [],
    });
  });
});

describe("convertPolicy: HTTP attributes", () => {
  it("leaves out an ALLOW rule with any HTTP attribute, and keeps the others", () => {
    assert.deepEqual(
      convert({
        rules: [
          {
            from: [{ source: { namespaces: ["a"] } }],
            to: [{ operation: { methods: ["GET"], ports: ["80"] } }],
          },
          { from: [{ source: { namespaces: ["b"], requestPrincipals: ["*"] } }] },
          {
            from: [{ source: { namespaces: ["c"] } }],
            when: [{ key: "request.auth.claims[iss]", values: ["x"] }],
          },
          { from: [{ source: { namespaces: ["d"] } }] },
        ],
      }),
      {
        authorization: authz([rule([{ namespaces: [{ exact: "d" }] }])]),
        warnings: [
          `default/p: rules[0]: ztunnel cannot enforce methods; the rule is left out, so this ALLOW policy allows less than written. ${HINT}`,
          `default/p: rules[1]: ztunnel cannot enforce requestPrincipals; the rule is left out, so this ALLOW policy allows less than written. ${HINT}`,
          `default/p: rules[2]: ztunnel cannot enforce request.auth.claims[iss]; the rule is left out, so this ALLOW policy allows less than written. ${HINT}`,
        ],
      },
    );
  });

  it("enforces a DENY rule's L4 part without its HTTP attributes", () => {
    assert.deepEqual(
      convert({
        action: "DENY",
        rules: [
          {
            from: [{ source: { namespaces: ["dev"] } }],
            to: [{ operation: { methods: ["DELETE"], paths: ["/admin*"], ports: ["8080"] } }],
            when: [
              { key: "request.headers[x-debug]", values: ["1"] },
              { key: "destination.port", notValues: ["15021"] },
            ],
          },
        ],
      }),
      {
        authorization: authz(
          [
            rule(
              [{ destinationPorts: [8080] }],
              [{ namespaces: [{ exact: "dev" }] }],
              [{ notDestinationPorts: [15021] }],
            ),
          ],
          DENY,
        ),
        warnings: [
          `default/p: rules[0]: ztunnel cannot enforce methods, paths, request.headers[x-debug]; the rule is enforced without them, so this DENY policy denies more than written. ${HINT}`,
        ],
      },
    );
  });

  it("drops a DENY list whose entries are all HTTP: the rest of the rule then applies to any request", () => {
    assert.deepEqual(
      convert({
        action: "DENY",
        rules: [
          { from: [{ source: { namespaces: ["dev"] } }], to: [{ operation: { methods: ["DELETE"] } }] },
        ],
      }),
      {
        authorization: authz([rule([{ namespaces: [{ exact: "dev" }] }])], DENY),
        warnings: [
          `default/p: rules[0]: ztunnel cannot enforce methods; the rule is enforced without them, so this DENY policy denies more than written. ${HINT}`,
        ],
      },
    );
  });

  it("drops a DENY entry with nothing L4 from a list that keeps others, and says what is no longer denied", () => {
    assert.deepEqual(
      convert({
        action: "DENY",
        rules: [{ to: [{ operation: { methods: ["GET"] } }, { operation: { ports: ["8080"] } }] }],
      }),
      {
        authorization: authz([rule([{ destinationPorts: [8080] }])], DENY),
        warnings: [
          `default/p: rules[0]: ztunnel cannot enforce methods; to[0] had nothing else and is dropped, so what only it matched is not denied. ${HINT}`,
        ],
      },
    );
  });

  it("leaves out a DENY rule with no L4 condition left, and keeps the others", () => {
    assert.deepEqual(
      convert({
        action: "DENY",
        rules: [
          { from: [{ source: { notRequestPrincipals: ["*"] } }] },
          {
            to: [{ operation: { hosts: ["a.example"] } }],
            when: [{ key: "request.auth.principal", values: ["x"] }],
          },
          { from: [{ source: { ipBlocks: ["203.0.113.0/24"] } }] },
        ],
      }),
      {
        authorization: authz([rule([{ sourceIps: [{ address: bytes(203, 0, 113, 0), length: 24 }] }])], DENY),
        warnings: [
          `default/p: rules[0]: ztunnel cannot enforce notRequestPrincipals and the rule has no L4 condition left; the rule is left out, so this DENY policy does not deny what the rule describes. ${HINT}`,
          `default/p: rules[1]: ztunnel cannot enforce hosts, request.auth.principal and the rule has no L4 condition left; the rule is left out, so this DENY policy does not deny what the rule describes. ${HINT}`,
        ],
      },
    );
  });

  it("treats remoteIpBlocks and unknown when keys as HTTP attributes", () => {
    assert.deepEqual(
      convert({
        rules: [
          { from: [{ source: { remoteIpBlocks: ["1.2.3.4"] } }] },
          { when: [{ key: "source.serviceAccount", values: ["default/sleep"] }] },
        ],
      }),
      {
        authorization: authz([]),
        warnings: [
          `default/p: rules[0]: ztunnel cannot enforce remoteIpBlocks; the rule is left out, so this ALLOW policy allows less than written. ${HINT}`,
          `default/p: rules[1]: ztunnel cannot enforce source.serviceAccount; the rule is left out, so this ALLOW policy allows less than written. ${HINT}`,
        ],
      },
    );
  });
});

describe("convertPolicy: policies not for ztunnel", () => {
  it("does not convert AUDIT or CUSTOM policies", () => {
    for (const action of ["AUDIT", "CUSTOM"])
      assert.deepEqual(convert({ action, provider: { name: "ext" }, rules: [{}] }), {
        warnings: [
          `default/p: ztunnel does not support the ${action} action; the policy is not sent to ztunnel.`,
        ],
      });
  });

  it("does not convert policies with targetRef or targetRefs", () => {
    assert.deepEqual(convert({ targetRefs: [{ kind: "Service", group: "", name: "web" }], rules: [{}] }), {
      warnings: [
        "default/p: the policy has targetRefs, so it is for waypoints and gateways; ztunnel does not enforce it.",
      ],
    });
    assert.deepEqual(convert({ targetRef: { kind: "Gateway", name: "gw" }, action: "DENY" }), {
      warnings: [
        "default/p: the policy has targetRef, so it is for waypoints and gateways; ztunnel does not enforce it.",
      ],
    });
  });

  it("converts a policy whose targetRefs is empty", () => {
    assert.deepEqual(convert({ targetRefs: [], rules: [{}] }), {
      authorization: authz([{ clauses: [] }]),
      warnings: [],
    });
  });
});

describe("convertPolicy: malformed specs", () => {
  const cases: [string, unknown, string][] = [
    ["spec not a mapping", "allow-all", "default/p: spec: must be a mapping"],
    ["rules not a list", { rules: { from: [] } }, "default/p: spec.rules: must be a list"],
    [
      "ports not numbers",
      { rules: [{ to: [{ operation: { ports: ["http", 70000, "-1"] } }] }] },
      'default/p: spec.rules[0].to[0].operation.ports[0]: "http" is not a port (0-65535); ' +
        "spec.rules[0].to[0].operation.ports[1]: 70000 is not a port (0-65535); " +
        'spec.rules[0].to[0].operation.ports[2]: "-1" is not a port (0-65535)',
    ],
    [
      "an invalid CIDR",
      { rules: [{ from: [{ source: { notIpBlocks: ["10.0.0.0/33"] } }] }] },
      'default/p: spec.rules[0].from[0].source.notIpBlocks[0]: "10.0.0.0/33" is not an IP address or CIDR',
    ],
    [
      "an unknown action",
      { action: "PERMIT" },
      "default/p: spec.action: must be ALLOW, DENY, AUDIT or CUSTOM",
    ],
    [
      "a label value that is not a string",
      { selector: { matchLabels: { version: 2 } } },
      "default/p: spec.selector.matchLabels.version: must be a string",
    ],
    ["an empty from", { rules: [{ from: [] }] }, "default/p: spec.rules[0].from: must not be empty"],
    [
      "a from without source",
      { rules: [{ from: [{}] }] },
      "default/p: spec.rules[0].from[0].source: is required",
    ],
    [
      "an empty source",
      { rules: [{ from: [{ source: { principals: [] } }] }] },
      "default/p: spec.rules[0].from[0].source: must not be empty",
    ],
    [
      "an empty operation",
      { rules: [{ to: [{ operation: {} }] }] },
      "default/p: spec.rules[0].to[0].operation: must not be empty",
    ],
    [
      "an empty principal",
      { rules: [{ from: [{ source: { principals: [""] } }] }] },
      "default/p: spec.rules[0].from[0].source.principals[0]: must not be empty",
    ],
    [
      "principals not a list",
      { rules: [{ from: [{ source: { principals: "cluster.local/ns/a/sa/b" } }] }] },
      "default/p: spec.rules[0].from[0].source.principals: must be a list",
    ],
    [
      "a condition without values",
      { rules: [{ when: [{ key: "source.ip" }] }] },
      "default/p: spec.rules[0].when[0].values: at least one of values or notValues must be set",
    ],
    [
      "a bad destination.port value",
      { rules: [{ when: [{ key: "destination.port", notValues: ["https"] }] }] },
      'default/p: spec.rules[0].when[0].notValues[0]: "https" is not a port (0-65535)',
    ],
    [
      "a wildcard service account",
      { rules: [{ from: [{ source: { serviceAccounts: ["ns/*"] } }] }] },
      "default/p: spec.rules[0].from[0].source.serviceAccounts[0]: must not contain a wildcard",
    ],
    [
      "serviceAccounts with namespaces",
      { rules: [{ from: [{ source: { serviceAccounts: ["a"], namespaces: ["b"] } }] }] },
      "default/p: spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals",
    ],
  ];
  for (const [what, spec, error] of cases)
    it(`rejects ${what}, naming the field`, () => assert.deepEqual(convert(spec), { error }));

  it("tolerates keys it does not know", () => {
    assert.deepEqual(convert({ provider: null, future: 1, rules: [{ future: true }] }), {
      authorization: authz([{ clauses: [] }]),
      warnings: [],
    });
  });
});

describe("convertPolicy: dry run", () => {
  it("sets dryRun from istio.io/dry-run, from the options or the policy", () => {
    assert.deepEqual(convert({ rules: [{}] }, { annotations: { "istio.io/dry-run": "true" } }), {
      authorization: authz([{ clauses: [] }], { dryRun: true }),
      warnings: [],
    });
    assert.deepEqual(
      convertPolicy(
        { namespace: "default", name: "p", spec: {}, annotations: { "istio.io/dry-run": "True" } },
        { rootNamespace: ROOT },
      ),
      { authorization: authz([], { dryRun: true }), warnings: [] },
    );
    assert.deepEqual(convert({}, { annotations: { "istio.io/dry-run": "false" } }), {
      authorization: authz([]),
      warnings: [],
    });
  });

  it("enforces the policy, with a warning, when the annotation is not a boolean", () => {
    assert.deepEqual(convert({}, { annotations: { "istio.io/dry-run": "yes" } }), {
      authorization: authz([]),
      warnings: ['default/p: istio.io/dry-run: "yes" is not a boolean; the policy is enforced.'],
    });
  });
});

describe("policy helpers", () => {
  it("names the resource namespace/name", () => {
    assert.equal(authorizationKey("default", "allow-sleep"), "default/allow-sleep");
  });

  it("matches selectors against labels", () => {
    assert.equal(selectorMatches({ app: "web" }, { app: "web", version: "v1" }), true);
    assert.equal(selectorMatches({ app: "web", version: "v2" }, { app: "web", version: "v1" }), false);
    assert.equal(selectorMatches({ app: "web" }, {}), false);
    assert.equal(selectorMatches({}, { app: "web" }), true);
    assert.equal(selectorMatches({ toString: "x" }, {}), false);
  });
});
