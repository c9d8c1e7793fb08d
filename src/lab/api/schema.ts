import { z } from "zod";
import { canonicalIp, cidrHasHostBits, parseCidr } from "../../configfile/net.js";
import type { IpFamily } from "../../configfile/net.js";

// The cluster objects as the lab API accepts, stores and sends them: the shapes of
// src/cluster/types.ts, checked the way the Kubernetes API server checks its objects (names,
// addresses, ports) and with the same defaults as the state file of src/cluster/file.ts, so that
// a hand-written request may leave out what a Kubernetes object would leave out.

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
// An IANA service name, which is what a named port is.
const PORT_NAME = /^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

const nameOf = (pattern: RegExp, max: number, what: string, rule: string) =>
  z
    .string({ error: "must be a string" })
    .min(1, "must not be empty")
    .refine((v) => v.length <= max && pattern.test(v), {
      error: (i) => `${JSON.stringify(i.input)} is not a valid ${what} (${rule}, at most ${max} characters)`,
    });

const SUBDOMAIN_RULE = `lower-case letters, digits, "-" and "."; starting and ending with a letter or digit`;
const LABEL_RULE = `lower-case letters, digits and "-"; starting and ending with a letter or digit`;

export const namespaceName = nameOf(DNS1123_LABEL, 63, "namespace name", LABEL_RULE);
export const objectName = nameOf(DNS1123_SUBDOMAIN, 253, "name", SUBDOMAIN_RULE);
export const nodeName = nameOf(DNS1123_SUBDOMAIN, 253, "node name", SUBDOMAIN_RULE);
const serviceName = nameOf(
  DNS1035_LABEL,
  63,
  "service name",
  `lower-case letters, digits and "-"; starting with a letter, ending with a letter or digit`,
);
const serviceAccountName = nameOf(DNS1123_SUBDOMAIN, 253, "service account name", SUBDOMAIN_RULE);
const portName = nameOf(PORT_NAME, 15, "port name", `lower-case letters, digits and "-", with a letter`);

const stringMap = z.record(z.string(), z.string({ error: "must be a string" }), {
  error: "must be a mapping of strings to strings",
});
const labels = stringMap.default({});

const ipAddress = z.string({ error: "must be a string" }).transform((v, ctx) => {
  const ip = canonicalIp(v);
  if (ip) return ip.ip;
  ctx.addIssue({ code: "custom", message: `${JSON.stringify(v)} is not an IP address` });
  return z.NEVER;
});

const cidr = z.string({ error: "must be a string" }).transform((v, ctx) => {
  const parsed = parseCidr(v);
  if (!parsed) ctx.addIssue({ code: "custom", message: `${JSON.stringify(v)} is not a CIDR` });
  else if (cidrHasHostBits(v))
    ctx.addIssue({
      code: "custom",
      message: `${v} has host bits set; the network is ${parsed.text}`,
    });
  else return parsed.text;
  return z.NEVER;
});

const familyOf = (text: string): IpFamily => (text.includes(":") ? 6 : 4);

/** Kubernetes' dual-stack rule: at most one entry of each family. */
const onePerFamily = <T extends z.ZodType<string, unknown>>(item: T, what: string) =>
  z.array(item, { error: "must be a list" }).superRefine((list, ctx) => {
    const seen = new Map<IpFamily, number>();
    list.forEach((v, i) => {
      const family = familyOf(v);
      const first = seen.get(family);
      if (first === undefined) seen.set(family, i);
      else
        ctx.addIssue({
          code: "custom",
          path: [i],
          message: `a second IPv${family} ${what} (the first is [${first}]); at most one per family`,
        });
    });
  });

const ips = onePerFamily(ipAddress, "address");

const portNumber = z
  .number({ error: "must be a number" })
  .int("must be a whole number")
  .min(1, "must be a port (1-65535)")
  .max(65535, "must be a port (1-65535)");

const l4Protocol = z.enum(["TCP", "UDP", "SCTP"], { error: "must be TCP, UDP or SCTP" });

export const nodeSchema = z.strictObject({
  name: nodeName,
  internalIPs: ips.default([]),
  podCIDRs: onePerFamily(cidr, "CIDR").default([]),
  labels,
});

export const namespaceSchema = z.strictObject({ name: namespaceName, labels });

const containerPortSchema = z.strictObject({
  name: portName.optional(),
  containerPort: portNumber,
  protocol: l4Protocol.default("TCP"),
});

const podFields = {
  name: objectName,
  namespace: namespaceName,
  nodeName: nodeName.optional(),
  ips: ips.default([]),
  hostNetwork: z.boolean({ error: "must be true or false" }).default(false),
  labels,
  annotations: labels,
  phase: z
    .enum(["Pending", "Running", "Succeeded", "Failed", "Unknown"], {
      error: "must be Pending, Running, Succeeded, Failed or Unknown",
    })
    .default("Running"),
  ready: z.boolean({ error: "must be true or false" }).default(true),
  serviceAccount: serviceAccountName.default("default"),
  terminating: z.boolean({ error: "must be true or false" }).default(false),
  containerPorts: z.array(containerPortSchema, { error: "must be a list" }).optional(),
};

const uid = z.string({ error: "must be a string" }).min(1, "must not be empty").max(128, "is too long");

export const podSchema = z.strictObject({ uid, ...podFields });
/** A pod as applied: the API server gives it a uid (keeping the one of the pod it replaces). */
export const podApplySchema = z.strictObject({ uid: uid.optional(), ...podFields });

const servicePortSchema = z.strictObject({
  name: portName.optional(),
  port: portNumber,
  targetPort: z.union([portNumber, portName], { error: "must be a port number or a port name" }),
  protocol: l4Protocol.default("TCP"),
});

const serviceFields = {
  namespace: namespaceName,
  name: serviceName,
  ports: z.array(servicePortSchema, { error: "must be a list" }).default([]),
  selector: stringMap.optional(),
};

export const serviceSchema = z.strictObject({ ...serviceFields, clusterIPs: ips.default([]) });
/** A service as applied: without clusterIPs it keeps its addresses or is allocated one; [] is headless. */
export const serviceApplySchema = z.strictObject({ ...serviceFields, clusterIPs: ips.optional() });

export const policySchema = z.strictObject({
  namespace: namespaceName,
  name: objectName,
  spec: z.unknown().default({}),
  /** metadata.annotations, which carry `istio.io/dry-run`; the policy conversion reads them. */
  annotations: stringMap.optional(),
});

export const topologySchema = z.strictObject({
  text: z.string({ error: "must be a string" }),
  source: z.string({ error: "must be a string" }).min(1, "must not be empty"),
});

export const OBJECT_KINDS = ["namespace", "node", "service", "policy", "pod"] as const;
export type ObjectKind = (typeof OBJECT_KINDS)[number];

export const storedSchemas = {
  namespace: namespaceSchema,
  node: nodeSchema,
  service: serviceSchema,
  policy: policySchema,
  pod: podSchema,
} as const;

export const applySchemas = {
  namespace: namespaceSchema,
  node: nodeSchema,
  service: serviceApplySchema,
  policy: policySchema,
  pod: podApplySchema,
} as const;

export type PodApply = z.output<typeof podApplySchema>;
export type ServiceApply = z.output<typeof serviceApplySchema>;
export type PolicyObject = z.output<typeof policySchema>;

/** One problem with a request, an object or a file; `index` is the object's place in the request. */
export interface ApiIssue {
  readonly index?: number;
  /** Path of the field, relative to the object when `index` is set: `ips[0]`, `ports[1].port`. */
  readonly field: string;
  readonly message: string;
  /** Set for issues of a file (the topology): where in it. */
  readonly file?: string;
  readonly line?: number;
  readonly column?: number;
}

/** `["ports", 1, "port"]` → `ports[1].port`. */
export function formatFieldPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else if (typeof p === "string" && /^[A-Za-z_][\w-]*$/.test(p)) out += out === "" ? p : `.${p}`;
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out;
}

/** The inverse of formatFieldPath. */
export function parseFieldPath(field: string): (string | number)[] {
  const out: (string | number)[] = [];
  const re = /([A-Za-z_][\w-]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]/g;
  for (const m of field.matchAll(re)) {
    if (m[1] !== undefined) out.push(m[1]);
    else if (m[2] !== undefined) out.push(Number(m[2]));
    else if (m[3] !== undefined) out.push(JSON.parse(m[3]) as string);
  }
  return out;
}

const NOUNS: Record<string, string> = {
  string: "a string",
  number: "a number",
  int: "a whole number",
  boolean: "true or false",
  array: "a list",
  object: "a mapping",
  record: "a mapping",
};

/** Zod's issues as ApiIssues worded for people, each naming its field (with `prefix` before it). */
export function zodIssues(
  error: z.ZodError,
  prefix: readonly PropertyKey[] = [],
  index?: number,
): ApiIssue[] {
  const at = (path: readonly PropertyKey[]): string => formatFieldPath([...prefix, ...path]) || "(request)";
  const where = index === undefined ? {} : { index };
  return error.issues.flatMap((issue): ApiIssue[] => {
    if (issue.code === "unrecognized_keys")
      return issue.keys.map((k) => ({
        ...where,
        field: at([...issue.path, k]),
        message: `unknown field "${k}"`,
      }));
    let message = issue.message;
    const input = (issue as { input?: unknown }).input;
    if ((issue.code === "invalid_type" || issue.code === "invalid_union") && input === undefined) {
      message = "is required";
    } else if (issue.code === "invalid_type") {
      message = `must be ${NOUNS[issue.expected] ?? issue.expected}, found ${found(input)}`;
    }
    return [{ ...where, field: at(issue.path), message }];
  });
}

function found(input: unknown): string {
  if (input === null) return "null";
  if (Array.isArray(input)) return "a list";
  if (typeof input === "object") return "a mapping";
  return `${typeof input} ${JSON.stringify(input)}`;
}

/** Parse with issues worded for people (see zodIssues); input is reported so "missing" can be told. */
export function check<S extends z.ZodType>(
  schema: S,
  value: unknown,
  prefix: readonly PropertyKey[] = [],
  index?: number,
): { ok: true; value: z.output<S> } | { ok: false; issues: ApiIssue[] } {
  const r = schema.safeParse(value, { reportInput: true });
  return r.success ? { ok: true, value: r.data } : { ok: false, issues: zodIssues(r.error, prefix, index) };
}
