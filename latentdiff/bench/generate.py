"""Speed benchmarks against the stock diffusers path, on the same weights, in the same run.

`latentdiff bench generate`: seconds per image of `LatentDiffusionPipeline` and of stock
`diffusers.StableDiffusionPipeline` built from the very same component objects, timed alternately (so drift
in the machine's speed hits both), with the ratio and a check that both drew the same image.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from latentdiff.eval.seeded import generators


@dataclass
class GenerateBenchResult:
    source: str  # the model that was timed
    device: str  # where it ran
    steps: int  # sampler steps
    height: int  # image height in pixels
    width: int  # image width in pixels
    batch: int  # images per call
    ours_s: float  # median seconds per image, LatentDiffusionPipeline
    stock_s: float  # median seconds per image, stock StableDiffusionPipeline
    max_abs_diff: float  # largest pixel difference between the two pipelines' images (np output, [0, 1])
    ours_peak_mb: float | None  # peak memory of a call: CUDA max_memory_allocated, or on CPU the peak resident
    stock_peak_mb: float | None  # set size above the RSS at the call's start (`PeakRSS`); None where unmeasurable

    @property
    def speedup(self) -> float:
        """Stock time over ours: > 1 means ours is faster."""
        return self.stock_s / self.ours_s

    def table(self) -> str:
        rows = [
            f"model {self.source} on {self.device}: {self.height}x{self.width}, {self.steps} steps, batch {self.batch}",
            f"{'pipeline':<34}{'s/image':>10}{'peak MB':>10}  (peak: " + ("CUDA allocated)" if self.device.startswith(
                "cuda") else "resident set growth during a call)"),
            f"{'latentdiff LatentDiffusionPipeline':<34}{self.ours_s:>10.4f}{_mb(self.ours_peak_mb):>10}",
            f"{'diffusers StableDiffusionPipeline':<34}{self.stock_s:>10.4f}{_mb(self.stock_peak_mb):>10}",
            f"speed ratio (stock / ours): {self.speedup:.3f}x; max |difference| of images: {self.max_abs_diff:.2e}",
        ]
        return "\n".join(rows)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


class PeakRSS:
    """Peak growth of this process's resident set size (MB) while the `with` block runs, polled every `interval`
    seconds from /proc/self/statm by a thread (Linux; `peak_mb` stays None elsewhere). torch's CPU allocator has no
    max_memory_allocated counterpart, and ru_maxrss is a lifetime maximum, so neither measures one call."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def _poll(self, start: int) -> None:
        peak = start
        while not self._stop.is_set():
            peak = max(peak, self._rss() or peak)
            self._stop.wait(self.interval)
        peak = max(peak, self._rss() or peak)
        self.peak_mb = (peak - start) / 2**20

    def __enter__(self) -> "PeakRSS":
        start = self._rss()
        if start is not None:
            self._thread = threading.Thread(target=self._poll, args=(start,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def stock_pipeline(pipe) -> StableDiffusionPipeline:
    """Stock StableDiffusionPipeline sharing `pipe`'s component objects (no copy of the weights)."""
    stock = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                    feature_extractor=None, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    return stock


def bench_generate(pipe, source: str, prompt: str = "a red circle above a blue square", steps: int = 20,
                   height: int | None = None, width: int | None = None, batch: int = 1, guidance: float = 7.5,
                   repeats: int = 5, seed: int = 0) -> GenerateBenchResult:
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}.")
    pipe.set_progress_bar_config(disable=True)
    stock = stock_pipeline(pipe)
    device = pipe._execution_device
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                  num_images_per_prompt=batch, output_type="np")

    def call(p) -> np.ndarray:
        return p(prompt, generator=generators([seed])[0], **kwargs).images

    def seconds_per_image(p) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call(p)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / batch

    def images_and_peak_mb(p) -> tuple[np.ndarray, float | None]:
        """One untimed call (so measuring memory never slows a timed one): its images and peak memory."""
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            images = call(p)
            torch.cuda.synchronize()
            return images, torch.cuda.max_memory_allocated() / 2**20
        with PeakRSS() as rss:
            images = call(p)
        return images, rss.peak_mb

    call(pipe), call(stock)  # warm-up: allocator, kernels, lazy imports
    ours_images, ours_peak = images_and_peak_mb(pipe)
    stock_images, stock_peak = images_and_peak_mb(stock)
    ours, theirs = [], []
    for i in range(repeats):  # alternate in ABBA order, so drift of the machine and going first hit both equally
        pairs = [(pipe, ours), (stock, theirs)]
        for p, times in pairs if i % 2 == 0 else pairs[::-1]:
            times.append(seconds_per_image(p))
    return GenerateBenchResult(
        source=source, device=str(device), steps=steps, height=height, width=width, batch=batch,
        ours_s=statistics.median(ours), stock_s=statistics.median(theirs),
        max_abs_diff=float(np.abs(ours_images - stock_images).max()), ours_peak_mb=ours_peak, stock_peak_mb=stock_peak,
    )


# ---------------------------------------------------------------------------------------------- training


def add_arguments(g) -> None:
    g.add_argument("--model", help="pipeline folder, hub repo id, or preset:NAME (default: the default model)")
    g.add_argument("--sampler", metavar="NAME", help="named sampler for both pipelines")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--batch", type=int, default=1, help="images per call")
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--repeats", type=int, default=10, help="timed calls per pipeline (median reported)")
    g.add_argument("--device", default="auto")
    g.add_argument("--json", help="also write the result as JSON to this file")


def run(args) -> int:
    import json
    from dataclasses import asdict

    from latentdiff.loading import load_model

    for name in ("steps", "batch", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    loaded = load_model(args.model, device=args.device)
    if args.sampler:
        loaded.pipe.set_sampler(args.sampler)
    result = bench_generate(loaded.pipe, loaded.source, steps=args.steps, height=args.height, width=args.width,
                            batch=args.batch, guidance=args.guidance, repeats=args.repeats)
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(result) | {"speedup": result.speedup}, f, indent=2)
    return 0
