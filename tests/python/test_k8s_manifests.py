"""deploy/k8s: both overlays render and pass deploy/k8s/check_manifests.py,
and each of its checks fails a rendered copy broken the way it is meant to
catch. No cluster is needed; kubectl renders the kustomizations."""

import copy
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
sys.path.insert(0, str(K8S))
import check_manifests  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl not found: it renders deploy/k8s's kustomizations")


@pytest.fixture(scope="module")
def rendered():
    def render(overlay):
        out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                             check=True, capture_output=True, text=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    return {o: render(o) for o in ("cpu", "gpu")}


def obj(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def storage(docs):
    return obj(docs, "StatefulSet", "tessera-storage")["spec"]["template"]["spec"]["containers"][0]


def router(docs):
    return obj(docs, "Deployment", "tessera-router")["spec"]["template"]["spec"]["containers"][0]


def env(c, name):
    return next(e for e in c["env"] if e["name"] == name)


def test_both_overlays_pass(rendered):
    assert check_manifests.check(rendered["cpu"]) == []
    assert check_manifests.check(rendered["gpu"], gpu=True) == []


def test_storage_pods_carry_the_settings_the_node_needs(rendered):
    sts = obj(rendered["cpu"], "StatefulSet", "tessera-storage")
    node = storage(rendered["cpu"])
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90
    assert node["lifecycle"]["preStop"]["exec"]["command"] == [
        "/usr/local/bin/tessera-admin", "--node", "127.0.0.1:7100", "--timeout-secs", "60", "step-down"]
    assert env(node, "TESSERA_NODE_ID")["value"] == "from-hostname"
    names = [e["name"] for e in node["env"]]
    assert names.index("POD_NAME") < names.index("TESSERA_NODE_ADVERTISE")
    config = obj(rendered["cpu"], "ConfigMap", "tessera-config")
    assert env(node, "TESSERA_SHARDS")["valueFrom"]["configMapKeyRef"]["name"] == config["metadata"]["name"]
    budgets = [b for b in rendered["cpu"] if b["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 2 and all(b["spec"]["maxUnavailable"] == 1 for b in budgets)


def test_gpu_overlay_changes_only_the_storage_pods(rendered):
    gpu = obj(rendered["gpu"], "StatefulSet", "tessera-storage")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["image"] == "tessera:gpu"
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert router(rendered["gpu"]) == router(rendered["cpu"])
    assert storage(rendered["cpu"])["image"] == "tessera:latest"


def set_env(c, name, value):
    env(c, name)["value"] = value


def move_pod_name_last(d):
    node = storage(d)
    node["env"].append(node["env"].pop(0))


def sh_prestop(d):
    storage(d)["lifecycle"]["preStop"]["exec"]["command"] = ["sh", "-c", "sleep 5"]


# (what is broken, how, a message check_manifests must print)
BROKEN = [
    ("service selector", lambda d: obj(d, "Service", "tessera-router")["spec"]["selector"].update(
        {"app.kubernetes.io/component": "routr"}), "Service/tessera-router: selector"),
    ("service target port name", lambda d: router(d)["ports"][2].update(name="cluster-2"),
     "has no container port named 'cluster-b'"),
    ("not headless", lambda d: obj(d, "Service", "tessera-storage")["spec"].pop("clusterIP"), "must be headless"),
    ("not-ready peers unpublished", lambda d: obj(d, "Service", "tessera-storage")["spec"].pop(
        "publishNotReadyAddresses"), "publishNotReadyAddresses"),
    ("serviceName", lambda d: obj(d, "StatefulSet", "tessera-storage")["spec"].update(serviceName="storage"),
     "serviceName 'storage' names no Service"),
    ("workload selector", lambda d: obj(d, "Deployment", "tessera-router")["spec"]["selector"]["matchLabels"].update(
        {"app.kubernetes.io/component": "storage"}), "does not select its own pod template"),
    ("PDB selector", lambda d: obj(d, "PodDisruptionBudget", "tessera-storage")["spec"]["selector"]["matchLabels"]
     .update({"app.kubernetes.io/component": "node"}), "StatefulSet/tessera-storage: no PodDisruptionBudget"),
    ("probe path", lambda d: storage(d)["readinessProbe"]["httpGet"].update(path="/ready"),
     "readinessProbe path '/ready'"),
    ("liveness on readiness", lambda d: storage(d)["livenessProbe"]["httpGet"].update(path="/readyz"),
     "livenessProbe uses /readyz"),
    ("probe port", lambda d: router(d)["readinessProbe"]["httpGet"].update(port="metric"),
     "readinessProbe port 'metric'"),
    ("env ref order", move_pod_name_last, "refers to $(POD_NAME), not defined before it (it is defined later"),
    ("env ref undefined", lambda d: set_env(router(d), "TESSERA_ROUTER_ADVERTISE", "tessera-router.$(NS):7001"),
     "refers to $(NS)"),
    ("config key", lambda d: env(storage(d), "TESSERA_SHARDS")["valueFrom"]["configMapKeyRef"].update(
        key="SHARDS"), "has no key 'SHARDS'"),
    ("config map name", lambda d: env(router(d), "RUST_LOG")["valueFrom"]["configMapKeyRef"].update(
        name="tessera-conf"), "ConfigMap 'tessera-conf' is not in the manifests"),
    ("service account", lambda d: d.remove(obj(d, "ServiceAccount", "tessera")), "ServiceAccount 'tessera'"),
    ("volume mount", lambda d: storage(d)["volumeMounts"][0].update(name="date"), "volumeMount 'date'"),
    ("writable root", lambda d: storage(d)["securityContext"].update(readOnlyRootFilesystem=False),
     "readOnlyRootFilesystem"),
    ("no memory limit", lambda d: router(d)["resources"]["limits"].pop("memory"), "resources.limits lacks memory"),
    ("shell", sh_prestop, "preStop runs a shell (sh)"),
    ("grace period", lambda d: obj(d, "StatefulSet", "tessera-storage")["spec"]["template"]["spec"].update(
        terminationGracePeriodSeconds=30), "does not exceed the preStop's --timeout-secs 60"),
    ("peer address", lambda d: set_env(storage(d), "TESSERA_NODE_PEERS", env(storage(d), "TESSERA_NODE_PEERS")[
        "value"].replace("2=tessera-storage-1", "2=tessera-storage-2")), "node 2 is pod tessera-storage-1"),
    ("listen port", lambda d: set_env(storage(d), "TESSERA_NODE_METRICS", "0.0.0.0:9101"),
     "TESSERA_NODE_METRICS listens on 9101"),
    ("router nodes", lambda d: set_env(router(d), "TESSERA_ROUTER_NODES", "tessera-storage-9.tessera-storage:7100"),
     "which is no storage peer"),
    ("advertised port", lambda d: set_env(router(d), "TESSERA_ROUTER_ADVERTISE", "tessera-router.ns.svc:7003"),
     "TESSERA_ROUTER_ADVERTISE tessera-router.ns.svc:7003 is no port"),
]


@pytest.mark.parametrize("what,breaks,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_checker_catches(rendered, what, breaks, message):
    docs = copy.deepcopy(rendered["cpu"])
    breaks(docs)
    problems = check_manifests.check(docs)
    assert any(message in p for p in problems), f"{what}: no problem says {message!r}; got {problems}"


def test_gpu_overlay_must_limit_gpus(rendered):
    docs = copy.deepcopy(rendered["gpu"])
    storage(docs)["resources"]["limits"].pop("nvidia.com/gpu")
    assert any("must limit nvidia.com/gpu" in p for p in check_manifests.check(docs, gpu=True))
    assert any("not the GPU one" in p for p in check_manifests.check(rendered["gpu"], gpu=False))


def test_cli_exits_non_zero_with_the_problem(rendered, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump_all(rendered["cpu"]))
    docs = copy.deepcopy(rendered["cpu"])
    storage(docs)["readinessProbe"]["httpGet"]["path"] = "/health"
    bad.write_text(yaml.safe_dump_all(docs))
    run = [sys.executable, str(K8S / "check_manifests.py")]
    ok = subprocess.run(run + [str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    fail = subprocess.run(run + [str(bad)], capture_output=True, text=True)
    assert fail.returncode == 1 and "readinessProbe path '/health'" in fail.stdout, fail.stdout + fail.stderr


def test_schema_validation_rejects_unknown_fields(rendered):
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate comes with scripts/setup.sh")
    sts = copy.deepcopy(obj(rendered["cpu"], "StatefulSet", "tessera-storage"))
    kv.validate(sts, "1.30.0", strict=True)
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, "1.30.0", strict=True)
