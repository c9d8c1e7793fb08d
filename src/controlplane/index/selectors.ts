import { selectorMatches } from "../policy.js";

type Labels = Readonly<Record<string, string>>;

interface Filed<T> {
  readonly ns: string;
  readonly selector: Labels;
  readonly value: T;
  /** Where it is filed: its first label, or undefined for an empty selector (filed per namespace). */
  readonly label: readonly [string, string] | undefined;
  /** The selector requires only the label it is filed under: a pod found through it matches. */
  readonly single: boolean;
}

/**
 * Selectors (label maps) of one kind of object, each with the value a match yields, findable by
 * the labels of a pod: a selector is filed under its first `key=value`, so a pod's candidates come
 * from its own labels instead of from every selector of its namespace, and reaches each candidate
 * once (no deduplication); only selectors of several labels are then checked whole.
 */
export class SelectorIndex<T> {
  /** namespace → label key → label value → selectors filed under that label (few: an array). */
  private readonly byNs = new Map<string, Map<string, Map<string, Filed<T>[]>>>();
  private readonly byKey = new Map<string, Filed<T>>();
  /** Per namespace, empty selectors when those select everything. */
  private readonly everything = new Map<string, Set<Filed<T>>>();

  /**
   * @param emptyMatchesAll an empty selector selects every pod of the namespace (an
   *   AuthorizationPolicy's `selector: {}`); otherwise it selects none (a Service's, whose
   *   endpoints are then managed elsewhere).
   */
  constructor(private readonly emptyMatchesAll: boolean) {}

  /** File `selector` of the object `key` in `ns`, yielding `value` (undefined selector: none). */
  set(ns: string, key: string, selector: Labels | undefined, value: T): void {
    this.delete(key);
    if (!selector) return;
    let first: [string, string] | undefined;
    let count = 0;
    for (const k in selector) {
      if (count++ === 0) first = [k, selector[k] ?? ""];
    }
    if (first === undefined) {
      if (!this.emptyMatchesAll) return;
      const filed: Filed<T> = { ns, selector, value, label: undefined, single: false };
      let set = this.everything.get(ns);
      if (!set) this.everything.set(ns, (set = new Set()));
      set.add(filed);
      this.byKey.set(key, filed);
      return;
    }
    const filed: Filed<T> = { ns, selector, value, label: first, single: count === 1 };
    let labels = this.byNs.get(ns);
    if (!labels) this.byNs.set(ns, (labels = new Map()));
    let values = labels.get(first[0]);
    if (!values) labels.set(first[0], (values = new Map()));
    const filedHere = values.get(first[1]);
    if (filedHere) filedHere.push(filed);
    else values.set(first[1], [filed]);
    this.byKey.set(key, filed);
  }

  delete(key: string): void {
    const filed = this.byKey.get(key);
    if (!filed) return;
    this.byKey.delete(key);
    if (filed.label === undefined) {
      this.everything.get(filed.ns)?.delete(filed);
      return;
    }
    const [k, v] = filed.label;
    const values = this.byNs.get(filed.ns)?.get(k);
    const filedHere = values?.get(v);
    const i = filedHere?.indexOf(filed) ?? -1;
    if (i >= 0) filedHere?.splice(i, 1);
    if (filedHere?.length === 0) values?.delete(v);
  }

  /** The values of the selectors in `ns` that all of `labels` satisfy. */
  matching(ns: string, labels: Labels): readonly T[] {
    // Runs for every pod of the cluster: no allocation unless something matches.
    let out: T[] | undefined;
    const all = this.everything.get(ns);
    if (all) for (const f of all) (out ??= []).push(f.value);
    const index = this.byNs.get(ns);
    if (index) {
      for (const k in labels) {
        const hits = index.get(k)?.get(labels[k] ?? "");
        if (!hits) continue;
        for (const f of hits) if (f.single || selectorMatches(f.selector, labels)) (out ??= []).push(f.value);
      }
    }
    return out ?? NONE;
  }
}

const NONE: readonly never[] = [];
