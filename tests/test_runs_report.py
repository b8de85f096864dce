"""Issue 31 end to end: `arctic runs` tells finished, stopped (SIGTERM), failed, running and killed
runs apart; `arctic report` of two quickstart runs with different learning rates is a
self-contained HTML page that headless Chromium opens with every plot drawn, and `--text` fits 80
columns; every metrics line has TFLOPS (no MFU on a CPU).

The runs are the bundled quickstart cut to a few steps, trained in this process through the real
`arctic` command; the stopped and the failed run use trainers from a `code:` file (as a user's
project would) that send SIGTERM to their own process, or raise, in step 3.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from transformers import AutoConfig

from arctic_core.cli import main
from arctic_core.engine.flops import FlopsCounter
from arctic_core.engine.runlock import LOCK_FILE, RunLock

pytestmark = pytest.mark.slow  # four short training runs (26 s wall, 2-core CPU under load)

QUICKSTART = Path(__file__).parents[1] / "packages" / "sft" / "recipes" / "quickstart.toml"
STEPS = 12

USER_CODE = """
import os
import signal

from arctic_sft.trainer import SFTTrainer


class SigtermAtStep3(SFTTrainer):
    name = "report_sigterm"

    def before_optimizer_step(self):
        if self.global_step + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)


class FailsAtStep3(SFTTrainer):
    name = "report_fails"

    def before_optimizer_step(self):
        if self.global_step + 1 == 3:
            raise RuntimeError("step 3 went wrong")
"""


def arctic(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0)


def train(root: Path, name: str, *sets: str) -> int:
    rows = root.parent / "train.jsonl"  # the quickstart's first rows: tokenized in a blink
    if not rows.exists():
        lines = (QUICKSTART.parent / "quickstart" / "train.jsonl").read_text().splitlines()
        rows.write_text("\n".join(lines[: STEPS * 32]) + "\n")
    overrides = [
        f"logger.output_dir={root / name}",
        f'data.sources=["{rows}"]',
        f"exit_iteration={STEPS}",
        "generation_eval.before_training=false",
        "generation_eval.after_training=false",
        "logger.progress_bar=false",
        *sets,
    ]
    return arctic("train", str(QUICKSTART), *[arg for o in overrides for arg in ("--set", o)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("report") / "runs"
    root.mkdir()
    code = root.parent / "train.py"
    code.write_text(USER_CODE)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        first = train(root, "lr3e-3")
    codes = {
        "lr3e-3": first,
        "lr1e-3": train(root, "lr1e-3", "optimizer.lr=1e-3"),
        "stopped": train(root, "stopped", "type=report_sigterm", f"code={code}"),
        "failed": train(root, "failed", "type=report_fails", f"code={code}"),
    }
    return {"root": root, "codes": codes, "said": said.getvalue()}


def test_arctic_runs_tells_each_status(runs, capsys):
    root: Path = runs["root"]  # type: ignore[assignment]
    assert runs["codes"] == {"lr3e-3": 0, "lr1e-3": 0, "stopped": 128 + signal.SIGTERM, "failed": 1}
    killed = root / "killed"  # a run whose process died without a word (SIGKILL): its lock is left
    shutil.copytree(root / "failed", killed)
    (killed / "status.json").unlink()
    gone = _dead_pid()
    (killed / LOCK_FILE).write_text(
        json.dumps(
            {"pid": gone, "host": socket.gethostname(), "started": time.time(), "command": "arctic train"}
        )
    )
    capsys.readouterr()
    with RunLock(root / "lr1e-3"):  # held by this live process: that run is running
        assert arctic("runs", str(root)) == 0
    out = capsys.readouterr().out
    table = {line.split()[0]: line.split() for line in out.splitlines()[1:] if not line.startswith(" ")}
    assert table["lr3e-3"][1:4] == ["sft", "finished", str(STEPS)]
    assert table["lr1e-3"][1:4] == ["sft", "running", str(STEPS)]
    assert table["stopped"][1:4] == ["report_sigterm", "stopped", "3"]
    assert table["failed"][1:4] == ["report_fails", "failed", "2"]  # step 3 never completed
    assert table["killed"][2] == "failed"
    assert "stopped: stopped, step 3: SIGTERM: stopped after step 3;" in out
    assert (
        "failed: failed, step 2: stopped by an unexpected RuntimeError during training: step 3 went wrong"
        in out
    )
    assert f"killed: failed, step 2: its process is gone (pid {gone} " in out
    assert str(root / "lr3e-3" / "checkpoints") in table["lr3e-3"][-1]
    tokens = sum(json.loads(line)["tokens"] for line in (root / "lr3e-3" / "metrics.jsonl").open())
    assert table["lr3e-3"][5] == f"{tokens / 1000:.1f}K"


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_finished_train_says_how_to_report_and_metrics_have_tflops(runs):
    root: Path = runs["root"]  # type: ignore[assignment]
    assert f"arctic report {root / 'lr3e-3'}" in runs["said"]  # type: ignore[operator]
    status = json.loads((root / "lr3e-3" / "status.json").read_text())
    assert status["status"] == "finished" and status["step"] == STEPS
    records = [json.loads(line) for line in (root / "lr3e-3" / "metrics.jsonl").open()]
    counter = FlopsCounter.from_config(
        AutoConfig.from_pretrained(QUICKSTART.parent / "quickstart" / "tiny-model")
    )
    for record in records:
        assert "mfu" not in record  # no peak is known on a CPU
        flops = record["tflops"] * record["seconds"] * 1e12
        lowest = 3 * record["tokens"] * counter.linear_per_token()
        assert lowest < flops < lowest * 50, record


def test_report_html_opens_in_chromium_with_every_plot_drawn(runs, tmp_path, capsys):
    root: Path = runs["root"]  # type: ignore[assignment]
    page = tmp_path / "report.html"
    assert arctic("report", str(root / "lr3e-3"), str(root / "lr1e-3"), "--output", str(page)) == 0
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)  # self-contained
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)
    titles = [title for title, _ in images]
    for wanted in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops", "peak_memory_gb"):
        assert wanted in titles
    import matplotlib.image

    for title, data in images:
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 100 and pixels.std() > 0.05, title  # drawn, not blank
    assert "optimizer.lr" in html and "0.003" in html and "0.001" in html  # the recipes' difference
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the page was checked without it")
    probe = tmp_path / "probe.html"  # the page plus a script that reports what the browser decoded
    script = (
        "<script>window.addEventListener('load', () => { const i = [...document.images]; "
        "document.title = 'decoded ' + i.filter(x => x.complete && x.naturalWidth > 0).length "
        "+ ' of ' + i.length; });</script>"
    )
    probe.write_text(html.replace("</body>", script + "</body>"))
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"<title>decoded {len(images)} of {len(images)}</title>" in done.stdout, done.stdout[:500]
    assert not re.search(r"Uncaught|Failed to load resource|ERR_", done.stderr), done.stderr[-3000:]


def test_report_text_fits_80_columns(runs, capsys):
    root: Path = runs["root"]  # type: ignore[assignment]
    capsys.readouterr()
    assert (
        arctic("report", str(root / "lr3e-3"), str(root / "lr1e-3"), "--text", "--peak-tflops", "1e-3") == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    first = [json.loads(line) for line in (root / "lr3e-3" / "metrics.jsonl").open()]
    loss = lines.index(next(line for line in lines if line.startswith("loss ")))
    curve = lines[loss + 1]
    assert curve.lstrip().startswith("lr3e-3") and curve.endswith(
        f"{first[0]['loss']:.3g} -> {first[-1]['loss']:.3g}"
    )
    assert len(curve.split()[1]) == STEPS  # one mark per step (fewer steps than the width)
    assert any(line.startswith("mfu ") for line in lines)  # from tflops over --peak-tflops


def test_report_without_matplotlib_says_what_to_install(runs, monkeypatch, capsys, tmp_path):
    root: Path = runs["root"]  # type: ignore[assignment]
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as if not installed
    assert arctic("report", str(root / "lr3e-3"), "--output", str(tmp_path / "r.html")) == 2
    err = capsys.readouterr().err
    assert "pip install 'arctic-core[report]'" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()
