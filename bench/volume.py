"""Chunked volume prediction: peak RSS and slices/s on ~1 GB and ~8 GB volumes, Dask 1 vs 2 workers.

Model: an untrained ``build_unet(filters=4, depth=2)`` (speed and memory do not
depend on the weights), so a run takes minutes, not hours. Volumes: synthetic
EM-like uint8 slices (4096 x 4096 by default) in an uncompressed multi-page
TIFF, written once into ``--scratch`` and reused. Every measurement runs in a
fresh child process, through public APIs
(:func:`em_keras.inference.volume.predict_volume`,
:func:`em_keras.inference.predict.predict_stack`); the parent samples the
resident memory of the child and all its descendants (Dask workers too) every
0.1 s and reports the peak.

1. Each volume size, in this process (no Dask), ``--chunks`` chunks into a
   Zarr store: peak RSS of the process tree and slices/s. Targets: the peaks
   of the largest and the smallest volume within 10%, far below the machine's
   memory.
2. The smallest volume on a local Dask cluster of 1 and of 2 workers with one
   thread each: slices/s side by side. Target: 2 workers >= 1.7x one.
3. The same ``--compare`` slices predicted whole in memory (``predict_stack``)
   and chunk by chunk (``predict_volume``, one process): slices/s and their
   ratio. Target: >= 0.9.

"slices/s" counts from the first chunk done to the last (after start-up:
TensorFlow import, model load, graph tracing); "overall" includes start-up.

Examples
--------
::

    python bench/volume.py --small                 # a quick smoke: 512 x 512 slices, a few MB
    python bench/volume.py                         # ~1 GB and ~8 GB: needs ~45 GB of disk and a quiet machine
    python bench/volume.py --sizes-gb 1 --workers 1 2 4 --scratch /data/tmp
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

GIB = 2 ** 30
PARTS = ("rss", "workers", "compare")


def _write_volume(path, n, size):
    """An uncompressed uint8 TIFF of ``n`` synthetic EM-like slices, written slice by slice."""
    import tifffile

    from em_keras.data.synthetic import synthetic_em

    if os.path.isfile(path):
        with tifffile.TiffFile(path) as tif:
            if tuple(tif.series[0].shape) == (n, size, size):
                return
    tile = np.round(synthetic_em(n=1, size=min(size, 512), seed=0)[0][0] * 255).astype(np.uint8)
    reps = -(-size // tile.shape[0])
    base = np.tile(tile, (reps, reps))[:size, :size]
    pages = (np.roll(base, (7 * z, 13 * z), axis=(0, 1)) for z in range(n))
    tmp = path + ".tmp.tif"
    tifffile.imwrite(tmp, data=pages, shape=(n, size, size), dtype=np.uint8, bigtiff=True)
    os.replace(tmp, path)


def _tree_rss(proc):
    import psutil

    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _measure(task):
    """Run ``task`` in a child process; returns (its JSON result, peak RSS of its process tree)."""
    import psutil

    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", json.dumps(task)],
                             stdout=subprocess.PIPE, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), text=True)
    proc, peak, done = psutil.Process(child.pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _tree_rss(proc))
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"child {task['kind']} failed with exit code {child.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak[0]


def _rate(res, n_slices):
    """(slices/s after the first chunk, slices/s overall)."""
    t = res["chunk_seconds"]
    per_chunk = n_slices / max(1, len(t))
    steady = (len(t) - 1) * per_chunk / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else float("nan")
    return steady, n_slices / res["seconds"]


def _child(task):
    """Child process: run one measurement and print its result as JSON."""
    from em_keras.runtime import prepare_tensorflow

    prepare_tensorflow()
    from em_keras.inference.volume import predict_volume

    quiet = dict(log=lambda s: None)
    if task["kind"] == "volume":
        res = predict_volume([task["model"]], task["images"], task["out"], chunks=tuple(task["chunks"]),
                             workers=task.get("workers"), indices=task.get("indices"), **quiet)
        print(json.dumps({"seconds": res["seconds"], "chunk_seconds": res["chunk_seconds"]}))
        return
    import tifffile

    from em_keras.inference.load import load_model
    from em_keras.inference.predict import predict_stack

    model = load_model(task["model"])
    images = tifffile.imread(task["images"], key=range(len(task["indices"]))).astype(np.float32) / 255
    tile = task.get("tile")
    kwargs = dict(tile=tile, overlap=min(32, tile // 4)) if tile else {}
    predict_stack(model, images[:1], **kwargs)  # trace the graph first, as the chunked run's first chunk does
    start = time.perf_counter()
    predict_stack(model, images, **kwargs)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _run(args):
    from em_keras.models.unet import build_unet

    os.makedirs(args.scratch, exist_ok=True)
    model = os.path.join(args.scratch, "unet_f4_d2.keras")
    build_unet(filters=4, depth=2).save(model)
    chunks = [int(v) for v in args.chunks.split(",")]
    vols = []
    for gb in args.sizes_gb:
        n = max(2, round(gb * GIB / args.slice ** 2))
        path = os.path.join(args.scratch, f"volume_{n}x{args.slice}.tif")
        print(f"writing {path} ({n} slices, {n * args.slice ** 2 / GIB:.3f} GiB) ...", flush=True)
        _write_volume(path, n, args.slice)
        vols.append((path, n))
    out = os.path.join(args.scratch, "out.zarr")
    print(f"\nmodel: build_unet(filters=4, depth=2), untrained; slices {args.slice}x{args.slice} uint8; "
          f"chunks {args.chunks}; {os.cpu_count()} CPUs\n")
    if "rss" in args.parts:
        _rss(args, vols, model, chunks, out)
    if "workers" in args.parts:
        _workers(args, vols[0], model, chunks, out)
    if "compare" in args.parts:
        _compare(args, vols[0], model, chunks, out)
    shutil.rmtree(out, ignore_errors=True)


def _rss(args, vols, model, chunks, out):
    """1. Peak RSS and slices/s of each volume, chunked in one process."""
    print(f"{'volume':>11} {'slices':>7} {'peak RSS (tree)':>16} {'slices/s':>9} {'overall':>8}")
    peaks = []
    for path, n in vols:
        shutil.rmtree(out, ignore_errors=True)
        res, peak = _measure({"kind": "volume", "model": model, "images": path, "out": out, "chunks": chunks})
        peaks.append(peak)
        steady, overall = _rate(res, n)
        print(f"{n * args.slice ** 2 / GIB:>7.3f} GiB {n:>7} {peak / GIB:>12.2f} GiB {steady:>9.2f} {overall:>8.2f}",
              flush=True)
    if len(peaks) > 1:
        print(f"peak RSS largest / smallest volume: {peaks[-1] / peaks[0]:.3f} (target <= 1.10)")


def _workers(args, vol, model, chunks, out):
    """2. The smallest volume on a local Dask cluster of each worker count."""
    path, n = vol
    print(f"\nDask local cluster, one thread per worker, on the {n}-slice volume:")
    print(f"{'workers':>7} {'slices/s':>9} {'overall':>8} {'peak RSS (tree)':>16}")
    rates = {}
    for w in args.workers:
        shutil.rmtree(out, ignore_errors=True)
        res, peak = _measure({"kind": "volume", "model": model, "images": path, "out": out, "chunks": chunks,
                              "workers": w})
        rates[w], overall = _rate(res, n)
        print(f"{w:>7} {rates[w]:>9.2f} {overall:>8.2f} {peak / GIB:>12.2f} GiB", flush=True)
    if 1 in rates and 2 in rates:
        print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}x (target >= 1.7x)")


def _compare(args, vol, model, chunks, out):
    """3. The same slices in memory and chunk by chunk."""
    path, n = vol
    k = min(args.compare, n)
    shutil.rmtree(out, ignore_errors=True)
    inmem, _ = _measure({"kind": "inmem", "model": model, "images": path, "indices": list(range(k)),
                         "tile": args.inmem_tile})
    vol, _ = _measure({"kind": "volume", "model": model, "images": path, "out": out, "chunks": chunks,
                       "indices": list(range(k))})
    a, b = k / inmem["seconds"], _rate(vol, k)[0]
    how = f"predict_stack, --tile {args.inmem_tile}" if args.inmem_tile else "predict_stack, whole slices"
    print(f"\nsame {k} slices: in memory ({how}) {a:.2f} slices/s, chunked (predict_volume) {b:.2f} "
          f"slices/s: ratio {b / a:.2f} (target >= 0.90)")
    shutil.rmtree(out, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 8.0], help="volume sizes, GiB")
    ap.add_argument("--slice", type=int, default=4096, help="slice height and width (default %(default)d)")
    ap.add_argument("--chunks", default="1,2048,2048", help="Z,Y,X chunk shape (default %(default)s)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts to compare")
    ap.add_argument("--compare", type=int, default=8, help="slices for in-memory vs chunked (default %(default)d)")
    ap.add_argument("--inmem-tile", type=int, help="in 3., predict in memory with overlap-tiles of this size "
                    "(default: whole slices)")
    ap.add_argument("--scratch", help="folder for the volumes and outputs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (reuse the volumes next time)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="which measurements to run (default: all): rss = 1., workers = 2., compare = 3.")
    ap.add_argument("--small", action="store_true", help="a quick smoke: 512 x 512 slices of ~4 and ~16 MB")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    if args.small:
        args.sizes_gb, args.slice, args.chunks, args.compare = [4 / 1024, 16 / 1024], 512, "1,256,256", 4
    temporary = args.scratch is None
    args.scratch = args.scratch or tempfile.mkdtemp(prefix="em_keras_bench_volume_")
    try:
        _run(args)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
