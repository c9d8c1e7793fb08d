import { selectorMatches } from "../policy.js";

/**
 * Selectors (label maps) of one kind of object, findable by the labels of a pod: each selector is
 * filed under every `key=value` it requires, so a pod's candidates come from its own labels
 * instead of from every selector of its namespace.
 */
export class SelectorIndex {
  /** namespace → label key → label value → selector keys requiring that label. */
  private readonly byNs = new Map<string, Map<string, Map<string, Set<string>>>>();
  private readonly selectors = new Map<string, { ns: string; selector: Readonly<Record<string, string>> }>();
  /** Per namespace, keys of empty selectors when those select everything. */
  private readonly everything = new Map<string, Set<string>>();

  /**
   * @param emptyMatchesAll an empty selector selects every pod of the namespace (an
   *   AuthorizationPolicy's `selector: {}`); otherwise it selects none (a Service's, whose
   *   endpoints are then managed elsewhere).
   */
  constructor(private readonly emptyMatchesAll: boolean) {}

  set(ns: string, key: string, selector: Readonly<Record<string, string>> | undefined): void {
    this.delete(key);
    if (!selector) return;
    if (Object.keys(selector).length === 0) {
      if (!this.emptyMatchesAll) return;
      let keys = this.everything.get(ns);
      if (!keys) this.everything.set(ns, (keys = new Set()));
      keys.add(key);
      this.selectors.set(key, { ns, selector });
      return;
    }
    this.selectors.set(key, { ns, selector });
    let labels = this.byNs.get(ns);
    if (!labels) this.byNs.set(ns, (labels = new Map()));
    for (const [k, v] of Object.entries(selector)) {
      let values = labels.get(k);
      if (!values) labels.set(k, (values = new Map()));
      let keys = values.get(v);
      if (!keys) values.set(v, (keys = new Set()));
      keys.add(key);
    }
  }

  delete(key: string): void {
    const old = this.selectors.get(key);
    if (!old) return;
    this.selectors.delete(key);
    this.everything.get(old.ns)?.delete(key);
    const labels = this.byNs.get(old.ns);
    for (const [k, v] of Object.entries(old.selector)) labels?.get(k)?.get(v)?.delete(key);
  }

  /** Keys of the selectors in `ns` that all of `labels` satisfy. */
  matching(ns: string, labels: Readonly<Record<string, string>>): string[] {
    // Runs for every pod of the cluster: no allocation unless something matches.
    const all = this.everything.get(ns);
    let out: string[] | undefined = all && all.size > 0 ? [...all] : undefined;
    const index = this.byNs.get(ns);
    if (index) {
      for (const k in labels) {
        const hits = index.get(k)?.get(labels[k] ?? "");
        if (!hits) continue;
        for (const key of hits) {
          if (out?.includes(key)) continue;
          const s = this.selectors.get(key)?.selector;
          if (s && selectorMatches(s, labels)) (out ??= []).push(key);
        }
      }
    }
    return out ?? NONE;
  }
}

const NONE: string[] = [];
