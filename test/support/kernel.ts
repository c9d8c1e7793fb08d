import { IPSET_NAME } from "../../src/netplan/constants.js";
import type { TestNetns } from "./netns.js";

/** The addresses in a namespace's ipset of captured pods, in the order `ipset save` lists them. */
export function ipsetMembers(ns: TestNetns, set = IPSET_NAME): string[] {
  return ns
    .sh("ipset", ["save", set])
    .split("\n")
    .filter((l) => l.startsWith("add "))
    .map((l) => l.split(" ")[2] ?? "");
}
