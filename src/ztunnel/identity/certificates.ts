// The ztunnel's workload certificates: one per identity it serves, fetched from the CA on first
// use, cached, and renewed in the background at half life while the current one keeps serving.
// Decisions (what to validate, when to renew, how long to back off) live in issued.ts and
// schedule.ts; this class holds the state and the timers.
import { EventEmitter } from "node:events";
import { status } from "@grpc/grpc-js";
import { pino } from "pino";
import type { Logger } from "pino";
import { trustDomainProblem } from "../../identity/spiffe.js";
import type { CertificateSigner } from "./ca-client.js";
import { parseCertificatePems } from "./cert-parse.js";
import type { ParsedCertificate } from "./cert-parse.js";
import { createKeyAndCsr } from "./csr.js";
import { dumpCertificate } from "./dump.js";
import type { CertificatesDump } from "./dump.js";
import {
  CertificateIdentityError,
  CertificateManagerClosedError,
  CertificateRequestError,
  CertificateResponseError,
} from "./errors.js";
import type { CertificateError } from "./errors.js";
import { checkIssuedChain } from "./issued.js";
import { checkTrustDomain } from "./peer.js";
import { backoffDelayMs, backoffPolicy, MAX_TIMER_DELAY_MS, refreshAtMs } from "./schedule.js";
import type { BackoffPolicy } from "./schedule.js";

/** Upstream's default workload certificate lifetime. */
export const DEFAULT_LIFETIME_SECONDS = 24 * 60 * 60;

export interface WorkloadCertificate {
  readonly identity: string;
  /** Leaf first, then any intermediates; without the root. */
  readonly certChainPem: string;
  /** PKCS#8 PEM. */
  readonly keyPem: string;
  /** The trusted roots (the manager's `roots`), to verify peers with. */
  readonly rootsPem: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** The leaf's serial number, upper-case hex. */
  readonly serial: string;
}

export interface CertificateManagerOptions {
  readonly signer: CertificateSigner;
  readonly trustDomain: string;
  /** PEM of the trusted root(s): a CA answer must chain to one of them. */
  readonly roots: string;
  /** Lifetime asked of the CA. Default 86400 (24 h). */
  readonly lifetimeSeconds?: number;
  /** Milliseconds since the epoch. Default Date.now. */
  readonly now?: () => number;
  /** Retry delays of background renewal. Default 1 s doubling to 60 s, jittered. */
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number };
  readonly log?: Logger;
}

/** Why a request to the CA starts. */
export type FetchReason = "initial" | "renewal" | "retry" | "expired";

export interface CertificateManagerEvents {
  /** A certificate replaced an earlier one for the identity: TLS contexts should be rebuilt. */
  renewed: [identity: string, cert: WorkloadCertificate];
  /** A request to the CA starts. */
  fetching: [identity: string, reason: FetchReason];
  /** A request failed; `retryInMs` when a background retry is scheduled. */
  fetchFailed: [identity: string, error: CertificateError, retryInMs: number | undefined];
}

interface Held {
  readonly cert: WorkloadCertificate;
  /** Leaf and intermediates, parsed. */
  readonly chain: readonly ParsedCertificate[];
  readonly refreshAt: number;
}

interface Entry {
  readonly identity: string;
  held?: Held;
  inflight?: Promise<WorkloadCertificate>;
  timer?: NodeJS.Timeout;
  /** Consecutive failed background attempts since the last success. */
  failures: number;
  lastError?: CertificateError;
}

export class CertificateManager extends EventEmitter<CertificateManagerEvents> {
  private readonly signer: CertificateSigner;
  private readonly trustDomain: string;
  private readonly roots: readonly ParsedCertificate[];
  private readonly rootsPem: string;
  private readonly lifetimeSeconds: number;
  private readonly now: () => number;
  private readonly backoff: BackoffPolicy;
  private readonly log: Logger;
  private readonly entries = new Map<string, Entry>();
  private closed = false;

  constructor(opts: CertificateManagerOptions) {
    super();
    const tdProblem = trustDomainProblem(opts.trustDomain);
    if (tdProblem) throw new RangeError(`certificate manager: ${tdProblem}`);
    const lifetime = opts.lifetimeSeconds ?? DEFAULT_LIFETIME_SECONDS;
    if (!Number.isSafeInteger(lifetime) || lifetime <= 0) {
      throw new RangeError(
        `certificate manager: lifetimeSeconds must be a positive integer, not ${lifetime}`,
      );
    }
    try {
      this.roots = parseCertificatePems(opts.roots);
    } catch (e) {
      throw new RangeError(`certificate manager: roots ${(e as Error).message}`, { cause: e });
    }
    this.signer = opts.signer;
    this.trustDomain = opts.trustDomain;
    this.rootsPem = this.roots.map((r) => r.pem).join("");
    this.lifetimeSeconds = lifetime;
    this.now = opts.now ?? Date.now;
    this.backoff = backoffPolicy(opts.backoff);
    this.log = opts.log ?? pino({ level: "silent" });
  }

  /**
   * The certificate for `identity`: the cached one while it is unexpired, else a new one from the
   * CA (concurrent callers share one request). Rejects with a CertificateIdentityError for an
   * identity outside the trust domain, a CertificateRequestError when the CA refuses or cannot be
   * reached, a CertificateResponseError when its answer is unusable.
   */
  get(identity: string): Promise<WorkloadCertificate> {
    if (this.closed) return Promise.reject(new CertificateManagerClosedError(identity));
    const problem = checkTrustDomain(identity, this.trustDomain);
    if (problem) return Promise.reject(new CertificateIdentityError(identity, problem));
    let entry = this.entries.get(identity);
    if (!entry) {
      entry = { identity, failures: 0 };
      this.entries.set(identity, entry);
    }
    const held = entry.held;
    if (held && this.now() < held.cert.notAfter.getTime()) return Promise.resolve(held.cert);
    return this.fetch(entry, held ? "expired" : "initial");
  }

  /** Drop the certificate of an identity no longer served; stops its renewal. False if not held. */
  forget(identity: string): boolean {
    const entry = this.entries.get(identity);
    if (!entry) return false;
    clearTimer(entry);
    this.entries.delete(identity);
    this.log.debug({ identity }, "workload certificate forgotten");
    return true;
  }

  /** Identities with a certificate, a request in flight or a failure on record. */
  identities(): string[] {
    return [...this.entries.keys()].sort();
  }

  /** The `certificates` section of the admin config dump, sorted by identity. */
  dump(): CertificatesDump[] {
    const now = this.now();
    return [...this.entries.values()]
      .sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0))
      .map((entry): CertificatesDump => {
        const held = entry.held;
        if (held && now < held.cert.notAfter.getTime()) {
          return {
            identity: entry.identity,
            state: "Available",
            certChain: held.chain.map(dumpCertificate),
            rootCerts: this.roots.map(dumpCertificate),
          };
        }
        if (entry.inflight)
          return { identity: entry.identity, state: "Pending", certChain: [], rootCerts: [] };
        const error =
          entry.lastError?.message ??
          (held ? `the certificate expired at ${held.cert.notAfter.toISOString()}` : undefined);
        return {
          identity: entry.identity,
          state: "Unavailable",
          ...(error === undefined ? {} : { error }),
          certChain: [],
          rootCerts: [],
        };
      });
  }

  /** Stop every timer; requests in flight finish but are not kept, and `get` rejects from now on. */
  close(): void {
    this.closed = true;
    for (const entry of this.entries.values()) clearTimer(entry);
    this.entries.clear();
  }

  private fetch(entry: Entry, reason: FetchReason): Promise<WorkloadCertificate> {
    if (entry.inflight) return entry.inflight;
    // This request supersedes a scheduled renewal or retry.
    clearTimer(entry);
    this.notify(() => this.emit("fetching", entry.identity, reason));
    const attempt: Promise<WorkloadCertificate> = this.issue(entry.identity).then(
      (held) => this.onIssued(entry, attempt, held),
      (err: unknown) => {
        throw this.onFailed(entry, attempt, err);
      },
    );
    entry.inflight = attempt;
    return attempt;
  }

  private async issue(identity: string): Promise<Held> {
    let keyPem: string;
    let csrPem: string;
    try {
      ({ keyPem, csrPem } = await createKeyAndCsr(identity));
    } catch (e) {
      throw new CertificateRequestError(
        identity,
        status.INTERNAL,
        `cannot create a key and CSR: ${message(e)}`,
        e,
      );
    }
    const chain = await this.signer({ csrPem, identity, lifetimeSeconds: this.lifetimeSeconds });
    const receivedAt = this.now();
    const checked = checkIssuedChain({ identity, keyPem, chain, roots: this.roots, now: receivedAt });
    if ("error" in checked) throw new CertificateResponseError(identity, checked.error);
    const { leaf } = checked;
    const certChain = [leaf, ...checked.intermediates];
    return {
      cert: {
        identity,
        certChainPem: certChain.map((c) => c.pem).join(""),
        keyPem,
        rootsPem: this.rootsPem,
        notBefore: leaf.notBefore,
        notAfter: leaf.notAfter,
        serial: leaf.serialHex,
      },
      chain: certChain,
      refreshAt: refreshAtMs(leaf.notBefore, leaf.notAfter, receivedAt),
    };
  }

  private onIssued(entry: Entry, attempt: Promise<WorkloadCertificate>, held: Held): WorkloadCertificate {
    if (entry.inflight === attempt) entry.inflight = undefined;
    // Forgotten or closed meanwhile: the callers waiting get it, the manager keeps nothing.
    if (!this.isLive(entry)) return held.cert;
    const previous = entry.held;
    entry.held = held;
    entry.failures = 0;
    entry.lastError = undefined;
    this.scheduleAt(entry, held.refreshAt, "renewal");
    this.log.info(
      {
        identity: entry.identity,
        serial: held.cert.serial,
        notAfter: held.cert.notAfter.toISOString(),
        refreshAt: new Date(held.refreshAt).toISOString(),
      },
      previous ? "workload certificate renewed" : "workload certificate issued",
    );
    if (previous) this.notify(() => this.emit("renewed", entry.identity, held.cert));
    return held.cert;
  }

  private onFailed(entry: Entry, attempt: Promise<WorkloadCertificate>, err: unknown): CertificateError {
    if (entry.inflight === attempt) entry.inflight = undefined;
    const error = asCertificateError(entry.identity, err);
    if (!this.isLive(entry)) return error;
    entry.lastError = error;
    // Only an identity that has had a certificate is kept alive in the background; a first request
    // that fails is reported to its caller, and the next `get` asks again.
    let retryInMs: number | undefined;
    if (entry.held) {
      entry.failures += 1;
      retryInMs = backoffDelayMs(entry.failures, this.backoff, Math.random);
      this.scheduleAt(entry, this.now() + retryInMs, "retry");
    }
    this.log.warn(
      { identity: entry.identity, err: error.message, failures: entry.failures, retryInMs },
      "workload certificate request failed",
    );
    this.notify(() => this.emit("fetchFailed", entry.identity, error, retryInMs));
    return error;
  }

  private scheduleAt(entry: Entry, at: number, reason: "renewal" | "retry"): void {
    clearTimer(entry);
    const delay = Math.max(0, at - this.now());
    const clamped = delay > MAX_TIMER_DELAY_MS;
    entry.timer = setTimeout(
      () => {
        entry.timer = undefined;
        if (!this.isLive(entry)) return;
        // A delay past setTimeout's limit is waited for in steps.
        if (clamped) return this.scheduleAt(entry, at, reason);
        // The outcome is recorded by onIssued/onFailed; nobody else awaits a background request.
        this.fetch(entry, reason).catch(() => undefined);
      },
      clamped ? MAX_TIMER_DELAY_MS : delay,
    );
    // Renewal alone must not keep the process alive.
    entry.timer.unref();
  }

  private isLive(entry: Entry): boolean {
    return !this.closed && this.entries.get(entry.identity) === entry;
  }

  /** A throwing listener must not fail the request it was told about. */
  private notify(emit: () => void): void {
    try {
      emit();
    } catch (e) {
      this.log.error({ err: message(e) }, "certificate event listener threw");
    }
  }
}

function clearTimer(entry: Entry): void {
  if (entry.timer !== undefined) clearTimeout(entry.timer);
  entry.timer = undefined;
}

function asCertificateError(identity: string, err: unknown): CertificateError {
  if (
    err instanceof CertificateRequestError ||
    err instanceof CertificateResponseError ||
    err instanceof CertificateIdentityError ||
    err instanceof CertificateManagerClosedError
  ) {
    return err;
  }
  // A signer other than the gRPC one may throw anything; it is still the request that failed.
  return new CertificateRequestError(identity, status.UNKNOWN, message(err), err);
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
