#!/usr/bin/env python
"""Training images/s under TensorFlow thread-pool settings, each in its own process.

TensorFlow reads ``TF_NUM_INTEROP_THREADS`` and ``TF_NUM_INTRAOP_THREADS`` once,
when it creates its thread pools, so every setting runs as a child of
``bench/onednn.py --child`` (model alone on in-memory random batches, oneDNN
on). The settings alternate over ``--rounds`` rounds, so slow drifts of the
machine hit all of them alike; the median over all windows is printed.

Examples
--------
python bench/threads.py --model unet-cpu --rounds 2
"""

import argparse
import statistics
import sys

try:  # run as a script, bench/ is on sys.path
    import onednn
except ImportError:  # pragma: no cover - imported as bench.threads
    from em_keras import onednn

#: name -> extra environment of the child.
SETTINGS = {
    "TF default": {},
    "inter-op 1": {"TF_NUM_INTEROP_THREADS": "1"},
    "inter-op 1, intra-op 2": {"TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "2"},
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet-cpu", help="a bench/throughput.py model (default unet-cpu)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all settings (default 2)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed window (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per child (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per child (default 3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.quick = False
    peak = onednn._common.detect_peak()
    print(f"fp32 peak: {peak['how']}")
    rates, flops = {name: [] for name in SETTINGS}, None
    for rnd in range(args.rounds):
        for name, extra in SETTINGS.items():
            out = onednn.run_child(args.model, "1", args, extra_env=extra)
            rates[name] += out["rates"]
            flops = out["train_flops"]
            print(f"round {rnd}: {name:24s} " + " ".join(f"{r:.2f}" for r in out["rates"]), flush=True)
    base = statistics.median(rates["TF default"])
    for name, values in rates.items():
        med = statistics.median(values)
        pct = "" if flops is None else f", {100 * med * flops / 1e9 / peak['gflops']:.1f}% of peak"
        print(f"{name:24s} median {med:.2f} images/s over {len(values)} windows, "
              f"{med / base:.2f}x default{pct}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
