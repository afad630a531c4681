"""Static checks of herald's deployment files: deploy/kubernetes/ and the Dockerfile.

* every Kubernetes manifest validates against the API schemas (kubernetes-validate,
  strict: unknown fields are errors) of the oldest and newest versions we target;
* checkov finds no failed check in deploy/kubernetes/ or in the Dockerfile; every
  check that does not apply is skipped with a reason, either in CHECKOV_K8S_SKIPS
  below or inline (a `checkov.io/skipN` annotation), and inline skips are pinned in
  EXPECTED_INLINE_SKIPS so a new one cannot slip in unnoticed;
* the files agree with each other and with herald: kustomization.yaml lists every
  manifest, selectors match the pod labels, ConfigMap keys are real herald options,
  ports/probes/shutdown timings line up, one replica with the embedded store.

Nothing here needs a cluster or a Docker engine. Run: pytest tests/deploy
(requirements: tests/deploy/requirements.txt).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import (
    SchemaNotFoundError,
    ValidationError,
    VersionNotSupportedError,
)

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_RS = ROOT / "crates" / "herald" / "src" / "config.rs"

KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
MANIFESTS = sorted(p for p in K8S_DIR.glob("*.yaml") if p != KUSTOMIZATION)

# Oldest Kubernetes minor we claim to support, and the newest kubernetes-validate
# ships schemas for.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# Checks skipped for the whole of deploy/kubernetes/, each with the reason.
CHECKOV_K8S_SKIPS = {
    "CKV_K8S_21": "The default namespace should not be used: the namespace is set once "
    "in kustomization.yaml (`namespace: herald`); checkov scans the raw manifests, "
    "which deliberately carry none so they can be applied to any namespace.",
}
# Checks skipped inline (annotations in the manifests), with the file they are in.
EXPECTED_INLINE_SKIPS = {
    # Image digest pinning: the manifests reference a tag; a release pins its digest
    # with `images:` in kustomization.yaml (reason in the annotation).
    ("CKV_K8S_43", "deployment.yaml"),
}


def load_all(path: Path) -> list[dict]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def resources() -> dict[str, dict]:
    """Every resource in the manifests, keyed by `Kind/name`."""
    out = {}
    for path in MANIFESTS:
        for doc in load_all(path):
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


def go_duration_seconds(text: str) -> float:
    """`25s`, `1m30s`, `500ms` → seconds (the forms herald's durations use)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"cannot parse duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- (a) schema validation ------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path: Path, version: str) -> None:
    docs = load_all(path)
    assert docs, f"{path.name} holds no resources"
    for doc in docs:
        what = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{what} is invalid for Kubernetes {e.version} at {where}: {e.message}")
        except (SchemaNotFoundError, VersionNotSupportedError) as e:
            pytest.fail(f"{what}: no schema to validate against: {e.message}")


# --- (b) checkov ----------------------------------------------------------------


def checkov_bin() -> str:
    local = Path(sys.executable).with_name("checkov")
    found = str(local) if local.exists() else shutil.which("checkov")
    if not found:
        pytest.fail("checkov is not installed (pip install -r tests/deploy/requirements.txt)")
    return found


def run_checkov(*args: str) -> dict:
    """Runs checkov offline with JSON output; returns the one framework's report."""
    cmd = [checkov_bin(), *args, "--output", "json", "--skip-download", "--compact"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    # Exit status: 0 = no failed check, 1 = failed checks; anything else is an error.
    assert proc.returncode in (0, 1), f"checkov failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    assert isinstance(report, dict), f"expected one framework's report, got {type(report)}"
    report["returncode"] = proc.returncode
    return report


def describe(checks: list[dict]) -> str:
    return "\n".join(
        f"  {c['check_id']} {c['check_name']}: {c['resource']} "
        f"({c['file_path']}:{c['file_line_range']})"
        for c in checks
    )


def assert_clean(report: dict) -> None:
    results = report["results"]
    failed = results.get("failed_checks", [])
    assert not failed, f"checkov failed checks:\n{describe(failed)}"
    assert not results.get("parsing_errors"), f"checkov could not parse: {results['parsing_errors']}"
    assert report["returncode"] == 0
    assert report["summary"]["passed"] > 0, "checkov ran no checks at all"


@pytest.fixture(scope="module")
def k8s_report() -> dict:
    skips = ",".join(sorted(CHECKOV_K8S_SKIPS))
    return run_checkov(
        "--directory", str(K8S_DIR.relative_to(ROOT)),
        "--framework", "kubernetes",
        "--skip-check", skips,
    )


def test_checkov_kubernetes_passes(k8s_report: dict) -> None:
    assert_clean(k8s_report)
    # Every resource was seen (a file checkov silently ignored would pass "cleanly").
    assert k8s_report["summary"]["resource_count"] >= len(resources())


def test_checkov_kubernetes_inline_skips_are_the_documented_ones(k8s_report: dict) -> None:
    skipped = k8s_report["results"].get("skipped_checks", [])
    found = {(c["check_id"], Path(c["file_path"]).name) for c in skipped}
    assert found == EXPECTED_INLINE_SKIPS, (
        "inline checkov skips changed; update EXPECTED_INLINE_SKIPS with a reason:\n"
        + describe(skipped)
    )
    for c in skipped:
        reason = (c["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 20, f"{c['check_id']} skipped without a real reason: {reason!r}"


def test_checkov_key_kubernetes_checks_ran_and_passed(k8s_report: dict) -> None:
    passed = {c["check_id"] for c in k8s_report["results"]["passed_checks"]}
    expected = {
        "CKV_K8S_8",  # liveness probe
        "CKV_K8S_9",  # readiness probe
        "CKV_K8S_11", "CKV_K8S_13",  # CPU and memory limits
        "CKV_K8S_20",  # allowPrivilegeEscalation: false
        "CKV_K8S_22",  # readOnlyRootFilesystem
        "CKV_K8S_23",  # runAsNonRoot
        "CKV_K8S_31",  # seccomp RuntimeDefault
        "CKV_K8S_37",  # capabilities dropped
        "CKV_K8S_38",  # no service-account token
        "CKV_K8S_40",  # high UID
        "CKV2_K8S_6",  # a NetworkPolicy selects the pod
    }
    assert expected <= passed, f"did not pass: {sorted(expected - passed)}"


def test_checkov_dockerfile_passes() -> None:
    report = run_checkov("--file", "Dockerfile", "--framework", "dockerfile")
    assert_clean(report)
    assert not report["results"].get("skipped_checks"), "Dockerfile checks skipped"
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    # HEALTHCHECK present, a USER set, and the last USER is not root.
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_8"} <= passed


def test_checkov_harness_reports_failures(tmp_path: Path) -> None:
    """The checks above can fail: a deployment without its hardening is caught."""
    doc = load_all(K8S_DIR / "deployment.yaml")[0]
    container = doc["spec"]["template"]["spec"]["containers"][0]
    del container["securityContext"]["readOnlyRootFilesystem"]
    del container["livenessProbe"]
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(doc))
    report = run_checkov("--directory", str(tmp_path), "--framework", "kubernetes",
                         "--skip-check", ",".join(CHECKOV_K8S_SKIPS))
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_K8S_8", "CKV_K8S_22"} <= failed
    assert report["returncode"] == 1


# --- (c) consistency ------------------------------------------------------------


def kustomization() -> dict:
    return load_all(KUSTOMIZATION)[0]


def deployment() -> dict:
    return resources()["Deployment/herald"]


def pod_spec() -> dict:
    return deployment()["spec"]["template"]["spec"]


def container() -> dict:
    (c,) = pod_spec()["containers"]
    return c


def configmap_data() -> dict[str, str]:
    return resources()["ConfigMap/herald-config"]["data"]


def test_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed)), "duplicate entries in kustomization.yaml"
    assert sorted(listed) == sorted(p.name for p in MANIFESTS), (
        "kustomization.yaml `resources:` must list exactly the manifests in deploy/kubernetes"
    )


def test_kustomization_sets_namespace_and_image() -> None:
    k = kustomization()
    assert k["namespace"], "kustomization.yaml must set the namespace (CKV_K8S_21 skip relies on it)"
    image_names = {i["name"] for i in k.get("images", [])}
    assert container()["image"].split(":")[0] in image_names


def test_selectors_match_pod_labels() -> None:
    res = resources()
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment()["spec"]["selector"]["matchLabels"],
        "Service": res["Service/herald"]["spec"]["selector"],
        "PodDisruptionBudget": res["PodDisruptionBudget/herald"]["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": res["NetworkPolicy/herald"]["spec"]["podSelector"]["matchLabels"],
    }
    for kind, sel in selectors.items():
        assert sel.items() <= pod_labels.items(), f"{kind} selector {sel} does not match pod labels"
    target = res["HorizontalPodAutoscaler/herald"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment()["metadata"]["name"])


def test_references_resolve() -> None:
    res = resources()
    for ref in container().get("envFrom", []):
        assert f"ConfigMap/{ref['configMapRef']['name']}" in res
    for vol in pod_spec()["volumes"]:
        if "persistentVolumeClaim" in vol:
            assert f"PersistentVolumeClaim/{vol['persistentVolumeClaim']['claimName']}" in res
    port_names = {p["name"] for p in container()["ports"]}
    assert res["Service/herald"]["spec"]["ports"][0]["targetPort"] in port_names


def test_configmap_keys_are_herald_options() -> None:
    """An unknown HERALD_* variable is silently ignored by herald: catch typos here."""
    keys = set(re.findall(r'key:\s*"([a-z0-9-]+)"', CONFIG_RS.read_text()))
    assert "listen-http" in keys and "data-dir" in keys, "cannot read option keys from config.rs"
    known = {"HERALD_" + k.upper().replace("-", "_") for k in keys}
    unknown = set(configmap_data()) - known
    assert not unknown, f"not herald options: {sorted(unknown)}"


def test_port_probes_and_data_dir_line_up() -> None:
    data = configmap_data()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {
        "http": int(data["HERALD_LISTEN_HTTP"].rsplit(":", 1)[1]),
        "grpc": int(data["HERALD_LISTEN_GRPC"].rsplit(":", 1)[1]),
    }
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container()["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert data["HERALD_DATA_DIR"] in mounts, "the data dir must be on the volume"


def test_graceful_shutdown_fits_the_grace_period() -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    timeout = go_duration_seconds(configmap_data().get("HERALD_SHUTDOWN_TIMEOUT", "25s"))
    assert grace == 30
    # herald drains for up to shutdown-timeout, then closes the store: leave room.
    assert grace - timeout >= 5, f"grace period {grace}s too close to shutdown-timeout {timeout}s"


def test_single_replica_with_embedded_store() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate", "two pods must never share the store volume"
    hpa = resources()["HorizontalPodAutoscaler/herald"]["spec"]
    assert hpa["minReplicas"] == hpa["maxReplicas"] == 1
    pvc = resources()["PersistentVolumeClaim/herald-data"]["spec"]
    assert pvc["accessModes"] == ["ReadWriteOnce"]


def test_pod_hardening() -> None:
    pod_sc = pod_spec()["securityContext"]
    sc = container()["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65534
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_dockerfile_matches_manifests() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM scratch\s*$", text, re.M), "final stage must be FROM scratch"
    assert re.search(r"^USER 65534:65534\s*$", text, re.M)
    assert 'ENTRYPOINT ["/herald"]' in text and 'CMD ["serve"]' in text
    assert re.search(r"HERALD_DATA_DIR=/data\b", text)
    listen = re.search(r"HERALD_LISTEN_HTTP=(\S+)", text).group(1)
    port = listen.rsplit(":", 1)[1]
    assert re.search(rf"^EXPOSE {port}\s*$", text, re.M)
    assert f'"http://127.0.0.1:{port}/healthz"' in text, "HEALTHCHECK must probe /healthz"
    assert "+crt-static" in text and "--profile dist" in text
    # Same static build as the script that tests it.
    script = (ROOT / "scripts" / "build-static.sh").read_text()
    # The shipped profile is the script's default (what .ci/run builds and checks).
    assert "+crt-static" in script and re.search(r'^PROFILE="\$\{STATIC_PROFILE:-dist\}"$', script, re.M)
    # Same code generation flags: the size budget is checked on the script's build.
    assert 'RUSTFLAGS="-C target-feature=+crt-static"' in text
    c_flags = "-fno-asynchronous-unwind-tables -fno-unwind-tables -fno-inline-functions"
    assert f'"CFLAGS_$(echo "$TARGET" | tr - _)={c_flags}"' in text
    assert f'CFLAGS_x86_64_unknown_linux_gnu="${{CFLAGS_x86_64_unknown_linux_gnu:-}} {c_flags}"' in script
    # Same SQLite: .cargo/config.toml's LIBSQLITE3_FLAGS, for every build. Neither the
    # script nor the Dockerfile sets its own, and the image's build context has the file.
    config = (ROOT / ".cargo" / "config.toml").read_text()
    sqlite_flags = re.search(r'^LIBSQLITE3_FLAGS = "([^"]+)"$', config, re.M)
    assert sqlite_flags, ".cargo/config.toml must set LIBSQLITE3_FLAGS"
    assert "-DSQLITE_DEFAULT_MEMSTATUS=0" in sqlite_flags.group(1).split()
    assert "LIBSQLITE3_FLAGS=" not in script, "build-static.sh must not replace the config's flags"
    assert "LIBSQLITE3_FLAGS=" not in text, "the Dockerfile must not replace the config's flags"
    assert re.search(r"^COPY \.cargo \./\.cargo\s*$", text, re.M), "the Dockerfile must copy .cargo/"
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "!.cargo/" in dockerignore, ".dockerignore must let .cargo/ into the build context"
