import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  DEFAULT_TRUST_DOMAIN,
  formatSpiffeId,
  isSpiffeError,
  parseSpiffeId,
} from "../../src/identity/spiffe.js";

function errorOf(text: string): string {
  const parsed = parseSpiffeId(text);
  assert.ok(isSpiffeError(parsed), `expected ${text} to be refused, got ${JSON.stringify(parsed)}`);
  return parsed.error;
}

describe("parseSpiffeId", () => {
  it("parses a workload identity", () => {
    assert.deepEqual(parseSpiffeId("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"), {
      trustDomain: "cluster.local",
      namespace: "default",
      serviceAccount: "bookinfo-productpage",
    });
  });

  it("accepts the characters each part allows", () => {
    assert.deepEqual(parseSpiffeId("spiffe://my_td-1.example/ns/a-1/sa/sa.with.dots"), {
      trustDomain: "my_td-1.example",
      namespace: "a-1",
      serviceAccount: "sa.with.dots",
    });
  });

  const refused: ReadonlyArray<[string, string, RegExp]> = [
    ["another scheme", "https://cluster.local/ns/a/sa/b", /does not start with "spiffe:\/\/"/],
    ["an upper-case scheme", "SPIFFE://cluster.local/ns/a/sa/b", /does not start with/],
    [
      "no path",
      "spiffe://cluster.local",
      /path must be exactly \/ns\/<namespace>\/sa\/<service-account>, found ""/,
    ],
    ["a trust-domain ID", "spiffe://cluster.local/", /path must be exactly/],
    ["a short path", "spiffe://cluster.local/ns/a", /found "\/ns\/a"/],
    ["an extra segment", "spiffe://cluster.local/ns/a/sa/b/c", /found "\/ns\/a\/sa\/b\/c"/],
    ["a trailing slash", "spiffe://cluster.local/ns/a/sa/b/", /path must be exactly/],
    ["swapped keys", "spiffe://cluster.local/sa/b/ns/a", /path must be exactly/],
    ["an empty namespace", "spiffe://cluster.local/ns//sa/b", /path must be exactly/],
    ["a double slash", "spiffe://cluster.local//ns/a/sa/b", /path must be exactly/],
    ["a query", "spiffe://cluster.local/ns/a/sa/b?x=1", /has a query/],
    ["a fragment", "spiffe://cluster.local/ns/a/sa/b#x", /has a fragment/],
    ["percent-encoding", "spiffe://cluster.local/ns/a/sa/b%41", /percent-encoded/],
    ["an empty trust domain", "spiffe:///ns/a/sa/b", /trust domain is empty/],
    ["a port", "spiffe://cluster.local:8080/ns/a/sa/b", /may contain only lower-case letters/],
    ["user info", "spiffe://u@cluster.local/ns/a/sa/b", /may contain only lower-case letters/],
    ["an upper-case trust domain", "spiffe://Cluster.local/ns/a/sa/b", /may contain only lower-case/],
    [
      "an upper-case namespace",
      "spiffe://cluster.local/ns/Default/sa/b",
      /namespace "Default" is not a valid/,
    ],
    ["a dotted namespace", "spiffe://cluster.local/ns/a.b/sa/b", /namespace "a.b" is not a valid/],
    [
      "an invalid service account",
      "spiffe://cluster.local/ns/a/sa/b_c",
      /service account "b_c" is not a valid/,
    ],
    ["an over-long ID", `spiffe://cluster.local/ns/a/sa/${"b".repeat(2100)}`, /longer than 2048/],
    ["the empty string", "", /does not start with/],
  ];
  for (const [what, text, message] of refused) {
    it(`refuses ${what}`, () => assert.match(errorOf(text), message));
  }

  it("quotes the refused text in the error", () => {
    assert.match(errorOf("spiffe://cluster.local/ns/a"), /^"spiffe:\/\/cluster\.local\/ns\/a": /);
  });
});

describe("formatSpiffeId", () => {
  it("formats the parts and round-trips", () => {
    const id = { trustDomain: DEFAULT_TRUST_DOMAIN, namespace: "default", serviceAccount: "sleep" };
    const text = formatSpiffeId(id);
    assert.equal(text, "spiffe://cluster.local/ns/default/sa/sleep");
    assert.deepEqual(parseSpiffeId(text), id);
  });

  it("refuses parts that would change the ID's meaning", () => {
    assert.throws(
      () => formatSpiffeId({ trustDomain: "cluster.local", namespace: "a/sa/evil", serviceAccount: "b" }),
      /cannot format a SPIFFE ID: .*path must be exactly/,
    );
    assert.throws(
      () => formatSpiffeId({ trustDomain: "cluster.local", namespace: "a", serviceAccount: "" }),
      TypeError,
    );
  });
});
