"""The commands of deploy/ run for real: deploy_triton.py with the Deployment's arguments, probed as the kubelet
would through loading, serving and a SIGTERM drain; a fatal engine error taking the server out; tritonserver with
the KServe ServingRuntime's arguments on the repository its Job writes. Only what a CPU test machine needs is
changed: the fixture checkpoint, --device cpu, its shorter lengths and free ports."""

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from conftest import CLI, HF, LOGS, NEMO, ROOT, cli_generate, finish_stream, stop_process, stream_request, wait_for

sys.path.insert(0, str(ROOT / "scripts"))
import deploy_triton  # noqa: E402
from tl_ports import free_ports  # noqa: E402

DEPLOY = ROOT / "deploy"
TIMEOUT = 90


def manifest(rel, kind):
    return next(d for d in yaml.safe_load_all((DEPLOY / rel).read_text()) if d and d["kind"] == kind)


def pod_container(rel, kind):
    doc = manifest(rel, kind)
    return (doc["spec"]["template"]["spec"] if kind != "ServingRuntime" else doc["spec"])["containers"][0]


def replaced(args, values):
    """`args` with the value after each flag in `values` replaced (a flag mapped to None is dropped with it)."""
    out, i = [], 0
    while i < len(args):
        if args[i] in values:
            if values[args[i]] is not None:
                out += [values[args[i]][0], values[args[i]][1]]
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def status(url):
    """The HTTP status of a GET, or None when nothing answers (what a kubelet's httpGet probe sees)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def probe_ok(url):
    s = status(url)
    return s is not None and 200 <= s < 400  # the kubelet's rule for httpGet


def generate(http, body, model):
    req = urllib.request.Request(
        f"http://localhost:{http}/v2/models/{model}/generate", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


class Pod:
    """deploy_triton.py started with the Deployment's container arguments (the image's entry point)."""

    def __init__(self, name, tmp, env=None):
        c = pod_container("kubernetes/deployment.yaml", "Deployment")
        self.args = c["args"]
        self.ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        self.model = deploy_triton.parse_args(self.args).triton_model_name
        self.mapped = dict(zip(("http", "grpc", "metrics", "openai"), free_ports(4)))
        args = replaced(
            self.args,
            {
                "--nemo_checkpoint": ("--hf_checkpoint", str(HF)),
                "--device": ("--device", "cpu"),
                "--max_input_len": ("--max_input_len", "64"),
                "--max_output_len": ("--max_output_len", "192"),
                "--openai_port": ("--openai_port", str(self.mapped["openai"])),
            },
        )
        args += [
            "-tmr",
            str(tmp / "repo"),
            "--triton_port",
            str(self.mapped["http"]),
            "--grpc_port",
            str(self.mapped["grpc"]),
            "--metrics_port",
            str(self.mapped["metrics"]),
        ]
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts/deploy_triton.py"), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **(env or {})),
        )

    def url(self, probe):
        """The URL the kubelet probes: the probe's path on the port its (named) port maps to here."""
        g = self.probes[probe]
        port = g["port"] if isinstance(g["port"], int) else self.ports[g["port"]]
        name = next(n for n, p in self.ports.items() if p == port)
        return f"http://localhost:{self.mapped[name]}{g['path']}"

    def started(self):
        """As the kubelet goes: the startup probe until it passes, then the readiness probe."""
        if not wait_for(lambda: probe_ok(self.url("startupProbe")), TIMEOUT):
            return False
        return probe_ok(self.url("readinessProbe"))

    def openai(self, path):
        return f"http://localhost:{self.mapped['openai']}{path}"

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def test_deployment_probes_through_loading_serving_and_drain(tmp_path):
    gate = tmp_path / "load.gate"  # the load waits while it exists (TL_FAULT_LOAD_GATE): a load as long as needed
    gate.touch()
    pod = Pod("k8s_deployment", tmp_path, env={"TL_FAULT_LOAD_GATE": str(gate)})
    try:
        # Loading: alive, not ready (startup and readiness probes fail), the OpenAI frontend follows Triton.
        assert wait_for(lambda: probe_ok(pod.url("livenessProbe")), TIMEOUT), pod.log_path.read_text()[-3000:]
        assert wait_for(lambda: status(pod.openai("/health/live")) == 200, TIMEOUT)
        # Triton has begun the load (held by the gate): from here on nothing may read as ready.
        assert wait_for(lambda: f'"loading: {pod.model}:1"' in pod.log_path.read_text(), TIMEOUT)
        for _ in range(10):
            assert probe_ok(pod.url("livenessProbe"))
            assert not probe_ok(pod.url("startupProbe")) and not probe_ok(pod.url("readinessProbe"))
            assert status(pod.openai("/health/ready")) == 503
            assert status(f"http://localhost:{pod.mapped['http']}/v2/health/ready") != 200

        # Serving: the load goes on; ready once both models are in.
        gate.unlink()
        assert pod.started(), pod.log_path.read_text()[-3000:]
        assert probe_ok(pod.url("livenessProbe"))
        assert wait_for(lambda: status(pod.openai("/health/ready")) == 200, TIMEOUT)
        code, r = generate(pod.mapped["http"], {"text_input": "Hello", "max_tokens": 4}, pod.model)
        assert code == 200 and r["text_output"], r
        # The series the autoscaler's adapter rules read are exported, per model.
        values = yaml.safe_load((DEPLOY / "kubernetes/prometheus-adapter-values.yaml").read_text())
        with urllib.request.urlopen(f"http://localhost:{pod.mapped['metrics']}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        for rule in values["rules"]["custom"]:
            series = rule["seriesQuery"].split("{")[0]
            assert f'{series}{{model="{pod.model}"' in metrics, series
        assert f'llama_engine_up{{model="{pod.model}",version="1"}} 1' in metrics

        # SIGTERM (the kubelet's, after preStop): the running stream finishes, readiness goes at once, a new
        # request is refused, and the process exits 0 well inside the grace period.
        client, q = stream_request(f"localhost:{pod.mapped['grpc']}", pod.model + "_stream", 150)
        result, error = q.get(timeout=TIMEOUT)
        assert error is None, error
        pod.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: not probe_ok(pod.url("readinessProbe")), 10)
        assert wait_for(lambda: status(pod.openai("/health/ready")) != 200, 10)
        code, r = generate(pod.mapped["http"], {"text_input": "Hi", "max_tokens": 4}, pod.model)
        assert code != 200, r
        assert finish_stream(q, result, TIMEOUT) == (150, "length")
        client.stop_stream()
        client.close()
        grace = manifest("kubernetes/deployment.yaml", "Deployment")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        assert pod.proc.wait(timeout=grace) == 0
    finally:
        pod.stop()


def test_a_fatal_engine_error_takes_the_pod_out(tmp_path):
    """The engine thread panics at its first step (TL_FAULT_PANIC_AT_STEP): the request fails alone with an
    error, `llama_engine_up` reads 0, readiness goes, and deploy_triton.py exits 3 so that the kubelet restarts it."""
    pod = Pod("k8s_fatal", tmp_path, env={"TL_FAULT_PANIC_AT_STEP": "1"})
    try:
        assert pod.started(), pod.log_path.read_text()[-3000:]
        code, r = generate(pod.mapped["http"], {"text_input": "Hello", "max_tokens": 4}, pod.model)
        assert code is not None and code >= 400, r
        assert wait_for(lambda: not probe_ok(pod.url("readinessProbe")), 15)
        assert pod.proc.wait(timeout=TIMEOUT) == 3
        log = pod.log_path.read_text()
        assert "the engine thread panicked" in log
        assert f"the engine of model '{pod.model}" in log and "exiting 3" in log
    finally:
        pod.stop()


class KServeRuntime:
    """The Job's deploy_triton.py --write_only writes the repository with the checkpoint inside it; it is moved to
    another place (KServe mounts it at /mnt/models) and tritonserver is started there with the ServingRuntime's
    command and arguments."""

    def __init__(self, name, tmp, env=None):
        job = pod_container("kserve/prepare-repository-job.yaml", "Job")
        self.model = deploy_triton.parse_args(job["args"]).triton_model_name
        ckpt = Path(deploy_triton.parse_args(job["args"]).nemo_checkpoint).name
        written = tmp / "pvc/llama-repository"
        written.mkdir(parents=True)
        shutil.copy(NEMO, written / ckpt)
        args = replaced(
            job["args"],
            {
                "--triton_model_repository": ("--triton_model_repository", str(written)),
                "--nemo_checkpoint": ("--nemo_checkpoint", str(written / ckpt)),
                "--device": ("--device", "cpu"),
                "--max_input_len": ("--max_input_len", "64"),
                "--max_output_len": ("--max_output_len", "192"),
            },
        )
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/deploy_triton.py"), *args, "--cli", str(CLI)],
            check=True,
            capture_output=True,
        )
        backends = written.parent / (written.name + ".backends")
        mounted = tmp / "mnt/models"
        mounted.parent.mkdir()
        written.rename(mounted)  # the repository must not depend on where it was written

        self.c = c = pod_container("kserve/servingruntime.yaml", "ServingRuntime")
        assert c["command"] == ["tritonserver"]
        self.http, grpc, self.metrics = free_ports(3)
        ports = {"--http-port": self.http, "--grpc-port": grpc, "--metrics-port": self.metrics}
        flags = []
        for arg in c["args"]:
            key = arg.split("=")[0]
            flags.append(f"{key}={ports[key]}" if key in ports else arg.replace("/mnt/models", str(mounted)))
        # In the image the backend is in Triton's default backends directory; here it is where the Job put it.
        cmd = [deploy_triton.find_tritonserver(None), *flags, f"--backend-directory={backends}"]
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {}))
        )
        probe = c["readinessProbe"]["httpGet"]
        assert probe["port"] == 8080 and "--http-port=8080" in c["args"]
        self.ready_url = f"http://localhost:{self.http}{probe['path']}"
        assert wait_for(lambda: probe_ok(self.ready_url), TIMEOUT), self.log_path.read_text()[-3000:]

    def liveness(self):
        """The liveness probe's command, run as the kubelet would (the image's script path mapped to here)."""
        cmd = [
            arg.replace("/opt/triton-llama/scripts", str(ROOT / "scripts")).replace(":8002/", f":{self.metrics}/")
            for arg in self.c["livenessProbe"]["exec"]["command"]
        ]
        cmd[0] = sys.executable
        return subprocess.run(cmd, capture_output=True, text=True, timeout=self.c["livenessProbe"]["timeoutSeconds"])

    def infer(self, prompt, max_tokens):
        body = {
            "inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": [prompt]},
                {"name": "max_tokens", "datatype": "INT32", "shape": [1, 1], "data": [max_tokens]},
            ]
        }
        req = urllib.request.Request(
            f"http://localhost:{self.http}/v2/models/{self.model}/infer", data=json.dumps(body).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, {o["name"]: o for o in json.loads(r.read())["outputs"]}
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def test_kserve_runtime_arguments_serve_the_jobs_repository(tmp_path):
    """KServe v2 over HTTP answers as the CLI does on the same checkpoint; the liveness command passes; SIGTERM
    exits 0."""
    rt = KServeRuntime("kserve_runtime", tmp_path)
    try:
        r = rt.liveness()
        assert r.returncode == 0, r.stderr
        code, out = rt.infer("The capital of France is", 12)
        assert code == 200, out
        want = cli_generate(NEMO, "The capital of France is", "--max-tokens", "12")
        assert out["text_output"]["data"] == [want["text"]]
        rt.proc.send_signal(signal.SIGTERM)
        assert rt.proc.wait(timeout=60) == 0
    finally:
        rt.stop()


def test_kserve_liveness_fails_after_a_fatal_engine_error(tmp_path):
    rt = KServeRuntime("kserve_fatal", tmp_path, env={"TL_FAULT_PANIC_AT_STEP": "1"})
    try:
        assert rt.liveness().returncode == 0
        code, out = rt.infer("Hello", 4)
        assert code >= 400, out
        assert wait_for(lambda: rt.liveness().returncode == 1, 15)
        assert "has stopped (llama_engine_up 0)" in rt.liveness().stderr
    finally:
        rt.stop()
