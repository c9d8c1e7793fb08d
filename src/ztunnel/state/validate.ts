import type { Port, Service, Workload } from "../../xds/types.js";

// Why a decoded workload or service cannot be held. Each reason becomes the NACK text for that
// resource, so it names the field.

const isPort = (n: number | undefined, allowZero: boolean): boolean =>
  n === undefined || (Number.isInteger(n) && n >= (allowZero ? 0 : 1) && n <= 65535);

function portsProblem(ports: readonly Port[], where: string): string | undefined {
  for (const [i, port] of ports.entries()) {
    if (!isPort(port.servicePort, false))
      return `${where}[${i}].servicePort ${port.servicePort} is not a port`;
    if (!isPort(port.targetPort, true)) return `${where}[${i}].targetPort ${port.targetPort} is not a port`;
  }
  return undefined;
}

const addressLengthProblem = (bytes: Uint8Array, where: string): string | undefined =>
  bytes.length === 4 || bytes.length === 16
    ? undefined
    : `${where} has ${bytes.length} bytes; an IP address has 4 or 16`;

/** The xDS name of a service: `<namespace>/<hostname>`, as workloads' `services` keys name it. */
export const serviceKeyOf = (service: Pick<Service, "namespace" | "hostname">): string =>
  `${service.namespace}/${service.hostname}`;

export function workloadProblem(workload: Workload, resourceName: string): string | undefined {
  if (workload.uid === "") return "workload without a uid";
  // Removals name resources; a name that is not the uid could not be matched to what it removes.
  if (resourceName !== workload.uid) return `resource name is not the workload's uid ${workload.uid}`;
  if (workload.namespace === "") return "workload without a namespace";
  for (const [i, address] of workload.addresses.entries()) {
    const problem = addressLengthProblem(address, `addresses[${i}]`);
    if (problem !== undefined) return problem;
  }
  for (const [key, list] of Object.entries(workload.services ?? {})) {
    const problem = portsProblem(list.ports, `services[${JSON.stringify(key)}].ports`);
    if (problem !== undefined) return problem;
  }
  return undefined;
}

export function serviceProblem(service: Service, resourceName: string): string | undefined {
  if (service.namespace === "") return "service without a namespace";
  if (service.hostname === "") return "service without a hostname";
  const key = serviceKeyOf(service);
  if (resourceName !== key) return `resource name is not the service's <namespace>/<hostname> ${key}`;
  for (const [i, address] of service.addresses.entries()) {
    const problem = addressLengthProblem(address.address, `addresses[${i}]`);
    if (problem !== undefined) return problem;
  }
  return portsProblem(service.ports, "ports");
}
