"""Issue 18 items 12 and 14: the app serves on 127.0.0.1 only (from the repository's
.streamlit/config.toml), launching is off on a non-loopback server, and the launcher confines paths
(local-dir: backbones, pretrained files, data roots) to the configured roots without revealing
whether a path outside them exists. The CLI itself still takes any path."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workbench import launcher
from process_helpers import stop_process_group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "main.py"


# ------------------------------------------------------------------------------------------------
# item 12: bind address
# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    out.append(address)
    return out


LOOPBACK_HEX = {"0100007F",  # 127.0.0.1
                "00000000000000000000000001000000"}  # ::1


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_streamlit_run_from_the_repo_root_listens_on_loopback_only(tmp_path):
    """`streamlit run app/main.py` with no address option: the repo's config binds 127.0.0.1."""
    pytest.importorskip("streamlit")
    assert 'address = "127.0.0.1"' in (REPO / ".streamlit" / "config.toml").read_text()
    port = _free_port()
    log = tmp_path / "streamlit.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    env.update(WORKBENCH_RUNS=str(tmp_path / "runs"), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
                                 "--server.fileWatcherType", "none"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, healthy = time.time() + 120, False
        while time.time() < deadline and not healthy:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                    healthy = r.status == 200
            time.sleep(0.5)
        assert healthy, log.read_text()[-3000:]
        addresses = _listening(port)
        assert addresses and set(addresses) <= LOOPBACK_HEX, addresses  # never 0.0.0.0 / ::
        text = log.read_text()
        assert "Network URL" not in text and "External URL" not in text, text
    finally:
        stop_process_group(proc)


def test_launching_needs_a_loopback_server_or_an_explicit_opt_in(monkeypatch):
    monkeypatch.delenv(launcher.REMOTE_LAUNCH_ENV, raising=False)
    for address in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2", "unix:///tmp/wb.sock"):
        assert launcher.serving_allowed(address), address
    for address in (None, "", "0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not launcher.serving_allowed(address), address
    monkeypatch.setenv(launcher.REMOTE_LAUNCH_ENV, "1")  # behind an authenticating proxy
    assert launcher.serving_allowed("0.0.0.0") and not launcher.loopback_only("0.0.0.0")


def test_launch_page_is_off_on_a_non_loopback_server(monkeypatch, tmp_path):
    pytest.importorskip("streamlit")
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv(launcher.REMOTE_LAUNCH_ENV, raising=False)
    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(APP), default_timeout=240).run()
        at.switch_page("views/launch.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert "Launching is off" in at.error[0].value and not at.get("form")
        assert any("not only localhost" in w.value for w in at.sidebar.warning)
    finally:
        config.set_option("server.address", old)


# ------------------------------------------------------------------------------------------------
# item 14: paths confined to the configured roots
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def roots(monkeypatch, tmp_path):
    """A data root, an extra allowed root with a weights file and a local-dir model, and an outside folder."""
    data, extra, outside = tmp_path / "data", tmp_path / "extra", tmp_path / "outside"
    for folder in (data, extra / "model", outside / "model"):
        folder.mkdir(parents=True)
    (extra / "weights.bin").write_bytes(b"w")
    (outside / "weights.bin").write_bytes(b"w")
    for model in (extra / "model", outside / "model"):
        (model / "open_clip_config.json").write_text("{}")
    (extra / "escape").symlink_to(outside)
    monkeypatch.setenv("WORKBENCH_DATA", str(data))
    monkeypatch.setenv(launcher.ALLOWED_ROOTS_ENV, os.pathsep.join([str(extra), ""]))
    return data, extra, outside


def _req(**changes) -> launcher.LaunchRequest:
    base = dict(method="zeroshot", protocol="few_shot", datasets=("toy_objects",), shots=4, seeds=(1,),
                backbone="ViT-B-16-quickgelu")
    return launcher.LaunchRequest(**{**base, **changes})


def test_allowed_roots_are_models_data_and_the_extra_list(roots):
    from workbench.paths import models_dir

    data, extra, _ = roots
    assert launcher.allowed_roots() == [models_dir().resolve(), data.resolve(), extra.resolve()]


@pytest.mark.parametrize("changes", [
    dict(backbone="local-dir:/etc"),
    dict(backbone="local-dir:/root/.ssh"),
    dict(pretrained="app/../../../../etc/passwd"),
    dict(pretrained="/etc/passwd"),
    dict(pretrained="~root/.ssh/id_rsa"),
    dict(data_root="/etc"),
])
def test_launcher_refuses_system_paths(roots, changes):
    errors = launcher.validate(_req(**changes))
    assert len(errors) == 1 and "paths must be under the configured roots: " in errors[0], errors
    assert str(roots[0].resolve()) in errors[0] and str(roots[1].resolve()) in errors[0]


def test_symlinks_and_dotdot_are_resolved_before_the_check(roots):
    data, extra, outside = roots
    for changes in (dict(backbone=f"local-dir:{extra}/escape/model"), dict(pretrained=f"{extra}/escape/weights.bin"),
                    dict(pretrained=f"{extra}/../outside/weights.bin"), dict(data_root=f"{data}/../outside"),
                    dict(data_root=f"{extra}/escape")):
        errors = launcher.path_errors(_req(**changes))
        assert len(errors) == 1 and "must be under the configured roots" in errors[0], (changes, errors)


def test_an_outside_path_is_refused_the_same_whether_it_exists_or_not(roots):
    _, _, outside = roots
    for field, existing, missing in (("backbone", f"local-dir:{outside}/model", f"local-dir:{outside}/nothing"),
                                     ("pretrained", f"{outside}/weights.bin", f"{outside}/nothing.bin"),
                                     ("data_root", str(outside), f"{outside}/nothing")):
        (a,) = launcher.path_errors(_req(**{field: existing}))
        (b,) = launcher.path_errors(_req(**{field: missing}))
        assert a.replace(existing, "X") == b.replace(missing, "X"), (a, b)


def test_paths_under_the_roots_and_tags_are_accepted(roots):
    data, extra, _ = roots
    assert launcher.path_errors(_req(pretrained="openai")) == []  # a tag, not a path
    assert launcher.path_errors(_req(pretrained="laion2b_s34b_b79k")) == []
    assert launcher.path_errors(_req(pretrained=f"{extra}/weights.bin")) == []
    assert launcher.path_errors(_req(backbone=f"local-dir:{extra}/model")) == []
    assert launcher.path_errors(_req(data_root=str(data))) == []
    # inside the roots, a problem may be named precisely
    assert "does not exist" in launcher.path_errors(_req(pretrained=f"{extra}/missing.bin"))[0]
    assert "is not a folder" in launcher.path_errors(_req(data_root=f"{data}/missing"))[0]
    assert "no open_clip_config.json" in launcher.path_errors(_req(backbone=f"local-dir:{data}"))[0]
    # a word that is no open_clip tag is not taken for a file either
    assert "neither a known open_clip tag" in launcher.path_errors(_req(pretrained="passwd"))[0]


def test_a_tag_shaped_name_of_a_file_in_the_working_directory_is_a_path(roots, monkeypatch):
    """`workbench run` loads an existing file before trying tags: so a file named like a tag counts as a path."""
    _, _, outside = roots
    monkeypatch.chdir(outside)
    (outside / "openai").write_bytes(b"w")
    (error,) = launcher.path_errors(_req(pretrained="openai"))
    assert "must be under the configured roots" in error


def test_the_cli_still_takes_any_path(tmp_path, capsys):
    """Only the launcher (the app) confines paths: `workbench run` is for a trusted shell user."""
    from workbench.cli import main

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"w")
    code = main(["run", "--dry-run", "--method=zeroshot", "--protocol=few_shot", "--dataset", "toy_objects",
                 "--shots=4", "--backbone=ViT-B-16-quickgelu", f"--pretrained={outside / 'weights.bin'}",
                 f"--registry={tmp_path / 'runs'}"])
    assert code == 0 and "[new]" in capsys.readouterr().out


def test_a_template_set_is_a_known_name_not_a_path(roots):
    ok = _req(method="kgcoop", settings=("method.template_set=kgcoop",))
    assert launcher.path_errors(ok) == []
    bad = _req(method="kgcoop", settings=("method.template_set=../../../../etc/passwd",))
    (error,) = launcher.path_errors(bad)
    assert "unknown template set" in error
