import { isIPv4 } from "node:net";
import { z } from "zod";
import { cidrHasHostBits, parseCidr } from "../configfile/net.js";
import { DEFAULT_LAB_NAME, labNameProblem } from "./names.js";
import { AT_KEY } from "./spec-path.js";

// The shape of lab.yaml, field by field. Rules that relate fields to each other (uniqueness,
// containment, references) are in spec-check.ts; this file only says what each value may be.

export const DEFAULT_WIRE_SUBNET = "192.168.50.0/24";
export const DEFAULT_NIC = "ens3";
/** TEST-NET-3 (RFC 5737): documentation addresses, so the lab's "internet" can never be the real one. */
export const INTERNET_CIDR = "203.0.113.0/24";
export const DEFAULT_INTERNET_ADDRESS = "203.0.113.10";

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
// IANA service name, as Kubernetes allows it for a named targetPort.
const PORT_NAME = /^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

const string = (): z.ZodString =>
  z.string({
    error: (issue) =>
      issue.input === undefined
        ? "is missing"
        : typeof issue.input === "number" || typeof issue.input === "boolean"
          ? `must be a string, found ${String(issue.input)} (quote values that YAML reads as numbers or booleans)`
          : "must be a string",
  });

/** A DNS label (RFC 1123): what node, namespace, pod and service account names must be here. */
const dnsLabel = (what: string): z.ZodString =>
  string().refine((s) => s.length <= 63 && DNS_LABEL.test(s), {
    error: (issue) =>
      `"${String(issue.input)}" is not a valid ${what} (a DNS label: lower-case letters, digits and "-", ` +
      `starting and ending with a letter or digit, at most 63 characters)`,
  });

const labName = string().refine((s) => labNameProblem(s) === undefined, {
  error: (issue) => labNameProblem(String(issue.input)) ?? "is not a valid lab name",
});

const ipv4 = string().refine((s) => isIPv4(s), {
  error: (issue) => `"${String(issue.input)}" is not an IPv4 address (the lab is IPv4 only)`,
});

const cidrV4 = (maxPrefix: number, why: string): z.ZodType<string> =>
  string()
    .refine((s) => parseCidr(s)?.family === 4, {
      error: (issue) => `"${String(issue.input)}" is not an IPv4 CIDR such as 10.244.0.0/24`,
    })
    .refine((s) => !cidrHasHostBits(s), {
      error: (issue) =>
        `${String(issue.input)} has host bits set; the network is ${parseCidr(String(issue.input))?.text}`,
    })
    .refine((s) => (parseCidr(s)?.prefix ?? 0) <= maxPrefix, {
      error: (issue) =>
        `${String(issue.input)} is too small: the prefix must be at most /${maxPrefix} (${why})`,
    });

const ifName = string().refine((s) => /^[^\s/:]{1,15}$/.test(s) && s !== "." && s !== "..", {
  error: (issue) =>
    `"${String(issue.input)}" is not a Linux interface name (1–15 characters, no spaces, "/" or ":")`,
});

/** Kubernetes label syntax: `[prefix/]name` keys, values of at most 63 characters. */
const labels = z
  .record(
    string(),
    string().refine((v) => v === "" || (v.length <= 63 && LABEL_NAME.test(v)), {
      error: (issue) =>
        `"${String(issue.input)}" is not a valid label value (at most 63 letters, digits, "-", "_" or ".", ` +
        `starting and ending with a letter or digit)`,
    }),
    { error: "must be a mapping of label names to values" },
  )
  .superRefine((record, ctx) => {
    for (const key of Object.keys(record)) {
      const problem = labelKeyProblem(key);
      if (problem)
        ctx.addIssue({ code: "custom", path: [key], message: problem, input: key, params: AT_KEY });
    }
  });

export function labelKeyProblem(key: string): string | undefined {
  const slash = key.lastIndexOf("/");
  const prefix = slash < 0 ? undefined : key.slice(0, slash);
  const name = slash < 0 ? key : key.slice(slash + 1);
  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix)))
    return `label key "${key}": the prefix "${prefix}" is not a DNS subdomain`;
  if (name.length === 0 || name.length > 63 || !LABEL_NAME.test(name))
    return (
      `label key "${key}": the name "${name}" must be 1–63 letters, digits, "-", "_" or ".", ` +
      `starting and ending with a letter or digit`
    );
  return undefined;
}

/** YAML reads `key:` with nothing after it as null; for lists and mappings that means "none". */
const optionalList = <T extends z.ZodType>(item: T) =>
  z.preprocess(
    (v) => v ?? undefined,
    z.array(item, { error: "must be a list" }).default([] as z.output<T>[]),
  );
const optionalLabels = z.preprocess((v) => v ?? undefined, labels.optional());

const node = z.strictObject(
  {
    name: dnsLabel("node name"),
    ip: ipv4,
    podCIDR: cidrV4(29, "a node's pod CIDR must hold its pods and the gateway"),
  },
  { error: "must be a mapping with name, ip and podCIDR" },
);

const pair = z.strictObject({ cpu: node, dpu: node }, { error: "must be a mapping with cpu and dpu" });

const namespace = z.strictObject(
  { name: dnsLabel("namespace name"), labels: optionalLabels.transform((l) => l ?? {}) },
  { error: "must be a mapping with name and labels" },
);

const workload = z
  .strictObject(
    {
      name: dnsLabel("pod name"),
      namespace: dnsLabel("namespace name"),
      node: dnsLabel("node name"),
      serviceAccount: dnsLabel("service account name").optional(),
      labels: optionalLabels,
    },
    { error: "must be a mapping with name, namespace and node" },
  )
  // What a Deployment's pods would typically carry: their own service account and an app label.
  .transform((w) => ({
    name: w.name,
    namespace: w.namespace,
    node: w.node,
    serviceAccount: w.serviceAccount ?? w.name,
    labels: w.labels ?? { app: w.name },
  }));

const portNumber = z
  .number({ error: "must be a port number" })
  .int("must be a whole number")
  .min(1, "must be 1–65535")
  .max(65535, "must be 1–65535");

const servicePort = z
  .strictObject(
    {
      name: dnsLabel("port name").optional(),
      port: portNumber,
      targetPort: z
        .union([portNumber, string().regex(PORT_NAME, "must be a port number or a port name")])
        .optional(),
      protocol: z.enum(["TCP", "UDP", "SCTP"], { error: "must be TCP, UDP or SCTP" }).default("TCP"),
    },
    { error: "must be a mapping with port (and name, targetPort, protocol)" },
  )
  .transform((p) => ({
    ...(p.name !== undefined ? { name: p.name } : {}),
    port: p.port,
    targetPort: p.targetPort ?? p.port,
    protocol: p.protocol,
  }));

const service = z
  .strictObject(
    {
      name: dnsLabel("service name"),
      namespace: dnsLabel("namespace name"),
      clusterIP: ipv4,
      ports: z.array(servicePort, { error: "must be a list" }).min(1, "must list at least one port"),
      selector: optionalLabels,
    },
    { error: "must be a mapping with name, namespace, clusterIP and ports" },
  )
  .transform((s) => ({
    name: s.name,
    namespace: s.namespace,
    clusterIP: s.clusterIP,
    ports: s.ports,
    ...(s.selector !== undefined ? { selector: s.selector } : {}),
  }));

const policy = z.strictObject(
  {
    name: dnsLabel("policy name"),
    namespace: dnsLabel("namespace name"),
    annotations: z.preprocess(
      (v) => v ?? undefined,
      z.record(string(), string(), { error: "must be a mapping" }).default({}),
    ),
    // Checked by the control plane's own AuthorizationPolicy converter (spec-check.ts), so the
    // lab accepts exactly what the mesh enforces.
    spec: z.preprocess(
      (v) => v ?? undefined,
      z
        .record(string(), z.unknown(), { error: "must be a mapping (an AuthorizationPolicy spec)" })
        .default({}),
    ),
  },
  { error: "must be a mapping with name, namespace and spec" },
);

export const labSpecSchema = z.strictObject(
  {
    name: labName.default(DEFAULT_LAB_NAME),
    wire: z
      .strictObject(
        {
          subnet: cidrV4(30, "the wire must hold the nodes and the internet's port").default(
            DEFAULT_WIRE_SUBNET,
          ),
        },
        { error: "must be a mapping with subnet" },
      )
      .prefault({}),
    nic: ifName.default(DEFAULT_NIC),
    pairs: optionalList(pair),
    singles: optionalList(node),
    internet: z
      .strictObject(
        { address: ipv4.default(DEFAULT_INTERNET_ADDRESS), wireAddress: ipv4.optional() },
        { error: "must be a mapping with address (and wireAddress)" },
      )
      .prefault({}),
    namespaces: optionalList(namespace),
    workloads: optionalList(workload),
    policies: optionalList(policy),
    services: optionalList(service),
  },
  { error: "must be a mapping" },
);

export type ParsedLabSpec = z.output<typeof labSpecSchema>;
