"""Hostile use of the `latentdiff serve` web API (issue 17): non-numeric values and too few inputs are answered with
the message in the API response (not `{"error": null}`), and SIGTERM leaves no temporary folder behind.

Marked `browser` because they need the app extra (Gradio), which .ci/run installs for the browser tests; they use
no browser: the API is called over HTTP on loopback, in-process, and `serve` runs as a subprocess.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.browser

GOOD = ["a red circle", "", "default", 2, 5.0, 3, False, 16, 16, 1]  # the generate API's ten inputs, in order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api():
    """call(data) -> (event, payload) of the served page's `generate` API, answered by a tiny random model."""
    pytest.importorskip("gradio")
    import httpx

    from latentdiff.app import create_app, launch

    demo = create_app("preset:tiny", device="cpu", examples=["a red circle"])
    _, url, _ = launch(demo, port=free_port(), block=False)

    def call(data):
        posted = httpx.post(f"{url}gradio_api/call/generate", json={"data": data}, timeout=60)
        posted.raise_for_status()
        answer = httpx.get(f"{url}gradio_api/call/generate/{posted.json()['event_id']}", timeout=300).text
        event = next(line.split(": ", 1)[1] for line in answer.splitlines() if line.startswith("event: "))
        payload = [line.split(": ", 1)[1] for line in answer.splitlines() if line.startswith("data: ")][-1]
        return event, json.loads(payload)

    yield call
    demo.close(verbose=False)
    demo.latentdiff_app.close()


def test_a_good_request_still_generates(api):
    event, payload = api(GOOD)
    assert event == "complete"
    gallery, seed, summary, parameters = payload
    assert seed == 3 and len(gallery) == 1 and summary.startswith("1 image in ")
    assert (parameters["steps"], parameters["width"], parameters["prompt"]) == (2, 16, "a red circle")


@pytest.mark.parametrize("index, value, message", [
    (3, "abc", "Steps must be a whole number, got 'abc'."),
    (3, 10**9, "Steps must be between 1 and 100, got 1000000000."),
    (4, "strong", "Guidance must be a number, got 'strong'."),
    (5, "xyz", "Seed must be a whole number, got 'xyz'."),
    (7, "big", "Width must be a whole number, got 'big'."),
    (8, None, "Height must be a whole number, got None."),
    (9, 2.5, "Number of images must be a whole number, got 2.5."),
])
def test_bad_values_are_answered_with_the_message(api, index, value, message):
    data = list(GOOD)
    data[index] = value
    event, payload = api(data)
    assert event == "error" and payload["error"] == message


def test_too_few_inputs_are_answered_with_the_message(api):
    event, payload = api(["a red circle"])
    assert event == "error"
    assert payload["error"].splitlines()[0] == ("An event handler (on_generate) didn't receive enough input values "
                                                "(needed: 10, got: 1).")


def test_sigterm_removes_the_temporary_folder(tmp_path):
    pytest.importorskip("gradio")
    import httpx

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    env = os.environ | {"TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    server = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", "serve", "--model", "preset:tiny",
                               "--device", "cpu", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:  # until the page answers
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "serve did not start in 180 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert len(list(tmp.glob("latentdiff-serve-*"))) == 1
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert list(tmp.glob("latentdiff-serve-*")) == [], output
    assert "Traceback" not in output
