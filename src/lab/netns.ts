import { mkdir } from "node:fs/promises";
import { parseCidr } from "../configfile/net.js";
import { writeFileAtomic } from "../fsutil/atomic.js";
import { Runner } from "../netapply/exec.js";
import type { NodeRole } from "../topology/types.js";
import {
  bridgePortName,
  INTERNET_BRIDGE_PORT,
  INTERNET_NIC,
  internetNetns,
  isLabNetns,
  labStatePaths,
  nodeNetns,
  WIRE_BRIDGE,
  wireNetns,
} from "./names.js";
import { INTERNET_CIDR, labNodes } from "./spec.js";
import type { LabSpec } from "./spec.js";

// The lab's "hardware": one namespace per node, cabled by veth pairs into a bridge that lives in a
// namespace of its own (the wire), plus a namespace playing the internet on the same wire. The
// root namespace is never touched: every link is created inside the wire namespace with its far
// end placed straight into the node's namespace, and every address and route is set with `-n`.

export interface LabNetworkNode {
  readonly name: string;
  readonly role: NodeRole;
  readonly netns: string;
  /** The node's NIC, inside `netns`. */
  readonly nic: string;
  readonly ip: string;
  /** `ip/prefix` on the NIC. */
  readonly address: string;
  /** The cable's other end, a port of the bridge in the wire namespace. */
  readonly bridgePort: string;
}

export interface LabNetwork {
  readonly lab: string;
  readonly wire: { readonly netns: string; readonly bridge: string; readonly subnet: string };
  readonly internet: {
    readonly netns: string;
    readonly nic: string;
    readonly bridgePort: string;
    /** `ip/prefix` addresses on its NIC: the internet address, then the wire address. */
    readonly addresses: readonly string[];
    readonly wireAddress: string;
  };
  readonly nodes: readonly LabNetworkNode[];
  /** Added in every node namespace: the way to the internet, via its wire address. */
  readonly internetRoute: { readonly to: string; readonly via: string };
}

/** A step of building or removing the network that failed, with the namespace it was about. */
export class LabNetworkError extends Error {
  constructor(
    message: string,
    readonly lab: string,
    readonly netns?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "LabNetworkError";
  }
}

/** What `createLabNetwork` builds for a spec. Pure. */
export function planLabNetwork(spec: LabSpec): LabNetwork {
  const wire = parseCidr(spec.wire.subnet);
  const internet = parseCidr(INTERNET_CIDR);
  if (!wire || !internet) throw new Error(`lab "${spec.name}": the spec's wire subnet is not a CIDR`);
  return {
    lab: spec.name,
    wire: { netns: wireNetns(spec.name), bridge: WIRE_BRIDGE, subnet: wire.text },
    internet: {
      netns: internetNetns(spec.name),
      nic: INTERNET_NIC,
      bridgePort: INTERNET_BRIDGE_PORT,
      addresses: [
        `${spec.internet.address}/${internet.prefix}`,
        `${spec.internet.wireAddress}/${wire.prefix}`,
      ],
      wireAddress: spec.internet.wireAddress,
    },
    nodes: labNodes(spec).map((n, i) => ({
      name: n.name,
      role: n.role,
      netns: nodeNetns(spec.name, n.name),
      nic: spec.nic,
      ip: n.ip,
      address: `${n.ip}/${wire.prefix}`,
      bridgePort: bridgePortName(i),
    })),
    internetRoute: { to: internet.text, via: spec.internet.wireAddress },
  };
}

/**
 * Build the lab's network and record it in `<stateDir>/network.json`. Refuses when any namespace
 * of the lab already exists; on failure removes whatever it made, so a failed `up` leaves nothing.
 */
export async function createLabNetwork(
  spec: LabSpec,
  stateDir: string,
  runner: Runner = new Runner(),
): Promise<LabNetwork> {
  const plan = planLabNetwork(spec);
  const existing = await listLabNamespaces(spec.name, runner);
  if (existing.length > 0)
    throw new LabNetworkError(
      `lab "${spec.name}" already has network namespaces (${existing.join(", ")}); ` +
        `run "offmesh lab down --name ${spec.name}" first`,
      spec.name,
    );
  try {
    await build(plan, runner);
    const file = labStatePaths(stateDir).network;
    await mkdir(stateDir, { recursive: true });
    await writeFileAtomic(file, `${JSON.stringify(plan, null, 2)}\n`, 0o644);
  } catch (err) {
    await destroyLabNetwork(spec.name, runner).catch(() => undefined);
    if (err instanceof LabNetworkError) throw err;
    throw new LabNetworkError(
      `lab "${spec.name}": building the network failed: ${(err as Error).message}`,
      spec.name,
      undefined,
      { cause: err },
    );
  }
  return plan;
}

async function build(plan: LabNetwork, runner: Runner): Promise<void> {
  const ip = async (netns: string, what: string, args: readonly string[]): Promise<void> => {
    try {
      await runner.run("ip", ["-n", netns, ...args]);
    } catch (err) {
      throw new LabNetworkError(
        `lab "${plan.lab}": ${what} in ${netns} failed: ${(err as Error).message}`,
        plan.lab,
        netns,
        { cause: err },
      );
    }
  };
  const addNetns = async (netns: string): Promise<void> => {
    try {
      await runner.run("ip", ["netns", "add", netns]);
    } catch (err) {
      throw new LabNetworkError(
        `lab "${plan.lab}": creating namespace ${netns} failed: ${(err as Error).message}`,
        plan.lab,
        netns,
        { cause: err },
      );
    }
    await ip(netns, "bringing lo up", ["link", "set", "lo", "up"]);
  };
  /** A veth from the bridge to `netns`, its far end named `nic`. */
  const cable = async (port: string, netns: string, nic: string): Promise<void> => {
    const wire = plan.wire.netns;
    await ip(wire, `creating the cable ${port}–${netns}`, [
      "link",
      "add",
      port,
      "type",
      "veth",
      "peer",
      "name",
      nic,
      "netns",
      netns,
    ]);
    await ip(wire, `plugging ${port} into ${plan.wire.bridge}`, [
      "link",
      "set",
      port,
      "master",
      plan.wire.bridge,
    ]);
    await ip(wire, `bringing ${port} up`, ["link", "set", port, "up"]);
  };

  await addNetns(plan.wire.netns);
  // No STP: ports forward as soon as they are up, with no learning delay.
  await ip(plan.wire.netns, "creating the bridge", ["link", "add", plan.wire.bridge, "type", "bridge"]);
  await ip(plan.wire.netns, "bringing the bridge up", ["link", "set", plan.wire.bridge, "up"]);

  const inet = plan.internet;
  await addNetns(inet.netns);
  await cable(inet.bridgePort, inet.netns, inet.nic);
  for (const address of inet.addresses)
    await ip(inet.netns, `adding ${address}`, ["addr", "add", address, "dev", inet.nic]);
  await ip(inet.netns, `bringing ${inet.nic} up`, ["link", "set", inet.nic, "up"]);

  for (const node of plan.nodes) {
    await addNetns(node.netns);
    await cable(node.bridgePort, node.netns, node.nic);
    await ip(node.netns, `adding ${node.address}`, ["addr", "add", node.address, "dev", node.nic]);
    await ip(node.netns, `bringing ${node.nic} up`, ["link", "set", node.nic, "up"]);
    await ip(node.netns, `routing ${plan.internetRoute.to}`, [
      "route",
      "add",
      plan.internetRoute.to,
      "via",
      plan.internetRoute.via,
      "dev",
      node.nic,
    ]);
    // A node routes its pods' traffic, as a Kubernetes node does.
    try {
      await Runner.forNamedNetns(node.netns).run("sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"]);
    } catch (err) {
      throw new LabNetworkError(
        `lab "${plan.lab}": enabling forwarding in ${node.netns} failed: ${(err as Error).message}`,
        plan.lab,
        node.netns,
        { cause: err },
      );
    }
  }
}

/** The network namespaces of lab `lab` that exist now (pods' included), sorted. */
export async function listLabNamespaces(lab: string, runner: Runner = new Runner()): Promise<string[]> {
  const result = await runner.run("ip", ["-json", "netns", "list"]);
  return parseNetnsList(result.stdout)
    .filter((name) => isLabNetns(lab, name))
    .sort();
}

/** Names from `ip -json netns list` (which prints nothing at all when there are none). */
export function parseNetnsList(stdout: string): string[] {
  if (stdout.trim() === "") return [];
  const parsed: unknown = JSON.parse(stdout);
  if (!Array.isArray(parsed))
    throw new Error(`ip -json netns list: expected a list, got ${stdout.slice(0, 80)}`);
  return parsed
    .map((e: unknown) =>
      e && typeof e === "object" && "name" in e ? (e as { name: unknown }).name : undefined,
    )
    .filter((n): n is string => typeof n === "string");
}

/**
 * Delete every namespace of lab `lab`: pods first, then nodes, the internet and the wire. Works on
 * a lab built halfway and on one already gone; returns the names it removed.
 */
export async function destroyLabNetwork(lab: string, runner: Runner = new Runner()): Promise<string[]> {
  const rank = (name: string): number =>
    name.startsWith(`${lab}-p-`) ? 0 : name.startsWith(`${lab}-n-`) ? 1 : 2;
  const names = (await listLabNamespaces(lab, runner)).sort((a, b) => rank(a) - rank(b));
  for (const name of names) await runner.run("ip", ["netns", "del", name], { allowFail: true });
  const left = await listLabNamespaces(lab, runner);
  if (left.length > 0)
    throw new LabNetworkError(`lab "${lab}": could not delete namespaces ${left.join(", ")}`, lab, left[0]);
  return names;
}
