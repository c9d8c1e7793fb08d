import { z } from "zod";
import type { ClusterPolicy, Labels } from "../cluster/types.js";
import { canonicalIp, hostPrefix, ipToBigInt } from "../configfile/net.js";
import type { IpFamily } from "../configfile/net.js";
import { AuthzAction, AuthzScope } from "../xds/types.js";
import type {
  Authorization,
  AuthzAddress,
  Clause,
  Match,
  Rule,
  ServiceAccountMatch,
  StringMatch,
} from "../xds/types.js";

// Istio AuthorizationPolicy (security.istio.io/v1) → the L4 `istio.security.Authorization` that
// ztunnel enforces, following istiod's ambient conversion
// (pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go) and ztunnel's matching
// (src/rbac.rs). Pure: the index calls it on every policy event. docs/policy.md has the rules
// with examples.
//
// Deliberate differences from istiod, each because istiod relies on its admission webhook or
// because its output does not do what its own status message says:
// - What the webhook would reject is an `{error}` here (a bad port, IP or service account, an
//   empty source or operation): nothing in front of offmesh rejects it, and istiod's habit of
//   skipping a bad value silently can widen a policy (an `ipBlocks` whose only entry is skipped
//   constrains nothing).
// - In a DENY rule, a `from`/`to` list that has no L4 condition left once HTTP attributes are
//   removed stops constraining the rule, and an HTTP `when` is removed, so the rest of the rule
//   is enforced (istiod emits an empty match there, which ztunnel skips, so the whole rule
//   silently never matches). A DENY rule with no L4 condition left at all is left out, which is
//   what it amounts to in istiod and ztunnel too, and a warning says so.
// - `istio.io/dry-run` is honoured (istiod's ambient conversion does not pass it on).

export interface ConvertOptions {
  /** Istio's root namespace (meshConfig.rootNamespace): its selector-less policies are GLOBAL. */
  readonly rootNamespace: string;
  /** metadata.annotations of the policy, when the caller has them (for `istio.io/dry-run`). */
  readonly annotations?: Labels;
}

export interface PolicyConversion {
  /** Absent when the policy is not for ztunnel (targetRefs, AUDIT, CUSTOM); `warnings` say why. */
  readonly authorization?: Authorization;
  /** matchLabels of a WORKLOAD_SELECTOR policy: the workloads of its namespace it applies to. */
  readonly selector?: Record<string, string>;
  readonly warnings: string[];
}

/** The xDS resource name of a policy's Authorization, as ztunnel keys it (`Authorization::to_key`). */
export const authorizationKey = (namespace: string, name: string): string => `${namespace}/${name}`;

/** Whether a workload with `labels` is selected by `selector` (matchLabels: all must be equal). */
export function selectorMatches(selector: Readonly<Record<string, string>>, labels: Labels): boolean {
  // Without allocation: the index asks this for every pod of the cluster.
  for (const k in selector) if (!Object.hasOwn(labels, k) || labels[k] !== selector[k]) return false;
  return true;
}

const DRY_RUN_ANNOTATION = "istio.io/dry-run";

// ---- Schema ----------------------------------------------------------------------------------
// Unknown keys pass (z.object strips them): the Istio API has fields ztunnel has no use for
// (provider, …) and grows new ones. YAML's empty value (`rules:`) is null, so optional fields are
// nullish.

const mapping = {
  error: (issue: { input?: unknown }) => (issue.input === undefined ? "is required" : "must be a mapping"),
};
const LIST = "must be a list";

const text = z.string({ error: "must be a string" }).min(1, "must not be empty");
const texts = z.array(text, { error: LIST }).nullish();

function parsePort(value: unknown): number | undefined {
  const n =
    typeof value === "number"
      ? value
      : typeof value === "string" && /^\d{1,5}$/.test(value)
        ? Number(value)
        : NaN;
  return Number.isInteger(n) && n >= 0 && n <= 65535 ? n : undefined;
}

function parseAddress(value: unknown): AuthzAddress | undefined {
  if (typeof value !== "string") return undefined;
  const slash = value.indexOf("/");
  const ip = canonicalIp(slash < 0 ? value : value.slice(0, slash));
  if (!ip) return undefined;
  let length = hostPrefix(ip.family);
  if (slash >= 0) {
    const prefix = value.slice(slash + 1);
    if (!/^(0|[1-9]\d{0,2})$/.test(prefix) || Number(prefix) > length) return undefined;
    length = Number(prefix);
  }
  // As written, host bits included, like istiod: ztunnel masks when it matches.
  return { address: addressBytes(ip.ip, ip.family), length };
}

function addressBytes(ip: string, family: IpFamily): Uint8Array {
  const bytes = new Uint8Array(family === 4 ? 4 : 16);
  let value = ipToBigInt(ip, family);
  for (let i = bytes.length - 1; i >= 0; i--) {
    bytes[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  return bytes;
}

/** Istio's CheckServiceAccount: `sa` or `namespace/sa`, no wildcard. */
function serviceAccountProblem(value: string): string | undefined {
  if (value.includes("*")) return "must not contain a wildcard";
  if (value.length > 320) return "must be at most 320 characters";
  const parts = value.split("/");
  if (parts.length > 2 || parts.some((p) => p === ""))
    return "must be 'serviceAccount' or 'namespace/serviceAccount'";
  return undefined;
}

const port = z.unknown().transform((v, ctx) => {
  const p = parsePort(v);
  if (p !== undefined) return p;
  ctx.addIssue({ code: "custom", message: `${JSON.stringify(v)} is not a port (0-65535)` });
  return z.NEVER;
});
const ports = z.array(port, { error: LIST }).nullish();

const address = z.unknown().transform((v, ctx) => {
  const a = parseAddress(v);
  if (a) return a;
  ctx.addIssue({ code: "custom", message: `${JSON.stringify(v)} is not an IP address or CIDR` });
  return z.NEVER;
});
const addresses = z.array(address, { error: LIST }).nullish();

const serviceAccounts = z
  .array(
    text.refine((v) => serviceAccountProblem(v) === undefined, {
      error: (i) => serviceAccountProblem(String(i.input)),
    }),
    {
      error: LIST,
    },
  )
  .max(16, "must have at most 16 values")
  .nullish();

const sourceSchema = z
  .object(
    {
      principals: texts,
      notPrincipals: texts,
      namespaces: texts,
      notNamespaces: texts,
      serviceAccounts,
      notServiceAccounts: serviceAccounts,
      ipBlocks: addresses,
      notIpBlocks: addresses,
      remoteIpBlocks: texts,
      notRemoteIpBlocks: texts,
      requestPrincipals: texts,
      notRequestPrincipals: texts,
    },
    mapping,
  )
  .superRefine((src, ctx) => {
    const set = (v: readonly unknown[] | null | undefined): boolean => (v?.length ?? 0) > 0;
    if (!Object.values(src).some((v) => Array.isArray(v) && v.length > 0))
      ctx.addIssue({ code: "custom", message: "must not be empty" });
    if (
      (set(src.serviceAccounts) || set(src.notServiceAccounts)) &&
      (set(src.principals) || set(src.notPrincipals) || set(src.namespaces) || set(src.notNamespaces))
    )
      ctx.addIssue({ code: "custom", message: "cannot set serviceAccounts with namespaces or principals" });
  });

const operationSchema = z
  .object(
    {
      ports,
      notPorts: ports,
      hosts: texts,
      notHosts: texts,
      methods: texts,
      notMethods: texts,
      paths: texts,
      notPaths: texts,
    },
    mapping,
  )
  .superRefine((op, ctx) => {
    if (!Object.values(op).some((v) => Array.isArray(v) && v.length > 0))
      ctx.addIssue({ code: "custom", message: "must not be empty" });
  });

/**
 * A `when` condition: its Match when ztunnel can evaluate the key (istiod's l4WhenAttributes:
 * source.ip, source.namespace, source.principal, destination.ip, destination.port), else only
 * the key, which is then an HTTP attribute.
 */
interface Condition {
  readonly key: string;
  readonly match?: Match;
}

const conditionSchema = z
  .object({ key: text, values: texts, notValues: texts }, mapping)
  .transform((c, ctx): Condition => {
    const values = c.values ?? [];
    const notValues = c.notValues ?? [];
    if (values.length === 0 && notValues.length === 0) {
      ctx.addIssue({
        code: "custom",
        message: "at least one of values or notValues must be set",
        path: ["values"],
      });
      return z.NEVER;
    }
    const each = <T>(parse: (v: string) => T | undefined, what: string) => {
      const run = (list: readonly string[], field: string): T[] =>
        list.flatMap((v, i) => {
          const parsed = parse(v);
          if (parsed !== undefined) return [parsed];
          ctx.addIssue({ code: "custom", message: `${JSON.stringify(v)} is not ${what}`, path: [field, i] });
          return [];
        });
      return [run(values, "values"), run(notValues, "notValues")] as const;
    };
    switch (c.key) {
      case "source.ip": {
        const [pos, neg] = each(parseAddress, "an IP address or CIDR");
        return { key: c.key, match: compact({ sourceIps: pos, notSourceIps: neg }) };
      }
      case "destination.ip": {
        const [pos, neg] = each(parseAddress, "an IP address or CIDR");
        return { key: c.key, match: compact({ destinationIps: pos, notDestinationIps: neg }) };
      }
      case "destination.port": {
        const [pos, neg] = each(parsePort, "a port (0-65535)");
        return { key: c.key, match: compact({ destinationPorts: pos, notDestinationPorts: neg }) };
      }
      case "source.namespace":
        return {
          key: c.key,
          match: compact({ namespaces: stringMatches(values), notNamespaces: stringMatches(notValues) }),
        };
      case "source.principal":
        return {
          key: c.key,
          match: compact({ principals: stringMatches(values), notPrincipals: stringMatches(notValues) }),
        };
      default:
        return { key: c.key };
    }
  });

const ruleSchema = z.object(
  {
    from: z
      .array(z.object({ source: sourceSchema }, mapping), { error: LIST })
      .min(1, "must not be empty")
      .nullish(),
    to: z
      .array(z.object({ operation: operationSchema }, mapping), { error: LIST })
      .min(1, "must not be empty")
      .nullish(),
    when: z.array(conditionSchema, { error: LIST }).nullish(),
  },
  mapping,
);

const specSchema = z.object(
  {
    selector: z
      .object(
        { matchLabels: z.record(z.string(), z.string({ error: "must be a string" })).nullish() },
        mapping,
      )
      .nullish(),
    targetRef: z.object({}, mapping).nullish(),
    targetRefs: z.array(z.object({}, mapping), { error: LIST }).nullish(),
    action: z
      .enum(["ALLOW", "DENY", "AUDIT", "CUSTOM"], { error: "must be ALLOW, DENY, AUDIT or CUSTOM" })
      .nullish(),
    rules: z.array(ruleSchema, { error: LIST }).nullish(),
  },
  mapping,
);

type ParsedRule = z.output<typeof ruleSchema>;

// ---- Conversion ------------------------------------------------------------------------------

/** Istio's wildcard forms; a leading `*` wins over a trailing one, as in istiod. */
export function stringMatch(value: string): StringMatch {
  if (value === "*") return { presence: {} };
  if (value.startsWith("*")) return { suffix: value.slice(1) };
  if (value.endsWith("*")) return { prefix: value.slice(0, -1) };
  return { exact: value };
}

const stringMatches = (values: readonly string[] | null | undefined): StringMatch[] =>
  (values ?? []).map(stringMatch);

function serviceAccountMatches(
  values: readonly string[] | null | undefined,
  policyNamespace: string,
): ServiceAccountMatch[] {
  return (values ?? []).map((v) => {
    const [ns, sa] = v.includes("/") ? v.split("/") : [policyNamespace, v];
    return { namespace: ns ?? policyNamespace, serviceAccount: sa ?? v };
  });
}

/** The Match without its empty lists: absent fields are omitted, as protobufjs decodes them. */
function compact(m: { [K in keyof Match]: NonNullable<Match[K]> }): Match {
  return Object.fromEntries(Object.entries(m).filter(([, v]) => v.length > 0)) as Match;
}

const emptyMatch = (m: Match): boolean => Object.keys(m).length === 0;

const SOURCE_HTTP = [
  "remoteIpBlocks",
  "notRemoteIpBlocks",
  "requestPrincipals",
  "notRequestPrincipals",
] as const;
const OPERATION_HTTP = ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"] as const;

const WAYPOINT_HINT = "Use a waypoint (targetRefs) to enforce HTTP attributes.";

/** One `from` or `to` entry: its L4 Match and the HTTP attributes it also had. */
interface Entry {
  readonly match: Match;
  readonly http: readonly string[];
}

const present = <F extends string>(
  fields: readonly F[],
  o: Partial<Record<F, readonly unknown[] | null>>,
): F[] => fields.filter((f) => (o[f]?.length ?? 0) > 0);

function convertRule(
  rule: ParsedRule,
  where: string,
  deny: boolean,
  policyNamespace: string,
): { rule?: Rule; warning?: string } {
  const to: Entry[] = (rule.to ?? []).map(({ operation: op }) => ({
    match: compact({ destinationPorts: op.ports ?? [], notDestinationPorts: op.notPorts ?? [] }),
    http: present(OPERATION_HTTP, op),
  }));
  const from: Entry[] = (rule.from ?? []).map(({ source: src }) => ({
    match: compact({
      namespaces: stringMatches(src.namespaces),
      notNamespaces: stringMatches(src.notNamespaces),
      serviceAccounts: serviceAccountMatches(src.serviceAccounts, policyNamespace),
      notServiceAccounts: serviceAccountMatches(src.notServiceAccounts, policyNamespace),
      principals: stringMatches(src.principals),
      notPrincipals: stringMatches(src.notPrincipals),
      sourceIps: src.ipBlocks ?? [],
      notSourceIps: src.notIpBlocks ?? [],
    }),
    http: present(SOURCE_HTTP, src),
  }));
  const conditions = rule.when ?? [];
  const httpConditions = conditions.filter((c) => !c.match).map((c) => c.key);
  const found = [...new Set([...to, ...from].flatMap((e) => e.http).concat(httpConditions))]
    .sort()
    .join(", ");

  if (found !== "" && !deny)
    return {
      warning: `${where}: ztunnel cannot enforce ${found}; the rule is left out, so this ALLOW policy allows less than written. ${WAYPOINT_HINT}`,
    };

  // Past this point HTTP attributes only occur in a DENY rule, and every Match is the L4 part of
  // its entry. An entry with no L4 part left is dropped from its list (ztunnel would skip its
  // empty match: it matches nothing); a list left with no entry, like an HTTP condition, no
  // longer constrains the rule.
  const clauses: Clause[] = [];
  let widened = httpConditions.length > 0;
  const dropped: string[] = [];
  const addList = (label: string, entries: readonly Entry[]): void => {
    const kept = entries.filter((e) => !emptyMatch(e.match));
    if (kept.length === 0) {
      widened ||= entries.length > 0;
      return;
    }
    entries.forEach((e, i) => {
      if (emptyMatch(e.match)) dropped.push(`${label}[${i}]`);
      else widened ||= e.http.length > 0;
    });
    clauses.push({ matches: kept.map((e) => e.match) });
  };
  // istiod's order: to, from, then one clause per condition. Clauses are AND-ed.
  addList("to", to);
  addList("from", from);
  for (const c of conditions) if (c.match) clauses.push({ matches: [c.match] });

  if (found === "") return { rule: { clauses } };
  if (clauses.length === 0)
    return {
      warning: `${where}: ztunnel cannot enforce ${found} and the rule has no L4 condition left; the rule is left out, so this DENY policy does not deny what the rule describes. ${WAYPOINT_HINT}`,
    };
  const effects = [
    ...(widened ? ["the rule is enforced without them, so this DENY policy denies more than written"] : []),
    ...(dropped.length > 0
      ? [
          `${dropped.join(", ")} had nothing else and ${dropped.length === 1 ? "is" : "are"} dropped, so what only ${dropped.length === 1 ? "it" : "they"} matched is not denied`,
        ]
      : []),
  ];
  return {
    rule: { clauses },
    warning: `${where}: ztunnel cannot enforce ${found}; ${effects.join("; ")}. ${WAYPOINT_HINT}`,
  };
}

/** Go's strconv.ParseBool, which Istio reads `istio.io/dry-run` with. */
function parseBool(value: string): boolean | undefined {
  if (["1", "t", "T", "TRUE", "true", "True"].includes(value)) return true;
  if (["0", "f", "F", "FALSE", "false", "False"].includes(value)) return false;
  return undefined;
}

function formatPath(path: readonly PropertyKey[]): string {
  return path
    .map((p) =>
      typeof p === "number"
        ? `[${p}]`
        : typeof p === "string" && /^[A-Za-z_]\w*$/.test(p)
          ? `.${p}`
          : `[${JSON.stringify(String(p))}]`,
    )
    .join("");
}

/**
 * Converts one AuthorizationPolicy. `{error}` when the spec is malformed (naming the field);
 * otherwise the Authorization for ztunnel, if the policy is one ztunnel enforces, and warnings
 * wherever ztunnel enforces something other than what the policy says.
 */
export function convertPolicy(
  policy: ClusterPolicy & { readonly annotations?: Labels },
  opts: ConvertOptions,
): PolicyConversion | { error: string } {
  const id = authorizationKey(policy.namespace, policy.name);
  const parsed = specSchema.safeParse(policy.spec ?? {});
  if (!parsed.success)
    return {
      error: `${id}: ${parsed.error.issues.map((i) => `spec${formatPath(i.path)}: ${i.message}`).join("; ")}`,
    };
  const spec = parsed.data;

  const target = spec.targetRef ? "targetRef" : spec.targetRefs?.length ? "targetRefs" : undefined;
  if (target)
    return {
      warnings: [
        `${id}: the policy has ${target}, so it is for waypoints and gateways; ztunnel does not enforce it.`,
      ],
    };
  const action = spec.action ?? "ALLOW";
  if (action === "AUDIT" || action === "CUSTOM")
    return {
      warnings: [`${id}: ztunnel does not support the ${action} action; the policy is not sent to ztunnel.`],
    };

  const warnings: string[] = [];
  const selector = spec.selector ? { ...(spec.selector.matchLabels ?? {}) } : undefined;
  const deny = action === "DENY";
  const rules: Rule[] = [];
  (spec.rules ?? []).forEach((r, i) => {
    const out = convertRule(r, `${id}: rules[${i}]`, deny, policy.namespace);
    if (out.rule) rules.push(out.rule);
    if (out.warning) warnings.push(out.warning);
  });
  if (deny && (spec.rules?.length ?? 0) === 0)
    warnings.push(`${id}: a DENY policy without rules never matches; add a rule {} to deny everything.`);

  let dryRun = false;
  const dryRunValue = (opts.annotations ?? policy.annotations)?.[DRY_RUN_ANNOTATION];
  if (dryRunValue !== undefined) {
    const b = parseBool(dryRunValue);
    if (b === undefined)
      warnings.push(
        `${id}: ${DRY_RUN_ANNOTATION}: ${JSON.stringify(dryRunValue)} is not a boolean; the policy is enforced.`,
      );
    dryRun = b ?? false;
  }

  const authorization: Authorization = {
    name: policy.name,
    namespace: policy.namespace,
    // A selector makes a workload policy even in the root namespace (then for the root
    // namespace's own workloads only), and even when matchLabels is empty, as in istiod.
    scope: selector
      ? AuthzScope.WORKLOAD_SELECTOR
      : policy.namespace === opts.rootNamespace
        ? AuthzScope.GLOBAL
        : AuthzScope.NAMESPACE,
    action: deny ? AuthzAction.DENY : AuthzAction.ALLOW,
    rules,
    ...(dryRun ? { dryRun } : {}),
  };
  return { authorization, ...(selector ? { selector } : {}), warnings };
}
