/**
 * Keys (addresses) that several values may claim at once, each answering to the best claimant.
 *
 * Two workloads of one network can legitimately hold the same IP: host-network pods share their
 * node's, and a recreated pod can get its predecessor's IP before the old one's removal arrives.
 * Refusing the second would NACK valid config (and the client only gets a rejected resource back
 * after a reconnect), so every claim is kept and lookups answer with the claimant of the highest
 * `rank`; among equals the one that claimed the key last. An update of a claimant keeps its place
 * in that order, so a status change of an old claimant does not win the key back. Removing the
 * winner hands the key to the next best claimant.
 *
 * Lookups are one Map read; the list of claimants exists only for contested keys.
 */
export class ClaimIndex<V> {
  private readonly winners = new Map<string, V>();
  /** Contested keys only: every claimant (winner included), in order of first claim. */
  private readonly contested = new Map<string, V[]>();

  constructor(
    private readonly idOf: (value: V) => string,
    private readonly rank: (value: V) => number,
  ) {}

  get(key: string): V | undefined {
    return this.winners.get(key);
  }

  /** Claim `key` for `value`, replacing the claim of a value with the same id. */
  set(key: string, value: V): void {
    const id = this.idOf(value);
    const claimants = this.contested.get(key);
    if (claimants !== undefined) {
      const at = claimants.findIndex((c) => this.idOf(c) === id);
      if (at >= 0) claimants[at] = value;
      else claimants.push(value);
      this.winners.set(key, this.best(claimants));
      return;
    }
    const current = this.winners.get(key);
    if (current === undefined || this.idOf(current) === id) {
      this.winners.set(key, value);
      return;
    }
    const both = [current, value];
    this.contested.set(key, both);
    this.winners.set(key, this.best(both));
  }

  /** Drop the claim of the value with `id` on `key`, if it has one. */
  delete(key: string, id: string): void {
    const claimants = this.contested.get(key);
    if (claimants === undefined) {
      const current = this.winners.get(key);
      if (current !== undefined && this.idOf(current) === id) this.winners.delete(key);
      return;
    }
    const at = claimants.findIndex((c) => this.idOf(c) === id);
    if (at < 0) return;
    claimants.splice(at, 1);
    if (claimants.length === 1) this.contested.delete(key);
    this.winners.set(key, this.best(claimants));
  }

  /** Keys more than one value claims, with the ids of their claimants (winner first). */
  conflicts(): { key: string; ids: string[] }[] {
    return [...this.contested].map(([key, claimants]) => {
      const winner = this.winners.get(key) as V;
      const ids = claimants.filter((c) => c !== winner).map(this.idOf);
      return { key, ids: [this.idOf(winner), ...ids] };
    });
  }

  get size(): number {
    return this.winners.size;
  }

  private best(claimants: readonly V[]): V {
    let best = claimants[claimants.length - 1] as V;
    let bestRank = this.rank(best);
    for (let i = claimants.length - 2; i >= 0; i--) {
      const c = claimants[i] as V;
      const r = this.rank(c);
      if (r > bestRank) {
        best = c;
        bestRank = r;
      }
    }
    return best;
  }
}
