import { z } from "zod";
import { ConfigError } from "../configfile/issues.js";
import { readConfigText } from "../configfile/read.js";
import type { Result } from "../configfile/issues.js";
import { canonicalIp, cidrContains, cidrHasHostBits, parseCidr } from "../configfile/net.js";
import { closest, nodeAt, YamlSource } from "../configfile/yamldoc.js";
import type { Topology } from "../topology/types.js";

// What a node knows about itself and the cluster at planning time. On a real node the agent
// discovers these (links, the API server, the CNI); `offmesh render` reads them from a file whose
// schema is documented in docs/node-facts.md.

const ifName = z
  .string()
  .regex(/^[^\s/:]{1,15}$/, "must be a Linux interface name (1–15 characters, no spaces, '/' or ':')");
// Addresses and CIDRs are stored canonically (lower-case, compressed IPv6) so that every rule and
// route spells an address one way, whatever the file wrote.
const ip = z
  .string()
  .refine((s) => canonicalIp(s) !== undefined, "must be an IP address")
  .transform((s) => canonicalIp(s)?.ip ?? s);
const cidr = z
  .string()
  .refine((s) => parseCidr(s) !== undefined, "must be a CIDR such as 10.244.0.0/24")
  .refine((s) => !cidrHasHostBits(s), {
    error: (issue) =>
      `${String(issue.input)} has host bits set; the network is ${parseCidr(String(issue.input))?.text}`,
  });
const name = z.string().min(1, "must not be empty");

const podSchema = z.strictObject({
  uid: name,
  name: name,
  namespace: name,
  node: name,
  ips: z.array(ip).default([]),
  hostNetwork: z.boolean().default(false),
});

export const factsSchema = z.strictObject({
  node: name.optional(),
  nic: z.strictObject({
    name: ifName,
    ip,
    mtu: z.number().int().min(576, "must be at least 576").max(65535, "must be at most 65535").default(1500),
  }),
  podCIDRs: z.array(cidr).min(1, "must list the node's pod CIDR"),
  podGateway: ip,
  clusterPodCIDRs: z.array(cidr).min(1, "must list the cluster's pod CIDRs (masquerade exemption)"),
  nodes: z
    .array(
      z.strictObject({
        name,
        ips: z.array(ip).min(1, "must list the node's InternalIP addresses"),
        podCIDRs: z.array(cidr).default([]),
      }),
    )
    .default([]),
  ztunnel: z
    .strictObject({
      ip,
      hostVeth: ifName.optional(),
      captureDNS: z.boolean().default(false),
    })
    .optional(),
  tunnel: z.enum(["geneve", "vxlan", "veth"]).default("geneve"),
  pods: z.array(podSchema).default([]),
});

export type NodeFacts = z.infer<typeof factsSchema>;
export type PodFacts = z.infer<typeof podSchema>;

/**
 * Parse and validate a node-facts file; with a topology and node name, also check that the facts
 * agree with cluster-conf.yaml (the node's address, pod gateway inside the pod CIDR, …).
 */
export function parseFacts(
  text: string,
  file: string,
  context?: { topology: Topology; node: string },
): Result<NodeFacts> {
  const src = new YamlSource(file, text);
  if (!src.wellFormed) return { ok: false, issues: src.issues };
  const parsed = factsSchema.safeParse(src.doc.toJS());
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const path = issue.path.map((p) => (typeof p === "symbol" ? String(p) : p));
      if (issue.code === "unrecognized_keys") {
        // Name each unknown key itself: typos are the common mistake, and the key is what to fix.
        for (const key of issue.keys) {
          src.report(
            nodeAt(src, [...path, key], true),
            fieldName([...path, key]),
            `unknown key "${key}"${hint(key, path)}`,
          );
        }
        continue;
      }
      src.report(nodeAt(src, path), fieldName(path), zodMessage(issue, src.doc.hasIn(path)));
    }
    return { ok: false, issues: src.issues };
  }
  const facts = parsed.data;
  if (context) {
    for (const { path, message } of crossCheck(facts, context.topology, context.node)) {
      src.report(nodeAt(src, path), fieldName(path), message);
    }
  }
  return src.issues.length > 0 ? { ok: false, issues: src.issues } : { ok: true, value: facts };
}

export async function loadFactsFile(
  path: string,
  context?: { topology: Topology; node: string },
): Promise<NodeFacts> {
  const parsed = parseFacts(await readConfigText(path), path, context);
  if (!parsed.ok) throw new ConfigError(parsed.issues);
  return parsed.value;
}

type Path = readonly (string | number)[];

function crossCheck(facts: NodeFacts, topo: Topology, node: string): { path: Path; message: string }[] {
  const out: { path: Path; message: string }[] = [];
  if (facts.node !== undefined && facts.node !== node) {
    out.push({ path: ["node"], message: `describes node "${facts.node}" but --node is "${node}"` });
  }
  const self = topo.byName.get(node);
  const nicIp = canonicalIp(facts.nic.ip);
  if (self && nicIp && nicIp.ip !== self.ip) {
    out.push({
      path: ["nic", "ip"],
      message: `${facts.nic.ip} is not the address ${topo.file} declares for "${node}" (${self.ip} at ${self.declaredAt})`,
    });
  }
  const cidrs = facts.podCIDRs.map((c) => parseCidr(c)).filter((c) => c !== undefined);
  if (!cidrs.some((c) => cidrContains(c, facts.podGateway))) {
    out.push({
      path: ["podGateway"],
      message: `${facts.podGateway} is not inside the node's pod CIDRs (${facts.podCIDRs.join(", ")})`,
    });
  }
  const families = new Set<number>();
  facts.podCIDRs.forEach((c, i) => {
    const f = parseCidr(c)?.family;
    if (f !== undefined && families.has(f)) {
      out.push({
        path: ["podCIDRs", i],
        message: `a node has at most one pod CIDR per IP family; ${c} is a second IPv${f} CIDR`,
      });
    }
    if (f !== undefined) families.add(f);
  });
  const seen = new Set<string>();
  facts.nodes.forEach((n, i) => {
    if (n.name === node)
      out.push({
        path: ["nodes", i, "name"],
        message: `lists the node itself; nodes holds the other nodes of the cluster`,
      });
    if (seen.has(n.name))
      out.push({ path: ["nodes", i, "name"], message: `node "${n.name}" is listed twice` });
    seen.add(n.name);
  });
  if (
    facts.ztunnel &&
    self &&
    self.role !== "cpu" &&
    !cidrs.some((c) => cidrContains(c, facts.ztunnel?.ip ?? ""))
  ) {
    out.push({
      path: ["ztunnel", "ip"],
      message: `${facts.ztunnel.ip} is not inside the node's pod CIDRs (${facts.podCIDRs.join(", ")}); the ztunnel pod runs on this node`,
    });
  }
  if (facts.ztunnel && self && self.role !== "cpu" && facts.ztunnel.hostVeth === undefined) {
    out.push({
      path: ["ztunnel", "hostVeth"],
      message: `is required on a ${self.role} node: the ztunnel pod runs here and its host-side veth carries the tunnels`,
    });
  }
  return out;
}

function fieldName(path: Path): string {
  if (path.length === 0) return "(file)";
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
}

/** The allowed keys at a path of the facts schema, for "did you mean" hints. */
function allowedKeys(path: Path): readonly string[] {
  let schema: z.ZodType = factsSchema;
  for (const p of path) {
    let s: unknown = schema;
    while (s instanceof z.ZodOptional || s instanceof z.ZodDefault)
      s = (s as z.ZodOptional<z.ZodType>).unwrap();
    if (typeof p === "number" && s instanceof z.ZodArray) schema = s.element as z.ZodType;
    else if (typeof p === "string" && s instanceof z.ZodObject)
      schema = (s.shape as Record<string, z.ZodType>)[p] ?? z.never();
    else return [];
  }
  let s: unknown = schema;
  while (s instanceof z.ZodOptional || s instanceof z.ZodDefault)
    s = (s as z.ZodOptional<z.ZodType>).unwrap();
  return s instanceof z.ZodObject ? Object.keys(s.shape as object) : [];
}

function hint(key: string, path: Path): string {
  const allowed = allowedKeys(path);
  const near = closest(key, allowed);
  return `${near ? ` (did you mean "${near}"?)` : ""}; allowed keys: ${allowed.join(", ")}`;
}

/** zod's message, made to say "missing" only for keys that are absent from the document. */
function zodMessage(issue: z.core.$ZodIssue, present: boolean): string {
  if (issue.code !== "invalid_type") return issue.message;
  return present ? `must be ${article(issue.expected)}` : `is missing (expected ${article(issue.expected)})`;
}

function article(expected: string): string {
  const names: Record<string, string> = {
    object: "a mapping",
    array: "a list",
    string: "a string",
    number: "a number",
    boolean: "true or false",
  };
  return names[expected] ?? expected;
}
