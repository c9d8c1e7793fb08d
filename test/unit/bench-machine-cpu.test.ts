import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  kernelWorkOf,
  parsePerfReport,
  PerfReportError,
  splitMachineCpu,
  throughputIfFreed,
} from "../../bench/ztunnel-machine-cpu.js";

// Lines as `perf report -n --no-children --sort pid,dso,sym -g none -t ';' --stdio` prints them
// (perf 6.1), trimmed to a few rows: two ztunnels (11671, 11660), iperf3, the idle loop, a kworker.
const REPORT = `# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 46K of event 'cpu-clock:ppp'
#
# Overhead;Samples;    Pid:Command        ;Shared Object                      ;Symbol
 5.44%  ; 2500       ;  11671:node           ;node                               ;[.] _aesni_ctr32_ghash_6x
 4.57%  ; 2000       ;      0:swapper        ;[kernel.kallsyms]                  ;[k] pv_native_safe_halt
 2.79%  ; 1300       ;  11671:node           ;[kernel.kallsyms]                  ;[k] nft_do_chain
 1.37%  ; 600        ;  11660:node           ;libc.so.6                          ;[.] __memmove_avx512_unaligned_erms
 1.00%  ; 500        ;  11660:node           ;[JIT] tid 11660                    ;[.] 0x00007f2a1c0e4d20
 0.98%  ; 400        ;  11660:node           ;[kernel.kallsyms]                  ;[k] fib_rules_lookup
 0.80%  ; 300        ;  11660:node           ;[kernel.kallsyms]                  ;[k] tcp_sendmsg_locked
 0.66%  ; 300        ;  11660:node           ;[kernel.kallsyms]                  ;[k] _copy_to_iter
 0.50%  ; 200        ;  11671:node           ;[kernel.kallsyms]                  ;[k] vxlan_xmit_one
 0.40%  ; 200        ;  11671:node           ;[kernel.kallsyms]                  ;[k] _raw_spin_unlock_irqrestore
 0.30%  ; 100        ;  11671:node           ;node                               ;[.] SSL_write_ex
 0.83%  ; 1000       ;  11682:iperf3         ;[kernel.kallsyms]                  ;[k] _copy_to_iter
 0.09%  ; 50         ;      0:swapper        ;[kernel.kallsyms]                  ;[k] handle_softirqs
 0.02%  ; 50         ;     77:kworker/u8:3-ip ;[kernel.kallsyms]                 ;[k] process_one_work
 0.01%  ; 20         ;   9000:node           ;node                               ;[.] v8::internal::Heap::Scavenge
`;

const ZTUNNELS = { ztunnelPids: [11671, 11660], loadCommands: ["iperf3"] };

describe("bench: the machine's CPU split from perf samples", () => {
  it("reads every sample row, with pid, command, shared object and symbol", () => {
    const rows = parsePerfReport(REPORT);
    assert.equal(rows.length, 15);
    assert.deepEqual(rows[0], {
      samples: 2500,
      pid: 11671,
      command: "node",
      dso: "node",
      symbol: "_aesni_ctr32_ghash_6x",
    });
    assert.equal(rows[4]?.dso, "[JIT] tid 11660");
    assert.equal(rows[13]?.command, "kworker/u8:3-ip");
  });

  it("names the line it cannot read", () => {
    assert.throws(
      () => parsePerfReport(" 5.44%  ;  11671:node ;node ;[.] x\n"),
      (e: unknown) => e instanceof PerfReportError && /line 1 /.test(e.message),
    );
  });

  it("splits the ztunnels' samples into OpenSSL, the rest of user space and kernel, by pid", () => {
    const { otherByCommand, ...split } = splitMachineCpu(parsePerfReport(REPORT), ZTUNNELS);
    assert.deepEqual(split, {
      total: 9520,
      ztunnelOpenssl: 2600, // AES-GCM and SSL_write_ex
      ztunnelUser: 1100, // libc and JIT code
      ztunnelKernel: 2700,
      load: 1000,
      // the idle core's softirq, the kworker, and a node process that is not a ztunnel
      other: 120,
      idle: 2000,
    });
    assert.deepEqual(Object.fromEntries(otherByCommand), { swapper: 50, "kworker/u8:3-ip": 50, node: 20 });
    const parts = Object.entries(split).filter(([k]) => k !== "total");
    assert.equal(
      parts.reduce((sum, [, n]) => sum + n, 0),
      split.total,
    );
  });

  it("sorts the ztunnels' kernel time by kind of work", () => {
    const kinds = kernelWorkOf(parsePerfReport(REPORT), ZTUNNELS.ztunnelPids);
    assert.deepEqual(Object.fromEntries(kinds), {
      "netfilter and conntrack": 1300,
      "routing and policy rules": 400,
      "VXLAN and UDP (the redirect tunnels)": 200,
      TCP: 300,
      "copies to and from user space": 300,
      "the rest": 200,
    });
  });

  it("bounds throughput by the work left when part of it costs nothing and no core idles", () => {
    const split = splitMachineCpu(parsePerfReport(REPORT), ZTUNNELS);
    // 7520 busy samples carried 4 Gbit/s; without the ztunnels' 1100 non-OpenSSL user samples,
    // 6420 busy samples' worth of work per byte, spread over all 9520.
    assert.equal(Math.round(throughputIfFreed(4e9, split, 0) / 1e6), Math.round((4e9 * 9520) / 7520 / 1e6));
    assert.equal(
      Math.round(throughputIfFreed(4e9, split, 1100) / 1e6),
      Math.round((4e9 * 9520) / 6420 / 1e6),
    );
    assert.equal(throughputIfFreed(4e9, split, 7520), Number.POSITIVE_INFINITY);
  });
});
