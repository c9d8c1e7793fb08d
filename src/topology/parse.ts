import type { Node as YamlNode, Pair as YamlPair } from "yaml";
import type { Result } from "../configfile/issues.js";
import { canonicalIp, unusableNodeAddress } from "../configfile/net.js";
import type { IpFamily } from "../configfile/net.js";
import { asMap, asSeq, describe, entries, scalarText, YamlSource } from "../configfile/yamldoc.js";
import type { NodeRef, Pair, Topology, TopologyNode } from "./types.js";

// The original keys, unchanged, so existing `offmesh-conf` ConfigMaps keep working.
const TOP_KEYS = ["pairs", "singles"] as const;
const PAIR_KEYS = ["cpuNodeIP", "dpuNodeIP", "cpuNodeName", "dpuNodeName"] as const;
const SINGLE_KEYS = ["nodeIP", "nodeName"] as const;

const NODE_NAME_MAX = 253;
// A Kubernetes node name is an RFC 1123 DNS subdomain.
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

interface Seen {
  field: string;
  line: number | undefined;
}

/** State shared by the per-entry checks: what has been declared so far, for uniqueness and family. */
class Checker {
  readonly names = new Map<string, Seen>();
  readonly ips = new Map<string, Seen>();
  family: { family: IpFamily; field: string; line: number | undefined } | undefined;

  constructor(readonly src: YamlSource) {}

  /** Returns the node name, or undefined after reporting why it is unusable. */
  name(pair: YamlPair<unknown, unknown> | undefined, field: string, parent: YamlNode): string | undefined {
    const text = this.present(pair, field, parent);
    if (text === undefined) return undefined;
    const node = pair?.value as YamlNode;
    if (text.length > NODE_NAME_MAX || !DNS1123_SUBDOMAIN.test(text)) {
      this.src.report(
        node,
        field,
        `"${text}" is not a valid Kubernetes node name (lower-case letters, digits, "-" and "."; ` +
          `starting and ending with a letter or digit; at most ${NODE_NAME_MAX} characters)`,
      );
      return undefined;
    }
    const earlier = this.names.get(text);
    if (earlier) {
      this.src.report(
        node,
        field,
        `node name "${text}" is already declared at ${where(earlier)}; a node may appear in one entry only`,
      );
      return undefined;
    }
    this.names.set(text, { field, line: this.src.lineOf(node) });
    return text;
  }

  /** Returns the canonical IP, or undefined after reporting why it is unusable. */
  ip(pair: YamlPair<unknown, unknown> | undefined, field: string, parent: YamlNode): string | undefined {
    const text = this.present(pair, field, parent);
    if (text === undefined) return undefined;
    const node = pair?.value as YamlNode;
    const parsed = canonicalIp(text);
    if (!parsed) {
      this.src.report(node, field, `"${text}" is not an IP address`);
      return undefined;
    }
    const unusable = unusableNodeAddress(parsed.ip, parsed.family);
    if (unusable) {
      this.src.report(node, field, `${text} ${unusable} and cannot be a node's address`);
      return undefined;
    }
    const line = this.src.lineOf(node);
    if (!this.family) {
      this.family = { family: parsed.family, field, line };
    } else if (this.family.family !== parsed.family) {
      this.src.report(
        node,
        field,
        `${text} is IPv${parsed.family} but the file's first node address (${where(this.family)}) is ` +
          `IPv${this.family.family}; every node must be listed by an address of one family ` +
          `(dual-stack clusters list each node by the address of the family they route nodes by)`,
      );
      return undefined;
    }
    const earlier = this.ips.get(parsed.ip);
    if (earlier) {
      this.src.report(
        node,
        field,
        `address ${text} is already declared at ${where(earlier)}; node addresses must be unique`,
      );
      return undefined;
    }
    this.ips.set(parsed.ip, { field, line });
    return parsed.ip;
  }

  private present(
    pair: YamlPair<unknown, unknown> | undefined,
    field: string,
    parent: YamlNode,
  ): string | undefined {
    if (!pair) {
      this.src.report(parent, field, "is missing");
      return undefined;
    }
    const text = scalarText(pair.value);
    if (text === undefined || text.trim() === "") {
      this.src.report(
        (pair.value ?? pair.key) as YamlNode,
        field,
        `must be a non-empty string, found ${describe(pair.value)}`,
      );
      return undefined;
    }
    return text.trim();
  }
}

function where(seen: Seen): string {
  return seen.line === undefined ? seen.field : `${seen.field} (line ${seen.line})`;
}

/**
 * Parse and validate a `cluster-conf.yaml`. Every problem is reported, each naming file, line and
 * field; nothing partial is ever returned (the original carried on with a half-read config: bug 3).
 */
export function parseTopology(text: string, file: string): Result<Topology> {
  const src = new YamlSource(file, text);
  if (!src.wellFormed) return { ok: false, issues: src.issues };

  const root = src.doc.contents;
  if (root === null || root === undefined) {
    src.report(undefined, "(file)", "is empty; expected the keys pairs and/or singles");
    return { ok: false, issues: src.issues };
  }
  const top = asMap(src, root, "(file)");
  if (!top) return { ok: false, issues: src.issues };
  const topEntries = entries(src, top, "", TOP_KEYS);
  const check = new Checker(src);
  const pairs: Pair[] = [];
  const singles: NodeRef[] = [];

  const pairsNode = topEntries.get("pairs")?.value;
  const pairSeq =
    pairsNode === undefined || isNullScalar(pairsNode) ? undefined : asSeq(src, pairsNode, "pairs");
  pairSeq?.items.forEach((item, i) => {
    const field = `pairs[${i}]`;
    const map = asMap(src, item, field);
    if (!map) return;
    const e = entries(src, map, field, PAIR_KEYS);
    const cpuName = check.name(e.get("cpuNodeName"), `${field}.cpuNodeName`, map);
    const cpuIp = check.ip(e.get("cpuNodeIP"), `${field}.cpuNodeIP`, map);
    const dpuName = check.name(e.get("dpuNodeName"), `${field}.dpuNodeName`, map);
    const dpuIp = check.ip(e.get("dpuNodeIP"), `${field}.dpuNodeIP`, map);
    if (cpuName && cpuIp && dpuName && dpuIp) {
      pairs.push({ cpu: { name: cpuName, ip: cpuIp }, dpu: { name: dpuName, ip: dpuIp } });
    }
  });

  const singlesNode = topEntries.get("singles")?.value;
  const singleSeq =
    singlesNode === undefined || isNullScalar(singlesNode) ? undefined : asSeq(src, singlesNode, "singles");
  singleSeq?.items.forEach((item, i) => {
    const field = `singles[${i}]`;
    const map = asMap(src, item, field);
    if (!map) return;
    const e = entries(src, map, field, SINGLE_KEYS);
    const name = check.name(e.get("nodeName"), `${field}.nodeName`, map);
    const ip = check.ip(e.get("nodeIP"), `${field}.nodeIP`, map);
    if (name && ip) singles.push({ name, ip });
  });

  if (src.issues.length === 0 && pairs.length === 0 && singles.length === 0) {
    src.report(top, "(file)", "declares no nodes; add at least one entry under pairs or singles");
  }
  if (src.issues.length > 0) return { ok: false, issues: src.issues };
  return { ok: true, value: buildTopology(file, check.family?.family, pairs, singles) };
}

function isNullScalar(node: unknown): boolean {
  return scalarText(node) === undefined && describe(node) === "an empty value";
}

/** Index a validated set of pairs and singles. Exported for tests and for sources other than YAML. */
export function buildTopology(
  file: string,
  family: IpFamily | undefined,
  pairs: readonly Pair[],
  singles: readonly NodeRef[],
): Topology {
  const nodes: TopologyNode[] = [];
  pairs.forEach((p, i) => {
    nodes.push({ ...p.cpu, role: "cpu", partner: p.dpu, declaredAt: `pairs[${i}].cpuNodeName` });
    nodes.push({ ...p.dpu, role: "dpu", partner: p.cpu, declaredAt: `pairs[${i}].dpuNodeName` });
  });
  singles.forEach((s, i) => nodes.push({ ...s, role: "single", declaredAt: `singles[${i}].nodeName` }));
  return {
    file,
    family,
    pairs,
    singles,
    nodes,
    byName: new Map(nodes.map((n) => [n.name, n])),
    byIp: new Map(nodes.map((n) => [n.ip, n])),
  };
}
