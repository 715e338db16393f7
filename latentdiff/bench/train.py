"""`latentdiff bench train`: training images/s of train_text_to_image with its on-disk caches against the
per-step encoding of diffusers' examples/text_to_image/train_text_to_image.py, same model, batch and data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainBenchResult:
    ours: dict  # training_summary.json of the run with cached VAE latents and text embeddings
    baseline: dict  # the same run encoding with the VAE and the text encoder at every step
    batch_size: int  # images per step
    steps: int  # optimizer steps per run (the first 3 are warm-up, not timed in the steady-state figures)
    compiled: bool = False  # ours ran with torch.compile

    @property
    def speedup(self) -> float:
        """Steady-state images/s ratio, ours / baseline (the first 3 steps of each run left out)."""
        return self.ours["steady_images_per_s"] / self.baseline["steady_images_per_s"]

    def table(self) -> str:
        rows = [f"{self.steps} steps of {self.batch_size} images, fine-tuning the UNet (frozen VAE and text encoder)",
                f"{'run':<58}{'images/s':>10}{'all steps':>11}"]
        for name, summary in (("latentdiff: cached latents + text, NHWC, fused AdamW" + (", compiled" if self.compiled
                                                                                          else ""), self.ours),
                              ("baseline (diffusers example): VAE + text encode every step", self.baseline)):
            rows.append(f"{name:<58}{summary['steady_images_per_s']:>10.2f}{summary['images_per_s']:>11.2f}")
        rows.append(f"images/s ratio (ours / baseline, after 3 warm-up steps): {self.speedup:.2f}x")
        return "\n".join(rows)


def bench_train(train_data: str, out_dir: str, model: str | None = None, preset: str = "small",
                resolution: int = 64, batch_size: int = 32, steps: int = 20, seed: int = 0,
                compile: bool = False) -> TrainBenchResult:
    """Images/s of train_text_to_image with its on-disk caches against the per-step work of diffusers'
    examples/text_to_image/train_text_to_image.py (VAE encode and text encode every step), same model, batch
    and data, in one process. The caches are filled by an untimed first pass, as a second epoch would find them.
    Ours also keeps the UNet in channels-last layout and uses the fused AdamW kernel (and, with `compile`,
    torch.compile); the baseline runs as the example does (default layout, for-loop AdamW, no compile)."""
    import json
    from pathlib import Path

    from accelerate.state import AcceleratorState

    from latentdiff.presets import build_pipeline
    from latentdiff.training import train_text_to_image

    out = Path(out_dir)
    if model is None:  # a folder to fine-tune, as the diffusers example does
        model = str(out / "base")
        build_pipeline(preset, seed=seed).save_pretrained(model)
    common = ["--pretrained", model, "--train-data", train_data, "--resolution", str(resolution), "--batch-size",
              str(batch_size), "--use-ema", "false", "--validation-every", str(10 * steps + 10), "--validation-steps",
              "1", "--validation-prompts", "a red circle", "--checkpoint-every", str(10 * steps + 10), "--seed",
              str(seed), "--lr-warmup-steps", "0", "--cache-dir", str(out / "cache"), "--max-steps", str(steps)]

    def run(name: str, *extra: str) -> dict:
        AcceleratorState._reset_state(True)
        train_text_to_image.main([*common, "--output-dir", str(out / name), *extra])
        return json.loads((out / name / "training_summary.json").read_text())

    run("warm-cache")  # fills the latent and text caches for the images the timed runs will see
    ours = run("ours", "--compile", str(compile).lower())
    # the diffusers example's per-step work: encoders every step, default memory layout, for-loop AdamW
    baseline = run("baseline", "--cache-latents", "false", "--cache-text", "false", "--channels-last", "false",
                   "--fused-adam", "false")
    return TrainBenchResult(ours=ours, baseline=baseline, batch_size=batch_size, steps=steps, compiled=compile)


def add_arguments(t) -> None:
    t.add_argument("--train-data", required=True, help="captioned images (e.g. a `latentdiff shapes` folder)")
    t.add_argument("--model", help="pipeline folder to fine-tune (default: a random-weight --preset)")
    t.add_argument("--preset", default="small", help="preset when no --model is given (default small)")
    t.add_argument("--resolution", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--steps", type=int, default=20, help="optimizer steps per run (3 warm-up + timed)")
    t.add_argument("--compile", action="store_true", help="torch.compile our UNet (compiling is not timed)")
    t.add_argument("--out", default="out/bench-train", help="working folder for the runs and caches")
    t.add_argument("--json", help="also write the result as JSON to this file")


def run(args) -> int:
    import json

    for name in ("resolution", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    result = bench_train(args.train_data, args.out, model=args.model, preset=args.preset,
                         resolution=args.resolution, batch_size=args.batch_size, steps=args.steps,
                         compile=args.compile)
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ours": result.ours, "baseline": result.baseline, "speedup": result.speedup}, f, indent=2)
    return 0
