import { bigIntToIp, cidrContains, ipToBigInt, parseCidr } from "../configfile/net.js";
import type { Cidr } from "../configfile/net.js";
import { convertPolicy } from "../controlplane/policy.js";
import { MAX_ZTUNNEL_HOST_NAME, ZTUNNEL_NAMESPACE, ztunnelPodName } from "./names.js";
import { INTERNET_CIDR } from "./spec-schema.js";
import { fieldName } from "./spec-path.js";
import type { SpecPath, SpecProblem } from "./spec-path.js";
import type { LabSpec } from "./spec-types.js";

// The rules of lab.yaml that relate one field to another. Pure: a list of problems, each at the
// path of the field to fix (the YAML layer turns paths into lines).

// Ranges no lab address may fall into: they are not routable between namespaces.
const RESERVED: readonly { cidr: string; what: string }[] = [
  { cidr: "0.0.0.0/8", what: '"this network"' },
  { cidr: "127.0.0.0/8", what: "loopback" },
  { cidr: "169.254.0.0/16", what: "link-local" },
  { cidr: "224.0.0.0/4", what: "multicast" },
  { cidr: "240.0.0.0/4", what: "reserved" },
];

interface Declared {
  readonly path: SpecPath;
  readonly text: string;
}

interface NodeEntry {
  readonly name: string;
  readonly ip: string;
  readonly podCIDR: string;
  readonly hostsZtunnel: boolean;
  readonly path: SpecPath;
}

const at = (d: Declared): string => fieldName(d.path);

function overlaps(a: Cidr, b: Cidr): boolean {
  return cidrContains(a, bigIntToIp(b.network, 4)) || cidrContains(b, bigIntToIp(a.network, 4));
}

const lastAddress = (c: Cidr): bigint => c.network + (1n << BigInt(32 - c.prefix)) - 1n;

/** The network and broadcast addresses of an IPv4 subnet: no host may use them. */
function edgeAddressProblem(c: Cidr, ip: string): string | undefined {
  const v = ipToBigInt(ip, 4);
  if (v === c.network) return `${ip} is the network address of ${c.text}`;
  if (v === lastAddress(c)) return `${ip} is the broadcast address of ${c.text}`;
  return undefined;
}

/** The wire address the internet namespace gets unless the spec names one: the last host. */
export function defaultInternetWireAddress(subnet: string): string | undefined {
  const c = parseCidr(subnet);
  return c ? bigIntToIp(lastAddress(c) - 1n, 4) : undefined;
}

function nodeEntries(spec: LabSpec): NodeEntry[] {
  const out: NodeEntry[] = [];
  spec.pairs.forEach((p, i) => {
    out.push({ ...p.cpu, hostsZtunnel: false, path: ["pairs", i, "cpu"] });
    out.push({ ...p.dpu, hostsZtunnel: true, path: ["pairs", i, "dpu"] });
  });
  spec.singles.forEach((s, i) => out.push({ ...s, hostsZtunnel: true, path: ["singles", i] }));
  return out;
}

/** Every cross-field problem of a spec whose fields are each well-formed (spec-schema.ts). */
export function checkSpec(spec: LabSpec): SpecProblem[] {
  const problems: SpecProblem[] = [];
  const report = (path: SpecPath, message: string): void => {
    problems.push({ path, message });
  };
  const wire = parseCidr(spec.wire.subnet);
  const internet = parseCidr(INTERNET_CIDR);
  if (!wire || !internet) throw new Error("checkSpec needs a spec whose CIDRs passed the schema");

  checkReserved(wire, ["wire", "subnet"], report);
  if (overlaps(wire, internet))
    report(["wire", "subnet"], `${wire.text} overlaps ${INTERNET_CIDR}, the range that plays the internet`);

  checkInternet(spec, wire, internet, report);
  const nodes = nodeEntries(spec);
  if (nodes.length === 0) report([], "declares no nodes; add at least one entry under pairs or singles");
  checkNodes(spec, nodes, wire, report);
  const podCidrs = checkPodCidrs(nodes, wire, internet, report);
  const namespaces = checkNamespaces(spec, report);
  checkWorkloads(spec, nodes, namespaces, report);
  checkServices(spec, namespaces, wire, internet, podCidrs, report);
  checkPolicies(spec, namespaces, report);
  return problems;
}

type Report = (path: SpecPath, message: string) => void;

function checkReserved(c: Cidr, path: SpecPath, report: Report): void {
  for (const r of RESERVED) {
    const reserved = parseCidr(r.cidr);
    if (reserved && overlaps(c, reserved)) report(path, `${c.text} overlaps the ${r.what} range ${r.cidr}`);
  }
}

function checkInternet(spec: LabSpec, wire: Cidr, internet: Cidr, report: Report): void {
  const { address, wireAddress } = spec.internet;
  if (!cidrContains(internet, address)) {
    report(
      ["internet", "address"],
      `${address} is not inside ${INTERNET_CIDR}, the range that plays the internet`,
    );
  } else {
    const edge = edgeAddressProblem(internet, address);
    if (edge) report(["internet", "address"], edge);
  }
  if (!cidrContains(wire, wireAddress)) {
    report(
      ["internet", "wireAddress"],
      `${wireAddress} is not inside the wire subnet ${wire.text}; the nodes reach the internet through it`,
    );
  } else {
    const edge = edgeAddressProblem(wire, wireAddress);
    if (edge) report(["internet", "wireAddress"], edge);
  }
}

function checkNodes(spec: LabSpec, nodes: readonly NodeEntry[], wire: Cidr, report: Report): void {
  const names = new Map<string, Declared>();
  const ips = new Map<string, Declared>();
  ips.set(spec.internet.wireAddress, {
    path: ["internet", "wireAddress"],
    text: `the internet's wire address (internet.wireAddress, default: the last host of ${wire.text})`,
  });
  for (const n of nodes) {
    const namePath = [...n.path, "name"];
    const earlier = names.get(n.name);
    if (earlier) report(namePath, `node name "${n.name}" is already used at ${at(earlier)}`);
    else names.set(n.name, { path: namePath, text: n.name });
    if (n.hostsZtunnel && ztunnelPodName(n.name).length > 63)
      report(
        namePath,
        `"${n.name}" is too long for a node that runs a ztunnel: its pod ${ztunnelPodName(n.name)} must be a ` +
          `DNS label, so the node name may have at most ${MAX_ZTUNNEL_HOST_NAME} characters`,
      );

    const ipPath = [...n.path, "ip"];
    if (!cidrContains(wire, n.ip)) {
      report(ipPath, `${n.ip} is not inside the wire subnet ${wire.text} (wire.subnet)`);
    } else {
      const edge = edgeAddressProblem(wire, n.ip);
      if (edge) report(ipPath, edge);
    }
    const taken = ips.get(n.ip);
    if (taken)
      report(
        ipPath,
        taken.path[0] === "internet"
          ? `${n.ip} is ${taken.text}`
          : `address ${n.ip} is already used at ${at(taken)}; node addresses must be unique`,
      );
    else ips.set(n.ip, { path: ipPath, text: n.ip });
  }
}

function checkPodCidrs(
  nodes: readonly NodeEntry[],
  wire: Cidr,
  internet: Cidr,
  report: Report,
): { cidr: Cidr; path: SpecPath }[] {
  const seen: { cidr: Cidr; path: SpecPath }[] = [];
  for (const n of nodes) {
    const path = [...n.path, "podCIDR"];
    const cidr = parseCidr(n.podCIDR);
    if (!cidr) continue;
    checkReserved(cidr, path, report);
    if (overlaps(cidr, wire)) report(path, `${cidr.text} overlaps the wire subnet ${wire.text}`);
    if (overlaps(cidr, internet))
      report(path, `${cidr.text} overlaps ${INTERNET_CIDR}, the range that plays the internet`);
    const clash = seen.find((s) => overlaps(s.cidr, cidr));
    if (clash)
      report(
        path,
        `${cidr.text} overlaps ${clash.cidr.text} at ${fieldName(clash.path)}; pod CIDRs must be disjoint`,
      );
    seen.push({ cidr, path });
  }
  return seen;
}

function checkNamespaces(spec: LabSpec, report: Report): Set<string> {
  const seen = new Map<string, Declared>();
  spec.namespaces.forEach((ns, i) => {
    const path = ["namespaces", i, "name"];
    const earlier = seen.get(ns.name);
    if (earlier) report(path, `namespace "${ns.name}" is already declared at ${at(earlier)}`);
    else seen.set(ns.name, { path, text: ns.name });
  });
  // The lab creates the ztunnels' namespace itself when the spec does not list it.
  return new Set([...seen.keys(), ZTUNNEL_NAMESPACE]);
}

function namespaceProblem(name: string, namespaces: ReadonlySet<string>): string | undefined {
  if (namespaces.has(name)) return undefined;
  return `namespace "${name}" is not declared under namespaces (declared: ${[...namespaces].join(", ")})`;
}

function checkWorkloads(
  spec: LabSpec,
  nodes: readonly NodeEntry[],
  namespaces: ReadonlySet<string>,
  report: Report,
): void {
  const nodeNames = [...new Set(nodes.map((n) => n.name))];
  const ztunnels = new Set(nodes.filter((n) => n.hostsZtunnel).map((n) => ztunnelPodName(n.name)));
  const seen = new Map<string, Declared>();
  spec.workloads.forEach((w, i) => {
    const base = ["workloads", i];
    const nsProblem = namespaceProblem(w.namespace, namespaces);
    if (nsProblem) report([...base, "namespace"], nsProblem);
    if (!nodeNames.includes(w.node))
      report(
        [...base, "node"],
        `node "${w.node}" is not declared (nodes: ${nodeNames.join(", ") || "none"})`,
      );
    const key = `${w.namespace}/${w.name}`;
    const earlier = seen.get(key);
    if (earlier) report([...base, "name"], `workload ${key} is already declared at ${at(earlier)}`);
    else seen.set(key, { path: [...base, "name"], text: key });
    if (w.namespace === ZTUNNEL_NAMESPACE && ztunnels.has(w.name))
      report(
        [...base, "name"],
        `${key} is the name of a ztunnel pod the lab creates itself; choose another name`,
      );
  });
}

function checkServices(
  spec: LabSpec,
  namespaces: ReadonlySet<string>,
  wire: Cidr,
  internet: Cidr,
  podCidrs: readonly { cidr: Cidr; path: SpecPath }[],
  report: Report,
): void {
  const seen = new Map<string, Declared>();
  const ips = new Map<string, Declared>();
  spec.services.forEach((s, i) => {
    const base = ["services", i];
    const nsProblem = namespaceProblem(s.namespace, namespaces);
    if (nsProblem) report([...base, "namespace"], nsProblem);
    const key = `${s.namespace}/${s.name}`;
    const earlier = seen.get(key);
    if (earlier) report([...base, "name"], `service ${key} is already declared at ${at(earlier)}`);
    else seen.set(key, { path: [...base, "name"], text: key });

    const ipPath = [...base, "clusterIP"];
    const ip = parseCidr(`${s.clusterIP}/32`);
    if (ip) checkReserved(ip, ipPath, report);
    if (cidrContains(wire, s.clusterIP))
      report(ipPath, `${s.clusterIP} is inside the wire subnet ${wire.text}; cluster IPs are virtual`);
    if (cidrContains(internet, s.clusterIP))
      report(ipPath, `${s.clusterIP} is inside ${INTERNET_CIDR}, the range that plays the internet`);
    const pods = podCidrs.find((p) => cidrContains(p.cidr, s.clusterIP));
    if (pods)
      report(ipPath, `${s.clusterIP} is inside the pod CIDR ${pods.cidr.text} (${fieldName(pods.path)})`);
    const ipTaken = ips.get(s.clusterIP);
    if (ipTaken) report(ipPath, `cluster IP ${s.clusterIP} is already used by ${at(ipTaken)}`);
    else ips.set(s.clusterIP, { path: ipPath, text: s.clusterIP });

    const portNames = new Map<string, number>();
    s.ports.forEach((p, j) => {
      if (p.name === undefined) {
        if (s.ports.length > 1)
          report([...base, "ports", j], "needs a name: every port of a service with several ports is named");
        return;
      }
      const first = portNames.get(p.name);
      if (first !== undefined)
        report([...base, "ports", j, "name"], `port name "${p.name}" is already used by ports[${first}]`);
      else portNames.set(p.name, j);
    });
    const numbers = new Map<string, number>();
    s.ports.forEach((p, j) => {
      const key = `${p.port}/${p.protocol}`;
      const first = numbers.get(key);
      if (first !== undefined)
        report([...base, "ports", j, "port"], `${key} is already used by ports[${first}]`);
      else numbers.set(key, j);
    });
  });
}

function checkPolicies(spec: LabSpec, namespaces: ReadonlySet<string>, report: Report): void {
  const seen = new Map<string, Declared>();
  spec.policies.forEach((p, i) => {
    const base = ["policies", i];
    const nsProblem = namespaceProblem(p.namespace, namespaces);
    if (nsProblem) report([...base, "namespace"], nsProblem);
    const key = `${p.namespace}/${p.name}`;
    const earlier = seen.get(key);
    if (earlier) report([...base, "name"], `policy ${key} is already declared at ${at(earlier)}`);
    else seen.set(key, { path: [...base, "name"], text: key });
    const converted = convertPolicy(
      { namespace: p.namespace, name: p.name, spec: p.spec, annotations: p.annotations },
      { rootNamespace: ZTUNNEL_NAMESPACE },
    );
    if ("error" in converted) report([...base, "spec"], converted.error);
  });
}
