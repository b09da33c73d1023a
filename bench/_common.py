"""Helpers shared by the benchmark scripts: CPU description, fp32 peak, timing, docs.

Nothing here imports TensorFlow or Keras, and importing the module has no side
effects.
"""

import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

__all__ = [
    "cpu_info",
    "usable_cores",
    "flops_per_cycle",
    "measure_fma_peak",
    "detect_peak",
    "summarize",
    "load_note",
    "replace_section",
    "now",
    "section_header",
]


def cpu_info(path="/proc/cpuinfo"):
    """Describe the CPU from ``/proc/cpuinfo``.

    Returns
    -------
    dict
        ``model_name``, ``vendor``, ``family``, ``model`` (ints or None),
        ``mhz`` (mean "cpu MHz" over the logical CPUs, or None), ``flags``
        (set of str), ``hypervisor`` (bool) and ``max_mhz`` (from cpufreq's
        ``cpuinfo_max_freq`` when the kernel exposes it, else None).
    """
    info = {"model_name": "unknown CPU", "vendor": None, "family": None, "model": None,
            "mhz": None, "flags": set(), "hypervisor": False, "max_mhz": None}
    mhz = []
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            info["model_name"] = value
        elif key == "vendor_id":
            info["vendor"] = value
        elif key == "cpu family" and value.isdigit():
            info["family"] = int(value)
        elif key == "model" and value.isdigit():
            info["model"] = int(value)
        elif key == "cpu MHz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
        elif key == "flags" and not info["flags"]:
            info["flags"] = set(value.split())
    if mhz:
        info["mhz"] = sum(mhz) / len(mhz)
    info["hypervisor"] = "hypervisor" in info["flags"]
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as fh:
            info["max_mhz"] = int(fh.read().strip()) / 1000.0
    except (OSError, ValueError):
        pass
    return info


def usable_cores():
    """Logical CPUs this process may use, and where that number comes from.

    The CPU affinity mask (``os.sched_getaffinity``), capped by a cgroup v2
    CPU quota (``/sys/fs/cgroup/cpu.max``) when one is set.

    Returns
    -------
    (int, str)
    """
    if hasattr(os, "sched_getaffinity"):
        n, how = len(os.sched_getaffinity(0)), "sched_getaffinity"
    else:
        n, how = os.cpu_count() or 1, "os.cpu_count"
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            limit = max(1, math.ceil(int(quota) / int(period)))
            if limit < n:
                n, how = limit, f"cgroup cpu.max quota {quota}/{period}"
    except (OSError, ValueError):
        pass
    return n, how


def flops_per_cycle(info):
    """Peak fp32 FLOPs per cycle per core from the CPU's vector extensions.

    An FMA counts as 2 FLOPs. The rule of thumb is 2 FMA pipes x vector lanes x 2:
    64 with AVX-512 (16 lanes), 32 with AVX2 + FMA (8 lanes), 16 with AVX alone
    (one 8-lane add and one 8-lane multiply), 8 with SSE. Known exceptions are
    applied: AMD Zen/Zen+ (family 0x17, model < 0x30) split 256-bit FMAs into two
    128-bit halves (16), and AMD Zen 4 (family 0x19 with AVX-512) runs AVX-512
    on 256-bit pipes (32); server Zen 5 (family 0x1A) has full 512-bit FMA pipes
    (64). Mobile Zen 5 parts and some Intel parts have only 256-bit pipes or one
    512-bit FMA unit (32); that is not detectable from ``/proc/cpuinfo``, so pass
    ``--peak-gflops`` there.

    Parameters
    ----------
    info : dict
        As returned by :func:`cpu_info`.

    Returns
    -------
    (int, str)
        FLOPs per cycle and a short explanation.
    """
    flags, amd = info["flags"], info["vendor"] == "AuthenticAMD"
    family, model = info["family"], info["model"]
    if "avx512f" in flags:
        if amd and family is not None and family <= 0x19:
            return 32, "AVX-512 on AMD Zen 4: 2 x 256-bit FMA pipes x 8 fp32 lanes x 2"
        if amd and family == 0x1A:
            return 64, "AVX-512 on AMD Zen 5: 2 x 512-bit FMA pipes x 16 fp32 lanes x 2"
        return 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2 (assumes 2 FMA units)"
    if "avx2" in flags and "fma" in flags:
        if amd and family == 0x17 and model is not None and model < 0x30:
            return 16, "AVX2+FMA on AMD Zen/Zen+: 2 x 128-bit FMA pipes x 4 fp32 lanes x 2"
        return 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2"
    if "avx" in flags:
        return 16, "AVX without FMA: 1 add + 1 multiply x 8 fp32 lanes"
    return 8, "SSE: 1 add + 1 multiply x 4 fp32 lanes"


_FMA_SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#endif
#define ACC 12
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    vec a[ACC], b = SET1(1.0000001f), c = SET1(1e-7f);
    for (int k = 0; k < ACC; k++) a[k] = SET1((float)k);
    double t0 = now();
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 12
        for (int k = 0; k < ACC; k++) a[k] = FMA(a[k], b, c);  /* fully unrolled: a[] in registers */
    }
    double t1 = now();
    float out[LANES], sum = 0.0f;
    for (int k = 0; k < ACC; k++) { memcpy(out, &a[k], sizeof out); for (int j = 0; j < LANES; j++) sum += out[j]; }
    printf("%.6f %g\n", 2.0 * LANES * ACC * (double)n / (t1 - t0) / 1e9, (double)sum);
    return 0;
}
"""


def measure_fma_peak(info=None, cores=None, iterations=100_000_000, tries=3):
    """Measure the fp32 peak: one FMA loop per usable core, all at once.

    Each loop runs 12 independent AVX-512 (or AVX2) fused multiply-adds per
    iteration, enough to keep two FMA pipes busy, pinned to its own CPU. The
    sum over the cores is the peak at the clock the CPU really runs under load,
    which a VM's ``cpu MHz`` (the nominal clock) does not show.

    Parameters
    ----------
    info : dict, optional
        :func:`cpu_info`; read when omitted.
    cores : int, optional
        Loops to run at once; :func:`usable_cores` by default.
    iterations : int
        Loop iterations per try (10^8: about 0.3 s at 4 GHz with AVX-512).
    tries : int
        The best try counts.

    Returns
    -------
    float or None
        GFLOP/s, or None without a C compiler, AVX2 + FMA, or on failure.
    """
    info = cpu_info() if info is None else info
    flags = info["flags"]
    if "avx512f" in flags:
        arch = ["-mavx512f", "-mfma"]
    elif "avx2" in flags and "fma" in flags:
        arch = ["-mavx2", "-mfma"]
    else:
        return None
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[: cores or usable_cores()[0]]
    with tempfile.TemporaryDirectory(prefix="em_keras_fma_") as tmp:
        src, exe = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma")
        with open(src, "w") as fh:
            fh.write(_FMA_SOURCE)
        r = subprocess.run([cc, "-O3", *arch, "-o", exe, src], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        best = 0.0
        for _ in range(tries):
            procs = [subprocess.Popen([exe, str(iterations)], stdout=subprocess.PIPE, text=True,
                                      preexec_fn=(lambda c=c: os.sched_setaffinity(0, {c})))
                     for c in cpus]
            try:
                total = sum(float(p.communicate(timeout=120)[0].split()[0]) for p in procs)
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                for p in procs:
                    p.kill()
                return None
            best = max(best, total)
    return best or None


def detect_peak(override_gflops=None, measure=True):
    """The CPU's fp32 peak in GFLOP/s: measured, or cores x clock x FLOPs/cycle.

    Parameters
    ----------
    override_gflops : float, optional
        Use this figure instead of detecting one.
    measure : bool
        Run :func:`measure_fma_peak` (needs a C compiler) and use its figure;
        the nominal one (``cpu MHz`` x FLOPs/cycle) is kept as ``nominal_gflops``
        and is the fallback.

    Returns
    -------
    dict
        ``gflops`` (float or None), ``how`` (one line: how it was derived),
        ``cores``, ``ghz``, ``flops_per_cycle``, ``nominal_gflops`` and ``cpu``
        (the :func:`cpu_info` dict).
    """
    info = cpu_info()
    cores, cores_how = usable_cores()
    fpc, fpc_how = flops_per_cycle(info)
    out = {"cpu": info, "cores": cores, "ghz": None, "flops_per_cycle": fpc, "gflops": None}
    if override_gflops is not None:
        out["gflops"] = float(override_gflops)
        out["how"] = f"{override_gflops:g} GFLOP/s given by --peak-gflops"
        return out
    if not info["mhz"]:
        out["how"] = "unknown (no 'cpu MHz' in /proc/cpuinfo); pass --peak-gflops"
        return out
    ghz = info["mhz"] / 1000.0
    clock_note = "'cpu MHz' in /proc/cpuinfo"
    if info["hypervisor"]:
        clock_note += "; a VM guest, so probably the nominal clock, boost may be higher"
    if info["max_mhz"]:
        clock_note += f"; cpufreq max {info['max_mhz'] / 1000:.2f} GHz"
    out["ghz"] = ghz
    out["gflops"] = out["nominal_gflops"] = cores * ghz * fpc
    out["how"] = (f"{cores} cores ({cores_how}) x {ghz:.3f} GHz ({clock_note}) x {fpc} FLOP/cycle "
                  f"({fpc_how}) = {out['gflops']:.1f} GFLOP/s")
    measured = measure_fma_peak(info, cores) if measure else None
    if measured:
        out["gflops"] = measured
        out["how"] = (f"{measured:.1f} GFLOP/s measured ({cores} FMA loops at once, one per core, "
                      f"bench/_common.measure_fma_peak): {fpc} FLOP/cycle ({fpc_how}) at "
                      f"{measured / cores / fpc:.2f} GHz; the nominal figure, {cores} x {ghz:.3f} GHz "
                      f"('cpu MHz') x {fpc}, is {out['nominal_gflops']:.1f} GFLOP/s")
    return out


def summarize(values):
    """Median, min and max of a non-empty list of numbers, as a dict."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def load_note(cores=None):
    """A warning line when the 1-minute load average suggests other work on the CPU, else None."""
    cores = cores or os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    if load > 0.5 * cores:
        return (f"note: load average {load:.1f} on {cores} cores before the run; "
                "other processes compete for the CPU and the figures are low")
    return None


def replace_section(path, name, body, title="# Performance"):
    """Write ``body`` into ``path`` between ``<!-- name: begin -->`` / ``end`` markers.

    The rest of the file (sections written by other scripts or by hand) is kept;
    a missing file is created with ``title``. The file is replaced atomically.

    Parameters
    ----------
    path : str
    name : str
        Section name used in the markers.
    body : str
        Markdown, without the markers.
    title : str
        First line of a newly created file.
    """
    from em_keras.atomic import atomic_path

    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        text = f"{title}\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)


def now():
    """Local date and time, for reports."""
    return time.strftime("%Y-%m-%d %H:%M %Z")


def section_header(title, report):
    """First lines of a generated docs section: title, date, CPU and the command, fenced."""
    return [f"## {title}", "", f"Measured {report['date']} on {report['cpu']}, with", "",
            "```", report["command"], "```", ""]
