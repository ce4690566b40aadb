"""Time verl_bench.rank against a reference-style implementation on the same inputs, in one run.

Reference style = what the released VERL code does: one float32 SVD per response for ER and one SVD per
growing prefix for ERV/ERA, in a Python loop. Ours = batched float64 Gram + eigvalsh, prefix Grams as
double-centred blocks of one Gram.

    python benchmarks/rank_metrics.py                 # CPU scale: 64 x 256 x 576 (+ paper scale with CUDA)
    python benchmarks/rank_metrics.py --scale paper   # 192 x 1536 x 3584 (needs a GPU to be quick)

Prints both times, the ratio and the agreement, and appends one JSON line per scale to
benchmarks/results/rank_metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from verl_bench.rank import rank_dynamics

SCALES = {"cpu": (64, 256, 576), "paper": (192, 1536, 3584)}
RESULTS = Path(__file__).resolve().parent / "results" / "rank_metrics.jsonl"


def _er_svd(z: torch.Tensor) -> torch.Tensor:
    zc = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(zc)
    p = s / (s.sum() + 1e-8)
    return torch.exp(-(p * torch.log(p + 1e-8)).sum())


def reference_style(hidden, lengths, stride, window):
    """One float32 SVD per response and per prefix, looped: the released code's structure."""
    ers, ervs, eras = [], [], []
    for i, n in enumerate(lengths.tolist()):
        z = hidden[i, :n].float()
        ers.append(_er_svd(z))
        h = z[-window:]
        e = [_er_svd(h[: t + 1]) for t in range(stride, h.shape[0], stride)] if h.shape[0] >= 2 * stride else []
        v = [e[j] - torch.stack(e[:j]).mean() for j in range(1, len(e))]
        a = [v[j] - v[j - 1] for j in range(1, len(v))]
        zero = torch.zeros((), device=hidden.device)
        ervs.append(torch.stack(v).mean() if v else zero)
        eras.append(torch.stack(a).mean() if a else zero)
    return torch.stack(ers), torch.stack(ervs), torch.stack(eras)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_scale(name, device, stride, window, repeats, seed=0):
    b, t, d = SCALES[name]
    g = torch.Generator().manual_seed(seed)
    # random-walk rows (hidden states drift along a response) with varied response lengths
    hidden = (torch.randn(b, t, d, generator=g).cumsum(dim=1) * 0.05).to(device)
    lengths = torch.randint(t // 4, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(device)
    print(f"[{name}] {b} responses x {t} tokens x D={d} on {device} (stride {stride}, window {window})", flush=True)
    ours_s, ours = _time(lambda: rank_dynamics(hidden, mask, stride=stride, window=window), device, repeats)
    print(f"  verl_bench.rank      {ours_s:8.3f} s", flush=True)
    ref_s, ref = _time(lambda: reference_style(hidden, lengths, stride, window), device, 1)
    print(f"  reference-style loop {ref_s:8.3f} s", flush=True)
    er_rel = ((ours[0].cpu() - ref[0].cpu()).abs() / ref[0].cpu().abs()).max().item()
    erv_abs = (ours[1].cpu() - ref[1].cpu()).abs().max().item()
    era_abs = (ours[2].cpu() - ref[2].cpu()).abs().max().item()
    ratio = ref_s / ours_s
    print(f"  speed-up {ratio:.1f}x | agreement: ER max rel {er_rel:.2e}, ERV max abs {erv_abs:.2e}, "
          f"ERA max abs {era_abs:.2e}", flush=True)
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scale": name, "shape": [b, t, d], "stride": stride, "window": window, "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "ours_s": round(ours_s, 4), "reference_style_s": round(ref_s, 4), "speedup": round(ratio, 2),
        "er_max_rel_diff": er_rel, "erv_max_abs_diff": erv_abs, "era_max_abs_diff": era_abs,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["auto", *SCALES], default="auto")
    ap.add_argument("--stride", type=int, default=40)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    runs = []
    if args.scale in ("auto", "cpu"):
        runs.append(("cpu", torch.device("cuda" if cuda and args.scale == "cpu" else "cpu")))
    if args.scale == "paper" or (args.scale == "auto" and cuda):
        runs.append(("paper", torch.device("cuda" if cuda else "cpu")))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for name, device in runs:
        row = run_scale(name, device, args.stride, args.window, args.repeats)
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
