import { MAX_MARK, SocketOptions } from "./constants.js";
import type { SocketOption } from "./constants.js";
import type { IpFamily } from "./sockaddr.js";

// Which socket options a listener or an upstream connection gets, decided from its options alone.

export interface OptionSetting {
  readonly option: SocketOption;
  readonly value: number;
}

export class SocketOptionsError extends Error {
  override readonly name = "SocketOptionsError";
}

export function assertMark(mark: number): void {
  if (!Number.isInteger(mark) || mark < 0 || mark > MAX_MARK) {
    throw new SocketOptionsError(`not a socket mark (u32): ${mark}`);
  }
}

const transparentOption = (family: IpFamily): SocketOption =>
  family === 4 ? SocketOptions.transparent4 : SocketOptions.transparent6;
const freebindOption = (family: IpFamily): SocketOption =>
  family === 4 ? SocketOptions.freebind4 : SocketOptions.freebind6;

export interface ListenerSettingsInput {
  readonly transparent?: boolean;
  readonly freebind?: boolean;
  readonly mark?: number;
  readonly reusePort?: boolean;
}

/**
 * SO_REUSEADDR always (as libuv does for node's own servers: a restarted proxy must rebind while
 * old connections sit in TIME_WAIT), then what was asked. The mark is set before listen(2) so
 * every accepted socket inherits it.
 */
export function listenerSettings(family: IpFamily, input: ListenerSettingsInput): OptionSetting[] {
  const settings: OptionSetting[] = [{ option: SocketOptions.reuseAddr, value: 1 }];
  if (input.reusePort) settings.push({ option: SocketOptions.reusePort, value: 1 });
  if (input.transparent) settings.push({ option: transparentOption(family), value: 1 });
  if (input.freebind) settings.push({ option: freebindOption(family), value: 1 });
  if (input.mark !== undefined) {
    assertMark(input.mark);
    settings.push({ option: SocketOptions.mark, value: input.mark });
  }
  return settings;
}

/**
 * An upstream socket that binds a foreign source address needs IP_TRANSPARENT (to send from an
 * address the namespace does not own: the kernel then routes with FLOWI_FLAG_ANYSRC) and
 * IP_FREEBIND (to bind it at all even where transparency alone would not cover the address).
 */
export function upstreamSettings(
  family: IpFamily,
  input: { spoof: boolean; mark?: number },
): OptionSetting[] {
  const settings: OptionSetting[] = [];
  if (input.mark !== undefined) {
    assertMark(input.mark);
    settings.push({ option: SocketOptions.mark, value: input.mark });
  }
  if (input.spoof) {
    settings.push({ option: transparentOption(family), value: 1 });
    settings.push({ option: freebindOption(family), value: 1 });
  }
  return settings;
}
