"""deploy_triton.py owns its model repository: each run serves only its own two models, never what an earlier
run (or anyone else) left there."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import HF, ROOT, Server

sys.path.insert(0, str(ROOT / "scripts"))
from deploy_triton import DEFAULT_REPO  # noqa: E402

DEPLOY = [sys.executable, str(ROOT / "scripts/deploy_triton.py")]


def index(server):
    req = urllib.request.Request(f"http://{server.url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return {m["name"]: m.get("state", "") for m in json.loads(r.read())}


def serve(request, tmp_path, name, args):
    s = Server(name, ["--hf_checkpoint", str(HF)] + args, tmp_path)
    request.config._llama_servers.append(s)
    request.addfinalizer(s.stop)
    return s


def test_two_runs_in_a_row_serve_only_their_own_models(request, tmp_path):
    repo = tmp_path / "shared_repo"
    first = serve(request, tmp_path, "deploy_first", ["-tmr", str(repo), "-tmn", "first"])
    assert index(first) == {"first": "READY", "first_stream": "READY"}
    first.stop()
    second = serve(request, tmp_path, "deploy_second", ["-tmr", str(repo), "-tmn", "second"])
    assert index(second) == {"second": "READY", "second_stream": "READY"}
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["second", "second_stream"]


def test_foreign_models_are_refused_or_left_unloaded(request, tmp_path):
    repo = tmp_path / "user_repo"
    (repo / "someone_elses/1").mkdir(parents=True)
    (repo / "someone_elses/config.pbtxt").write_text('backend: "llama"\nmax_batch_size: 1\n')
    args = ["-tmr", str(repo), "--hf_checkpoint", str(HF), "--write_only"]
    out = subprocess.run(DEPLOY + args, capture_output=True, text=True)
    assert out.returncode != 0 and "someone_elses" in out.stderr and "--keep_other_models" in out.stderr, out
    s = serve(request, tmp_path, "deploy_keep", ["-tmr", str(repo), "-tmn", "mine", "--keep_other_models"])
    models = index(s)
    assert {n for n, state in models.items() if state == "READY"} == {"mine", "mine_stream"}, models
    assert "someone_elses" in models and (repo / "someone_elses/config.pbtxt").exists()


def test_default_repository_is_emptied_first():
    stale = Path(DEFAULT_REPO) / "yesterdays_demo/1"
    stale.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        DEPLOY + ["--hf_checkpoint", str(HF), "-tmn", "tl", "--write_only"], capture_output=True, text=True
    )
    assert out.returncode == 0, out
    assert sorted(p.name for p in stale.parents[1].iterdir()) == ["tl", "tl_stream"]
