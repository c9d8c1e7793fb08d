import { closeFd, interfaceIndex, openTcpSocket, setIntOption } from "./libc.js";
import { jsThreadNetns } from "./netns.js";
import { addressFamily, parseIpAddress } from "./sockaddr.js";
import type { IpAddress } from "./sockaddr.js";
import type { OptionSetting } from "./settings.js";

// The one place sockets are born: inside the requested namespace, where IPv6 zone names are
// resolved too (an interface index belongs to the namespace the socket will live in).

export interface NewSocket {
  readonly fd: number;
  /** The address that decides the socket's family (a listener's, or a connection's peer). */
  readonly address: IpAddress;
  /** A second address parsed in the same namespace (a connection's local address). */
  readonly other: IpAddress | undefined;
}

export function createTcpSocket(
  address: string,
  other: string | undefined,
  netnsPath: string | undefined,
  target: string,
): NewSocket {
  return jsThreadNetns.run(
    netnsPath,
    () => {
      const parsed = parseIpAddress(address, interfaceIndex);
      const parsedOther = other === undefined ? undefined : parseIpAddress(other, interfaceIndex);
      return { fd: openTcpSocket(addressFamily(parsed), target), address: parsed, other: parsedOther };
    },
    (made) => closeFd(made.fd),
  );
}

export function applySettings(fd: number, settings: readonly OptionSetting[], target: string): void {
  for (const { option, value } of settings) setIntOption(fd, option, value, target);
}
