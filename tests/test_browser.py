"""`latentdiff serve` in a real browser: Debian's headless Chromium driven by Playwright, on 127.0.0.1 only.

Run with `pytest -m browser` (the default run deselects these). Needs `apt-get install chromium` and
`pip install -e ".[app]"`; never `playwright install` (its browser download does not work offline).
Set LATENTDIFF_SCREENSHOTS=DIR to keep the screenshots (README's assets/screenshots/serve.png is one).
"""

import contextlib
import io
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from latentdiff.images import PARAMETERS_KEY, read_parameters

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000  # generous: CI shares 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback(host) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost",)


@pytest.fixture(scope="module")
def outbound():
    """Every connection or name lookup this process makes to anything but loopback (the server runs in it)."""
    seen = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            seen.append(address)
            raise OSError(f"test: blocked a connection to {address}")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host if isinstance(host, str) else host.decode()):
            seen.append(host)
            raise socket.gaierror(f"test: blocked a lookup of {host}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_getaddrinfo
    yield seen
    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo


@pytest.fixture(scope="module")
def server(outbound):
    """The app on a free loopback port in this process (threads), tiny random-weight model, queue of one."""
    pytest.importorskip("gradio")
    from latentdiff.app import Limits, create_app, launch

    demo = create_app("preset:tiny", device="cpu", limits=Limits(queue_size=1))
    port = free_port()
    launch(demo, port=port, block=False)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A fresh headless Chromium profile; every request to anything but 127.0.0.1 is recorded and aborted."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium")
    blocked = []

    def route(r):
        if r.request.url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1280, "height": 960}, accept_downloads=True)
        context.set_default_timeout(TIMEOUT_MS)
        context.route("**/*", route)
        context.blocked = blocked
        yield context
        context.close()


def open_page(browser, url):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


def set_number(page, elem_id, value):
    """Type into the number box of a slider or number field, as a person does (then leave the box)."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def screenshot(page, path: Path) -> Path:
    page.screenshot(path=path, full_page=True)
    keep = os.environ.get("LATENTDIFF_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def toast_text(page) -> str:
    toast = page.locator("[data-testid='toast-body']").first
    toast.wait_for()
    return toast.inner_text()


def test_generate_in_the_browser(server, browser, tmp_path, report):
    url, _ = server
    page = open_page(browser, url)
    page.locator("#prompt textarea").fill("a red circle above a blue square")
    page.locator("#negative textarea").fill("green")
    page.locator("#random-seed input[type=checkbox]").uncheck()
    page.locator("#seed input").fill("7")
    set_number(page, "steps", 4)
    set_number(page, "width", 24)
    set_number(page, "height", 16)
    set_number(page, "num-images", 2)
    start = time.perf_counter()
    page.click("#generate")
    page.locator("#summary").get_by_text("2 images in").wait_for()
    images = page.locator("#gallery img")
    images.first.wait_for()
    report(f"browser: 2 images generated and shown in {time.perf_counter() - start:.1f} s")
    shot = screenshot(page, tmp_path / "serve.png")
    assert Image.open(shot).size[0] == 1280

    # The images the page shows are the PNGs, chunk and all: fetch each one as the browser does.
    sources = [images.nth(i).get_attribute("src") for i in range(images.count())]
    assert len(sources) == 2
    for i, src in enumerate(sources):
        body = page.request.get(src if src.startswith("http") else url.rstrip("/") + src).body()
        assert body[:8] == b"\x89PNG\r\n\x1a\n"
        path = tmp_path / f"served-{i}.png"
        path.write_bytes(body)
        with Image.open(io.BytesIO(body)) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size == (24, 16) and image.mode == "RGB"
        params = read_parameters(path)
        assert params == {"prompt": "a red circle above a blue square", "negative_prompt": "green",
                          "sampler": "DPMSolverMultistepScheduler", "steps": 4, "guidance": 7.5, "seed": 7 + i,
                          "num_images": 1, "height": 16, "width": 24, "model": "preset:tiny (random weights)"}

    # The download button hands over the same file.
    images.first.click()
    with page.expect_download() as download:
        page.locator("#gallery button[aria-label='Download'], #gallery a[download]").first.click()
    saved = tmp_path / "downloaded.png"
    download.value.save_as(saved)
    assert read_parameters(saved)["seed"] == 7
    assert Image.open(saved).info[PARAMETERS_KEY]

    # The page shows the time taken and the exact parameters.
    shown = "".join(page.locator("#parameters").inner_text().split())  # the JSON view, without whitespace
    assert '"seed":7,' in shown and '"num_images":2,' in shown and '"width":24' in shown
    assert "2 images in" in page.locator("#summary").inner_text()


def test_random_seed_is_shown(server, browser):
    url, _ = server
    page = open_page(browser, url)
    page.locator("#prompt textarea").fill("3 red squares")
    set_number(page, "steps", 2)
    page.click("#generate")
    page.locator("#summary").get_by_text("1 image in").wait_for()
    summary = page.locator("#summary").inner_text()
    seed = int(page.locator("#seed input").input_value())
    assert f"seed {seed}" in summary


@pytest.mark.parametrize("prompt, field, value, message", [
    ("", "steps", 2, "Write a prompt first"),
    ("a red circle", "width", 18, "multiples of 4"),
], ids=["empty prompt", "size not allowed"])
def test_bad_input_shows_an_error_not_a_traceback(server, browser, tmp_path, prompt, field, value, message):
    url, _ = server
    page = open_page(browser, url)
    page.locator("#prompt textarea").fill(prompt)
    set_number(page, field, value)
    page.click("#generate")
    text = toast_text(page)
    screenshot(page, tmp_path / f"serve-error-{field}.png")
    assert message in text and "Traceback" not in page.content()


def test_steps_out_of_range_are_refused(server, browser):
    """The page's boxes clamp to their range; a client that sends more anyway (Gradio's REST API, as the page's
    "Use via API" shows it) gets a message, not a traceback."""
    import httpx

    url, _ = server
    page = open_page(browser, url)
    set_number(page, "steps", 150)
    assert page.locator("#steps input[type=number]").first.input_value() == "100"
    call = f"{url}gradio_api/call/generate"
    event = httpx.post(call, json={"data": ["a red circle", "", "default", 150, 7.5, 0, False, 16, 16, 1]})
    answer = httpx.get(f"{call}/{event.json()['event_id']}", timeout=60).text
    assert "event: error" in answer and "100" in answer and "Traceback" not in answer, answer


def test_progress_and_stop(server, browser, tmp_path, monkeypatch):
    url, demo = server
    app = demo.latentdiff_app
    forward = app.loaded.pipe.unet.forward

    def slow_forward(*args, **kwargs):  # 100 steps of the tiny UNet take well under a second: make it 5 s
        time.sleep(0.05)
        return forward(*args, **kwargs)

    monkeypatch.setattr(app.loaded.pipe.unet, "forward", slow_forward)
    page = open_page(browser, url)
    page.locator("#prompt textarea").fill("a long one")
    set_number(page, "steps", 100)
    page.click("#generate")
    # The live progress bar, fed step by step from the pipeline's callback_on_step_end.
    page.wait_for_function("() => /denoising/.test(document.querySelector('#gallery').innerText)")
    page.wait_for_function("() => /[1-9]\\d*\\/100 steps/.test(document.querySelector('#gallery').innerText)")
    screenshot(page, tmp_path / "serve-progress.png")
    page.click("#stop")
    _wait(lambda: app._running is None, seconds=30)
    run_dir = max(app.out_dir.iterdir())  # the newest run folder: the stopped one
    assert list(run_dir.iterdir()) == [], "a stopped generation must not write images"
    page.locator("#summary").get_by_text("Stopped").wait_for()
    screenshot(page, tmp_path / "serve-stopped.png")
    assert page.locator("#gallery img").count() == 0
    # The page and the model are free again: the next request runs.
    set_number(page, "steps", 2)
    set_number(page, "num-images", 1)
    page.click("#generate")
    page.locator("#summary").get_by_text("1 image in").wait_for()


def test_full_queue_is_refused_with_a_message(server, browser, tmp_path):
    """One request runs, one waits (queue size 1), the third is turned away with a message."""
    url, demo = server
    app = demo.latentdiff_app
    pages = [open_page(browser, url) for _ in range(3)]
    for page in pages:
        page.locator("#prompt textarea").fill("a queue")
        set_number(page, "steps", 2)
    with app._lock:  # hold the model: the first request starts and waits for it
        pages[0].click("#generate")
        _wait(lambda: len(demo._queue) == 0 and _has_waiter(demo))
        pages[1].click("#generate")
        _wait(lambda: len(demo._queue) == 1)
        pages[2].click("#generate")
        text = toast_text(pages[2])
        screenshot(pages[2], tmp_path / "serve-queue-full.png")
    assert "busy" in text.lower()
    for page in pages[:2]:
        page.locator("#summary").get_by_text("1 image in").wait_for()


def test_nothing_reached_outside(server, browser, outbound):
    """After all the above: neither the page nor the server tried to reach anything but 127.0.0.1."""
    assert browser.blocked == [] and outbound == []


def _has_waiter(demo) -> bool:
    return any(demo._queue.active_jobs)  # a worker has taken the first request


def _wait(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


@contextlib.contextmanager
def served(argv, port, cwd=None, **env):
    """Run a server command in a subprocess until it listens on 127.0.0.1:port; stop it afterwards.

    Its output goes to a file (a pipe nobody reads could fill up and stall it) and is printed when the test fails.
    """
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the server stopped"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.seek(0)
        print(log.read())  # shown by pytest for a failed test only
        log.close()


def listening_addresses(port) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) of the sockets listening on `port`."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            rows += [line.split() for line in Path(table).read_text().splitlines()[1:]]
    return [r[1].rsplit(":", 1)[0] for r in rows if r[1].endswith(f":{port:04X}") and r[3] == "0A"]


def test_serve_command_binds_loopback(browser):
    """`latentdiff serve` as a user types it: by default it listens on 127.0.0.1 only, and the page loads."""
    port = free_port()
    with served([sys.executable, "-m", "latentdiff.cli", "serve", "--model", "preset:tiny", "--port", str(port)],
                port):
        assert listening_addresses(port) == ["0100007F"]  # 127.0.0.1, nothing else
        page = open_page(browser, f"http://127.0.0.1:{port}/")
        assert page.title() == "latentdiff"


def test_space_template_runs_next_to_a_model(browser, tmp_path):
    """The Space template, copied unchanged as app.py into a saved model folder, serves that model."""
    from playwright import sync_api

    from latentdiff import app_space, build_pipeline

    build_pipeline("tiny", seed=1).save_pretrained(tmp_path)
    shutil.copy(app_space.__file__, tmp_path / "app.py")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "space.jsonl").write_text('{"prompt": "a yellow star in the space"}\n')
    port = free_port()
    with served([sys.executable, "app.py"], port, cwd=tmp_path, GRADIO_SERVER_PORT=str(port)):
        page = open_page(browser, f"http://127.0.0.1:{port}/")
        assert str(tmp_path) in page.locator("body").inner_text()  # the model is the Space's own folder
        page.get_by_text("a yellow star in the space").click()  # its example prompt
        # An example reaches the prompt through a round trip to the server: wait for it, as a person would.
        sync_api.expect(page.locator("#prompt textarea")).to_have_value("a yellow star in the space")
        set_number(page, "steps", 2)
        page.click("#generate")
        page.locator("#summary").get_by_text("1 image in").wait_for()
        src = page.locator("#gallery img").first.get_attribute("src")
        body = page.request.get(src if src.startswith("http") else f"http://127.0.0.1:{port}{src}").body()
        (tmp_path / "out.png").write_bytes(body)
        params = read_parameters(tmp_path / "out.png")
        assert params["prompt"] == "a yellow star in the space" and params["model"] == str(tmp_path)
