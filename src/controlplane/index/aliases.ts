/** A resource as the alias index sees it. */
export interface Aliased {
  readonly name: string;
  readonly aliases: readonly string[];
}

/**
 * Alias (`/<ip>`) → the names of the address resources holding it: what on-demand subscriptions
 * by address resolve through. Proxies that subscribe to every address never look up one, so the
 * map is made on the first lookup, from the resources held then, and kept up to date from there
 * on; until then adding and removing cost nothing (a first build of 100,000 workloads saves a
 * map of 100,000 entries it may never use).
 */
export class AliasIndex {
  /** alias → the resource name holding it; a set only when several do (one address, one workload is the rule). */
  private byAlias: Map<string, string | Set<string>> | undefined;

  /** @param held the address resources held, read once, on the first lookup */
  constructor(private readonly held: () => Iterable<Aliased>) {}

  add(name: string, aliases: readonly string[]): void {
    if (this.byAlias) addTo(this.byAlias, name, aliases);
  }

  delete(name: string, aliases: readonly string[]): void {
    const byAlias = this.byAlias;
    if (!byAlias) return;
    for (const a of aliases) {
      const holders = byAlias.get(a);
      if (holders === name) byAlias.delete(a);
      else if (typeof holders === "object") {
        holders.delete(name);
        if (holders.size === 1) byAlias.set(a, [...holders][0] ?? "");
        else if (holders.size === 0) byAlias.delete(a);
      }
    }
  }

  /** Names of the resources holding `alias`. */
  lookup(alias: string): string[] {
    if (!this.byAlias) {
      this.byAlias = new Map();
      for (const r of this.held()) addTo(this.byAlias, r.name, r.aliases);
    }
    const holders = this.byAlias.get(alias);
    return holders === undefined ? [] : typeof holders === "string" ? [holders] : [...holders];
  }
}

function addTo(byAlias: Map<string, string | Set<string>>, name: string, aliases: readonly string[]): void {
  for (const a of aliases) {
    const holders = byAlias.get(a);
    if (holders === undefined || holders === name) byAlias.set(a, name);
    else if (typeof holders === "string") byAlias.set(a, new Set([holders, name]));
    else holders.add(name);
  }
}
