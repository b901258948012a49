"""The Kubernetes and KServe manifests in deploy/: yamllint, schema validation (Kubernetes' own schemas at two
pinned versions, the KServe and Prometheus Operator CRD schemas in schemas/), and the knobs that must agree
across files (GPUs and --num_gpus, probe and Service ports, the grace period and the drain, the autoscaler's
metrics and the engine's). No cluster is needed; tests/e2e/test_kubernetes.py runs the same commands for real."""

import copy
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The oldest Kubernetes these manifests are meant for, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.29", "1.37"]
HELM_VALUES = {"prometheus-adapter-values.yaml"}  # not manifests: values for a Helm chart
# Sizing the startup probe from the load rate: the 70B bf16 checkpoint at a slow network volume's read rate.
CHECKPOINT_GB, SLOW_READ_GB_PER_S = 138, 0.25
sys.path.insert(0, str(ROOT / "scripts"))
import deploy_triton  # noqa: E402


def manifest_files():
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name not in HELM_VALUES)


def docs():
    return [(p, d) for p in manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]


def one(kind, where="kubernetes"):
    found = [d for p, d in docs() if d["kind"] == kind and p.parent.name == where]
    assert len(found) == 1, f"one {kind} in deploy/{where}, found {len(found)}"
    return found[0]


def crd_schema(doc):
    if "/" not in doc["apiVersion"]:
        return None  # the core group (v1)
    group, version = doc["apiVersion"].split("/")
    path = SCHEMAS / f"{doc['kind'].lower()}-{group}-{version}.json.gz"
    return json.loads(gzip.decompress(path.read_bytes())) if path.exists() else None


def closed(schema):
    """The schema with every object that lists its properties closed to others (kubernetes-validate's strict
    mode, for the CRDs), except where Kubernetes keeps unknown fields."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


def test_yamllint():
    r = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(ROOT / ".yamllint.yaml"), str(DEPLOY)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_manifest_validates_against_its_schema():
    seen = set()
    for path, doc in docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        seen.add(doc["kind"])
        schema = crd_schema(doc)
        if schema is not None:
            errors = list(jsonschema.Draft7Validator(closed(schema)).iter_errors(doc))
            assert not errors, f"{path.name}: " + "; ".join(
                f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
            )
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{path.name} ({doc['kind']}) at Kubernetes {v}: {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(
                    f"{path.name}: no schema for {doc['apiVersion']} {doc['kind']} (add the CRD's to {SCHEMAS})"
                )
    assert {
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "ServingRuntime",
        "InferenceService",
        "Job",
    } <= seen


def test_a_broken_manifest_fails_validation():
    """The validation can fail: a misspelt field and a wrong type are caught in both kinds of schema."""
    dep = copy.deepcopy(one("Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)
    isvc = copy.deepcopy(one("InferenceService", "kserve"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = "pvc://x"
    assert list(jsonschema.Draft7Validator(closed(crd_schema(isvc))).iter_errors(isvc))
    rt = copy.deepcopy(one("ServingRuntime", "kserve"))
    rt["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert list(jsonschema.Draft7Validator(closed(crd_schema(rt))).iter_errors(rt))


def container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


def flags(args):
    """deploy_triton.py's parse of a container's args: a misspelt flag fails here as it would in the pod."""
    return deploy_triton.parse_args(args)


def test_deployment_knobs_agree():
    dep = one("Deployment")
    c = container(dep)
    a = flags(c["args"])
    assert a.device == "cuda" and a.load_after_start and a.engine_watchdog
    gpus = {c["resources"][k]["nvidia.com/gpu"] for k in ("requests", "limits")}
    assert gpus == {str(a.num_gpus)}, "nvidia.com/gpu requests and limits must equal --num_gpus"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": a.triton_port, "grpc": a.grpc_port, "metrics": a.metrics_port, "openai": a.openai_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports, probe
    # Startup: the model that loads last (--load_after_start loads <name>, then <name>_stream); readiness, which
    # runs only after startup passed: the server's.
    assert c["startupProbe"]["httpGet"]["path"] == f"/v2/models/{a.triton_model_name}_stream/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= CHECKPOINT_GB / SLOW_READ_GB_PER_S
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert (
        dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + a.exit_timeout_secs + 10
    )
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == a.metrics_port
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm" and a.nemo_checkpoint.startswith(mounts["checkpoints"] + "/")
    claim = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}["checkpoints"]["persistentVolumeClaim"]
    assert claim["claimName"] == one("PersistentVolumeClaim")["metadata"]["name"]


def test_service_and_monitor_reach_the_pods():
    dep, svc, mon = one("Deployment"), one("Service"), one("ServiceMonitor")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    names = {p["name"] for p in container(dep)["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == names
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in mon["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}


def backend_metric_names():
    """The metric families the backend declares (src/triton/metrics.rs)."""
    return set(re.findall(r'"(llama_[a-z_]+)"', (ROOT / "src/triton/metrics.rs").read_text()))


def test_autoscaler_scales_on_metrics_the_engine_exports():
    hpa, dep = one("HorizontalPodAutoscaler"), one("Deployment")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    values = yaml.safe_load((DEPLOY / "kubernetes/prometheus-adapter-values.yaml").read_text())
    rules = values["rules"]["custom"]
    served = {r["name"]["as"] for r in rules}
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} <= served
    used = set()
    for r in rules:
        used |= set(re.findall(r"\bllama_[a-z_]+", r["seriesQuery"] + r["metricsQuery"]))
    assert used - served <= backend_metric_names(), used - served - backend_metric_names()
    # Both models of a deployment report the one engine's gauges: a pod's value is their max, not their sum.
    assert all(r["metricsQuery"].lstrip().startswith("max(") for r in rules)


def test_kserve_runtime_and_service_agree():
    rt, isvc, job = one("ServingRuntime", "kserve"), one("InferenceService", "kserve"), one("Job", "kserve")
    dep = one("Deployment")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"] in [{k: f[k] for k in ("name", "version")} for f in rt["spec"]["supportedModelFormats"]]
    c = rt["spec"]["containers"][0]
    assert c["resources"] == container(dep)["resources"], "the same GPUs and memory as the plain Deployment"
    assert "--model-store=/mnt/models" in c["args"] and c["command"] == ["tritonserver"]
    arg = {x.split("=")[0]: x.split("=", 1)[1] for x in c["args"] if "=" in x}
    assert {c[p]["httpGet"]["port"] for p in ("startupProbe", "readinessProbe")} == {int(arg["--http-port"])}
    probe = c["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["python3", "/opt/triton-llama/scripts/engine_probe.py"], "the Dockerfile's scripts folder"
    assert (ROOT / "scripts" / Path(probe[1]).name).exists()
    assert probe[probe.index("--metrics_url") + 1] == f"http://localhost:{arg['--metrics-port']}/metrics"
    # The repository the Job writes is the one the InferenceService mounts, with the Deployment's model flags.
    m = re.fullmatch(r"pvc://([^/]+)/(.+)", model["storageUri"])
    assert m and m[1] == one("PersistentVolumeClaim")["metadata"]["name"]
    j = container(job)
    a = flags(j["args"])
    assert a.write_only and a.triton_model_repository == f"{j['volumeMounts'][0]['mountPath']}/{m[2]}"
    assert Path(a.nemo_checkpoint).parent == Path(a.triton_model_repository), "the checkpoint inside the repository"
    d = flags(container(dep)["args"])
    same = (
        "triton_model_name",
        "device",
        "num_gpus",
        "max_input_len",
        "max_output_len",
        "max_num_seqs",
        "max_queue_size",
        "kv_cache_bytes",
        "stop_strings",
        "weight_dtype",
    )
    assert {k: getattr(a, k) for k in same} == {k: getattr(d, k) for k in same}
    assert Path(a.nemo_checkpoint).name == Path(d.nemo_checkpoint).name
    grace = isvc["spec"]["predictor"]["terminationGracePeriodSeconds"]
    assert grace >= int(c["lifecycle"]["preStop"]["exec"]["command"][1]) + int(arg["--exit-timeout-secs"]) + 10
