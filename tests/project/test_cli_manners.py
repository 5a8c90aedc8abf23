"""The `onediffusion` command as a user meets it: one-line errors naming what to change, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings, SettingsError
from tests.paths import ROOT
from tests.service.harness import free_port

CLI = [sys.executable, str(ROOT / "cli.py")]


def cli(*args: str, cwd: Path, stdin=None, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PORT", "PUBLIC_URL", "HOST")}
    environment.update(env)
    return subprocess.run(CLI + list(args), cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_public_url_follows_host_and_port():
    assert Settings.from_env({"PORT": "8731"}).public_url == "http://127.0.0.1:8731"
    assert Settings.from_env({"HOST": "0.0.0.0", "PORT": "9000"}).public_url == "http://127.0.0.1:9000"
    # a proxy in front keeps its own
    assert Settings.from_env({"PORT": "8731", "PUBLIC_URL": "https://gen.example.com"}).public_url == "https://gen.example.com"


def test_bad_setting_names_the_variable(tmp_path):
    with pytest.raises(SettingsError, match=r"PORT='abc'"):
        Settings.from_env({"PORT": "abc"})
    line = one_line_error(cli("serve", cwd=tmp_path, PORT="abc"))
    assert "PORT='abc'" in line and "integer" in line


def test_missing_image_is_one_line(tmp_path):
    line = one_line_error(cli("run", "depth-estimation", "--image", "nope.jpg", cwd=tmp_path))
    assert "nope.jpg" in line
    assert not (tmp_path / "var").exists()


def test_validation_error_names_the_field(tmp_path):
    line = one_line_error(cli("run", "text-to-image", "--prompt", "a cat", "--width", "1000", cwd=tmp_path))
    assert "width" in line and "16" in line


def test_keys_list_with_redis_down(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    line = one_line_error(cli("keys", "list", cwd=tmp_path, REDIS_URL=url))
    assert "REDIS_URL" in line and url in line


def test_run_help_lists_the_tasks(tmp_path):
    result = cli("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for task in ("text-to-image", "depth-estimation", "camera-pose-estimation", "image-to-multiview"):
        assert f"  {task} " in result.stdout


def test_broken_pipe_is_quiet(tmp_path):
    process = subprocess.Popen(CLI + ["settings"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader goes away at once, as `| head -0` would
    _, err = process.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


@pytest.mark.slow
def test_run_shows_a_progress_bar_and_says_where_files_go(tmp_path, demo_checkpoint):
    out = tmp_path / "out"
    result = cli("run", "text-to-image", "--prompt", "a red cube", "--width", "64", "--height", "64", "--steps", "3",
                 "--seed", "1", "--checkpoint", str(demo_checkpoint), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3/3" in result.stderr and "step" in result.stderr  # tqdm's bar
    assert f"outputs in {out.resolve()}" in result.stderr
    assert (out / "result.json").is_file() and not (tmp_path / "var").exists()


def test_dotenv_file_and_current_values(tmp_path):
    (tmp_path / ".env").write_text("PORT=8799\nURL_SIGNING_SECRET=not-to-be-shown\nMAX_STEPS=50\n")
    result = cli("settings", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert {"PORT=8799", "PUBLIC_URL=http://127.0.0.1:8799", "MAX_STEPS=50", "URL_SIGNING_SECRET=[set]"} <= lines
    assert "not-to-be-shown" not in result.stdout
    assert "PORT=9100" in cli("settings", cwd=tmp_path, PORT="9100").stdout.splitlines()  # the environment wins
    (tmp_path / ".env").write_text("MAX_STEPS=many\n")
    line = one_line_error(cli("settings", cwd=tmp_path))
    assert "MAX_STEPS='many'" in line
    table = cli("settings", "--table", cwd=tmp_path).stdout
    assert table.startswith("| variable | default | meaning |") and "| `PORT` | `8000` |" in table
