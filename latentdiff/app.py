"""The web page to generate with: `latentdiff serve`, and the hub Space template (Gradio).

One model instance serves every visitor. Requests wait in Gradio's bounded queue and run one at a time; a lock
guards the pipeline as well, because a cancelled Gradio event only stops waiting for its worker thread, which
runs on until the next denoising step notices the cancel flag. Images are written by `generate_files`, the
function behind `latentdiff generate`, into a temporary folder, and the page gets their file paths: every PNG it
shows or downloads is that file, byte for byte, with its generation parameters in the PNG text chunk, so
`latentdiff generate --from IMAGE.png` remakes it.

`App` (validation, seeds, generation to files) needs no Gradio and is tested without it; only `build_demo`,
`create_app` and `serve` import gradio.
"""

# No `from __future__ import annotations` here: Gradio finds the gr.Request parameter of the event handlers by
# resolving their annotations, which fails for a string naming the local `gr`.
import dataclasses
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentdiff.generate import GenerationRequest, generate_files
from latentdiff.images import read_parameters
from latentdiff.loading import LoadedModel

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "prompts"  # example prompts of the default model
DEFAULT_SAMPLER = "default"  # the sampler menu's value for "keep the model's own scheduler"
MAX_SEED = 2**32 - 1
KEEP_RUNS = 64  # output folders kept on disk; older ones are deleted (Gradio has copied them to its cache by then)


@dataclass(frozen=True)
class Limits:
    max_steps: int = 100  # most sampler steps one request may ask for
    max_images: int = 4  # most images per request
    max_side: int | None = None  # largest width or height in pixels; None: twice the model's native size
    max_guidance: float = 30.0  # largest classifier-free guidance scale
    queue_size: int = 16  # requests that may wait behind the running one; more are turned away


@dataclass
class Result:
    paths: list[Path]  # one PNG per image, each carrying its parameters (image i has seed + i)
    seconds: float  # wall time of the generation
    parameters: dict[str, Any]  # what image 0's PNG holds, with num_images set to the whole request's


class Cancelled(Exception):
    """Raised from the step callback when the visitor pressed Stop: the pipeline stops at once, nothing is saved."""


class _WithStepCallback:
    """The pipeline with `callback_on_step_end` filled in.

    `generate_files` calls `pipe(...)` and takes no callback of its own; this hands ours in without copying it.
    Everything else (set_sampler, scheduler, _execution_device) goes to the pipeline itself.
    """

    def __init__(self, pipe, callback: Callable):
        self._pipe, self._callback = pipe, callback

    def __getattr__(self, name: str):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        return self._pipe(*args, callback_on_step_end=self._callback, **kwargs)


def example_prompts(n: int = 6, folder: str | Path = PROMPTS_DIR) -> list[str]:
    """Up to n example prompts: those of `folder`/*.jsonl ({"prompt": ...} per line), else ShapesWorld captions."""
    prompts: list[str] = []
    folder = Path(folder)
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                prompt = json.loads(line).get("prompt")
            except (json.JSONDecodeError, AttributeError) as err:
                raise ValueError(f"{path}:{number}: expected a JSON object with a \"prompt\" string.") from err
            if isinstance(prompt, str) and prompt.strip():
                prompts.append(prompt.strip())
    if not prompts:
        from latentdiff.data.shapes import iter_captions

        prompts = list(iter_captions(n))
    return list(dict.fromkeys(prompts))[:n]  # unique, in order


class App:
    """The page's logic around one loaded model: check a request, generate it to PNG files, cancel it."""

    def __init__(self, loaded: LoadedModel, limits: Limits = Limits(), examples: list[str] | None = None):
        pipe = loaded.pipe
        pipe.set_progress_bar_config(disable=True)  # the page shows progress; keep the server log quiet
        self.loaded, self.limits = loaded, limits
        self.examples = example_prompts() if examples is None else examples
        self.multiple = pipe.size_multiple  # width and height must be multiples of this
        self.native = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the model's own image size
        self.max_side = limits.max_side or 2 * self.native
        self.default_scheduler = pipe.scheduler  # restored for "default" after a request swapped it
        self._lock = threading.Lock()  # one generation at a time on the one model
        self._cancel = threading.Event()
        self._running: str | None = None  # the session whose generation is running, so Stop only stops one's own
        self._out = Path(tempfile.mkdtemp(prefix="latentdiff-serve-"))
        self._runs = itertools.count()

    @property
    def out_dir(self) -> Path:
        return self._out

    def sampler_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the sampler menu: the model's own scheduler first, then the named samplers."""
        from latentdiff.pipelines.samplers import SAMPLERS

        own = type(self.default_scheduler).__name__
        return [(f"model default ({own})", DEFAULT_SAMPLER)] + [
            (f"{name}: {SAMPLERS[name].description}", name) for name in self.loaded.pipe.sampler_names()
        ]  # only the samplers of this model's noise process (DDPM-family or CLD)

    # ------------------------------------------------------------------ checking a request
    def request(self, prompt: str | None, negative_prompt: str | None, sampler: str | None, steps: Any,
                guidance: Any, seed: Any, random_seed: bool, width: Any, height: Any,
                num_images: Any) -> GenerationRequest:
        """The page's values as a GenerationRequest; a ValueError says what to change. A random seed is drawn here."""
        from latentdiff.pipelines.samplers import SAMPLERS

        prompt = (prompt or "").strip()
        if not prompt:
            raise ValueError("Write a prompt first: it is empty.")
        if sampler not in (DEFAULT_SAMPLER, None) and sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}.")
        steps = _whole(steps, "Steps", 1, self.limits.max_steps)
        num_images = _whole(num_images, "Number of images", 1, self.limits.max_images)
        width = _whole(width, "Width", self.multiple, self.max_side)
        height = _whole(height, "Height", self.multiple, self.max_side)
        if width % self.multiple or height % self.multiple:
            raise ValueError(f"Width and height must be multiples of {self.multiple} for this model; "
                             f"got {width}x{height}.")
        try:
            guidance = float(guidance)
        except (TypeError, ValueError):
            raise ValueError(f"Guidance must be a number, got {guidance!r}.") from None
        if not (math.isfinite(guidance) and 0 <= guidance <= self.limits.max_guidance):
            raise ValueError(f"Guidance must be between 0 and {self.limits.max_guidance:g}, got {guidance}.")
        seed = secrets.randbelow(MAX_SEED - self.limits.max_images + 1) if random_seed else \
            _whole(seed, "Seed", 0, MAX_SEED - num_images + 1)
        return GenerationRequest(prompt=prompt, negative_prompt=(negative_prompt or "").strip() or None,
                                 sampler=None if sampler in (DEFAULT_SAMPLER, None) else sampler, steps=steps,
                                 guidance=guidance, seed=seed, num_images=num_images, height=height, width=width)

    # ------------------------------------------------------------------ generating
    def generate(self, request: GenerationRequest, on_step: Callable[[int, int], None] | None = None,
                 session: str | None = None) -> Result:
        """Generate `request` into PNG files. `on_step(done, total)` is called after every denoising step.

        Raises Cancelled when `cancel(session)` is called while it runs.
        """

        def step_end(pipe, i: int, t, tensors: dict) -> dict:
            if self._cancel.is_set():
                raise Cancelled("Stopped: no image was made.")
            if on_step is not None:
                on_step(i + 1, pipe.num_timesteps)  # num_timesteps: Heun-like samplers take 2 per step
            return {}

        with self._lock:
            self._running = session
            self._cancel.clear()
            try:
                run_dir = self._new_run_dir()
                if request.sampler is None:
                    self.loaded.pipe.scheduler = self.default_scheduler
                loaded = dataclasses.replace(self.loaded, pipe=_WithStepCallback(self.loaded.pipe, step_end))
                start = time.perf_counter()
                paths = generate_files(loaded, request, run_dir / f"latentdiff-{request.seed}.png")
                seconds = time.perf_counter() - start
            finally:
                self._running = None
        if request.num_images > 1:
            paths = paths[:-1]  # generate_files adds a grid; the gallery shows the images themselves
        parameters = read_parameters(paths[0]) | {"num_images": request.num_images}
        return Result(paths=paths, seconds=seconds, parameters=parameters)

    def cancel(self, session: str | None = None) -> bool:
        """Stop the running generation if it belongs to `session` (any, with None); True when one was stopped."""
        if self._running is not None and (session is None or session == self._running):
            self._cancel.set()
            return True
        return False

    def close(self) -> None:
        """Remove the temporary folder of generated images (Gradio's own cache keeps what it served)."""
        shutil.rmtree(self._out, ignore_errors=True)

    def _new_run_dir(self) -> Path:
        runs = sorted(self._out.glob("run-*"))
        for old in runs[: max(0, len(runs) - KEEP_RUNS + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        run_dir = self._out / f"run-{next(self._runs):08d}"
        run_dir.mkdir()
        return run_dir


def _whole(value: Any, name: str, low: int, high: int) -> int:
    """`value` as an int in [low, high], or a ValueError naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}.") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {int(number)}.")
    return int(number)


def summary(result: Result) -> str:
    """One line under the gallery: how many images, how long, which seed(s)."""
    n, seed = len(result.paths), result.parameters["seed"]
    seeds = f"seed {seed}" if n == 1 else f"seeds {seed}–{seed + n - 1}"
    return f"{n} image{'s' * (n > 1)} in {result.seconds:.2f} s · {seeds}"


# ---------------------------------------------------------------------------------------------- Gradio
CSS = """
#gallery img { image-rendering: pixelated; }  /* small models make small images: show pixels, not blur */
"""


def quiet_gradio() -> None:
    """Keep Gradio and the hub client from phoning home (analytics, version check, telemetry); call before import."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def build_demo(app: App):
    """The page: controls on the left, gallery, time and parameters on the right."""
    quiet_gradio()
    import gradio as gr

    def on_generate(prompt, negative, sampler, steps, guidance, seed, random_seed, width, height, num_images,
                    request: gr.Request, progress=gr.Progress()):
        try:
            req = app.request(prompt, negative, sampler, steps, guidance, seed, random_seed, width, height,
                              num_images)
            progress((0, req.steps), desc="denoising", unit="steps")
            result = app.generate(req, on_step=lambda done, total: progress((done, total), desc="denoising",
                                                                              unit="steps"),
                                  session=request.session_hash if request else None)
        except Cancelled as stopped:  # the page has already been told, by on_stop
            return gr.skip(), gr.skip(), str(stopped), gr.skip()
        except ValueError as err:  # bad input, said in one line (the pipeline's own checks included)
            raise gr.Error(str(err), title="Cannot generate", print_exception=False) from None
        captions = [f"seed {result.parameters['seed'] + i}" for i in range(len(result.paths))]
        return (list(zip(map(str, result.paths), captions)), result.parameters["seed"], summary(result),
                result.parameters)

    def on_stop(request: gr.Request):
        stopped = app.cancel(request.session_hash if request else None)
        return "Stopped: no image was made." if stopped else gr.skip()

    source = app.loaded.source
    with gr.Blocks(title="latentdiff", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## latentdiff\nText-to-image latent diffusion · model: `{source}`")
        if app.loaded.random_weights:
            gr.Markdown("*This model has random weights: the images are noise-like.*")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle above a blue square",
                                    elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="what to guide away from",
                                      elem_id="negative")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                sampler = gr.Dropdown(app.sampler_choices(), value=DEFAULT_SAMPLER, label="Sampler",
                                      elem_id="sampler")
                with gr.Row():
                    steps = gr.Slider(1, app.limits.max_steps, value=20, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0, app.limits.max_guidance, value=7.5, step=0.5, label="Guidance",
                                         elem_id="guidance")
                with gr.Row():
                    width = gr.Slider(app.multiple, app.max_side, value=app.native, step=app.multiple,
                                      label="Width", elem_id="width")
                    height = gr.Slider(app.multiple, app.max_side, value=app.native, step=app.multiple,
                                       label="Height", elem_id="height")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                    random_seed = gr.Checkbox(True, label="Random seed (shows the one used)",
                                              elem_id="random-seed")
                    num_images = gr.Slider(1, app.limits.max_images, value=1, step=1, label="Images",
                                           elem_id="num-images")
                gr.Examples([[p] for p in app.examples], inputs=[prompt], label="Example prompts")
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="Images", columns=2, height=420, object_fit="contain",
                                     buttons=["download", "fullscreen"], elem_id="gallery")
                info = gr.Markdown(elem_id="summary")
                parameters = gr.JSON(label="Parameters (also stored in each PNG)", elem_id="parameters")

        inputs = [prompt, negative, sampler, steps, guidance, seed, random_seed, width, height, num_images]
        outputs = [gallery, seed, info, parameters]
        # preprocess=False: the values reach App.request as sent, so that an API caller's "abc" for a slider gets
        # App.request's one-line message, not Gradio's failed conversion (which only the server log would show).
        run = generate.click(on_generate, inputs, outputs, api_name="generate", show_progress_on=[gallery],
                             preprocess=False)
        submit = prompt.submit(on_generate, inputs, outputs, api_visibility="private",
                               show_progress_on=[gallery], preprocess=False)
        # Stop skips the queue (it must get through while a generation holds the one slot), flags the running
        # generation of this visitor, and cancels their queued ones.
        stop.click(on_stop, None, [info], queue=False, cancels=[run, submit], api_visibility="private")
    return demo


def create_app(model: str | None = None, device: str | None = "auto", limits: Limits = Limits(),
               examples: list[str] | None = None):
    """Load `model` once and return the queued Gradio page (call `.launch()` on it), as `serve` and a Space do."""
    if model is not None and not str(model).strip():
        raise ValueError("The model is empty: pass a pipeline folder, a hub repo id or preset:NAME, or leave it "
                         "out for the default model.")
    quiet_gradio()  # before diffusers brings in huggingface_hub, which reads its telemetry switch on import
    from latentdiff.loading import load_model

    app = App(load_model(model, device=device), limits, examples)
    demo = build_demo(app)
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    demo.latentdiff_app = app  # for tests and for launch(allowed_paths=...)
    return demo


def launch(demo, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve `demo` on host:port (loopback by default): no share link, no server-side rendering, no analytics.

    show_error: what Gradio itself refuses before our handler runs (an API call with too few values) is answered
    with its message rather than `{"error": null}`; our own refusals are gr.Error lines either way."""
    import gradio as gr

    return demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, mcp_server=False,
                       enable_monitoring=False, show_error=True, quiet=not block, prevent_thread_lock=not block,
                       allowed_paths=[str(demo.latentdiff_app.out_dir)], footer_links=["api", "settings"],
                       theme=gr.themes.Default(), css=CSS)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # what Ctrl-C raises: Gradio's blocking launch then closes its server and returns


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, device: str | None = "auto",
          limits: Limits = Limits()) -> None:
    """`latentdiff serve`: load the model, print the address, serve until interrupted (Ctrl-C, or SIGTERM from a
    service manager or `kill`); the temporary folder of generated images is removed either way."""
    main_thread = threading.current_thread() is threading.main_thread()  # (signal handlers live there only)
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    demo = None
    try:
        demo = create_app(model, device, limits)
        launch(demo, host, port, block=True)
    finally:
        if demo is not None:
            demo.close(verbose=False)
            demo.latentdiff_app.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
