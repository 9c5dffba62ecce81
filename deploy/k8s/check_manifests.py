#!/usr/bin/env python3
"""Cross-object checks of rendered Kubernetes manifests (`kubectl kustomize`
output), the ones a schema cannot make: that objects which name each other
agree, and that Tessera's pods are wired the way its binaries need.

    check_manifests.py [--gpu] FILE|-

Each problem is printed on its own line; the exit status is 1 when there is
any. `--gpu` requires a GPU limit on the storage pods, without it none may
ask for one. deploy/k8s/validate.sh runs this on every overlay;
tests/python/test_k8s_manifests.py proves that each check catches what it
is for.
"""

import argparse
import re
import sys

import yaml

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
PROBE_PATHS = ("/livez", "/readyz", "/metrics")
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
SHELLS = {"sh", "bash", "ash", "dash", "zsh"}
# The image is FROM scratch: these are the only programs in it.
BINARIES = {"/usr/local/bin/tessera-node", "/usr/local/bin/tessera-router", "/usr/local/bin/tessera-admin"}
GPU = "nvidia.com/gpu"
# `$(VAR)`, but not the escaped `$$(VAR)`.
VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Listen addresses and the container port (by name) each must bind.
LISTEN_PORTS = {
    "TESSERA_NODE_LISTEN": "grpc",
    "TESSERA_NODE_METRICS": "metrics",
    "TESSERA_ROUTER_LISTEN": "redis",
    "TESSERA_ROUTER_METRICS": "metrics",
}


def ident(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def selects(selector, labels):
    """A LabelSelector (matchLabels/matchExpressions) or a Service's plain
    map, applied to a pod's labels."""
    if not selector:
        return False
    plain = "matchLabels" not in selector and "matchExpressions" not in selector
    match = selector if plain else selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for e in [] if plain else selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and value in e.get("values", []), "NotIn": not has or value not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


class Manifests:
    def __init__(self, docs):
        self.docs = [d for d in docs if d]
        self.workloads = [d for d in self.docs if d["kind"] in WORKLOADS]

    def of(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind, name):
        return next((d for d in self.of(kind) if d["metadata"]["name"] == name), None)

    def selected(self, selector):
        return [w for w in self.workloads if selects(selector, pod_labels(w))]


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def pod_labels(w):
    return w["spec"]["template"].get("metadata", {}).get("labels") or {}


def containers(w):
    return (pod_spec(w).get("initContainers") or []) + (pod_spec(w).get("containers") or [])


def ports(c):
    return c.get("ports") or []


def env_value(c, name):
    return next((e.get("value") for e in c.get("env") or [] if e["name"] == name), None)


def where(w, c=None):
    return f"{ident(w)}" + (f" container {c['name']}" if c else "")


def check_workload_selectors(m):
    return [f"{ident(w)}: spec.selector does not select its own pod template's labels {pod_labels(w)}"
            for w in m.workloads if not selects(w["spec"].get("selector"), pod_labels(w))]


def check_services(m):
    out = []
    for s in m.of("Service"):
        selector = s["spec"].get("selector")
        if not selector:
            continue
        pods = m.selected(selector)
        if not pods:
            out.append(f"{ident(s)}: selector {selector} matches no workload's pod labels")
        for p in s["spec"].get("ports") or []:
            target = p.get("targetPort", p["port"])
            for w in pods:
                if isinstance(target, str):
                    found = any(q.get("name") == target for c in containers(w) for q in ports(c))
                    what = f"no container port named '{target}'"
                else:
                    found = any(q["containerPort"] == target for c in containers(w) for q in ports(c))
                    what = f"no container port {target}"
                if not found:
                    out.append(f"{ident(s)} port {p.get('name', p['port'])}: {ident(w)} has {what}")
    return out


def check_statefulset_services(m):
    out = []
    for w in m.of("StatefulSet"):
        name = w["spec"].get("serviceName")
        s = m.named("Service", name) if name else None
        if s is None:
            out.append(f"{ident(w)}: serviceName '{name}' names no Service")
            continue
        if s["spec"].get("clusterIP") != "None":
            out.append(f"{ident(s)}: the StatefulSet's governing Service must be headless (clusterIP: None)")
        if s["spec"].get("publishNotReadyAddresses") is not True:
            out.append(f"{ident(s)}: needs publishNotReadyAddresses: true (peers must resolve before they are ready)")
        if not selects(s["spec"].get("selector"), pod_labels(w)):
            out.append(f"{ident(s)}: does not select {ident(w)}'s pods")
    return out


def check_pdbs(m):
    out = []
    for b in m.of("PodDisruptionBudget"):
        if not m.selected(b["spec"].get("selector")):
            out.append(f"{ident(b)}: selector matches no workload's pod labels")
    for w in m.of("StatefulSet") + m.of("Deployment"):
        if not any(selects(b["spec"].get("selector"), pod_labels(w)) for b in m.of("PodDisruptionBudget")):
            out.append(f"{ident(w)}: no PodDisruptionBudget selects its pods")
    return out


def check_probes(m):
    out = []
    for w in m.workloads:
        for c in containers(w):
            names = {q.get("name") for q in ports(c)}
            numbers = {q["containerPort"] for q in ports(c)}
            for kind in PROBES:
                probe = c.get(kind)
                if not probe:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
                if action is None:
                    continue
                port = action.get("port")
                if port not in (names if isinstance(port, str) else numbers):
                    out.append(f"{where(w, c)}: {kind} port {port!r} is not one of the container's ports")
                path = probe.get("httpGet", {}).get("path")
                if "httpGet" in probe and path not in PROBE_PATHS:
                    out.append(f"{where(w, c)}: {kind} path {path!r} is none of {', '.join(PROBE_PATHS)}")
                elif kind != "readinessProbe" and path not in (None, "/livez"):
                    out.append(f"{where(w, c)}: {kind} uses {path}; only /livez never waits on the cluster "
                               "(a probe on it restarts pods when a quorum is lost)")
    return out


def env_from_keys(m, c):
    keys = set()
    for src in c.get("envFrom") or []:
        ref = src.get("configMapRef") or src.get("secretRef") or {}
        kind = "ConfigMap" if "configMapRef" in src else "Secret"
        obj = m.named(kind, ref.get("name"))
        if obj:
            keys |= {src.get("prefix", "") + k for k in (obj.get("data") or {}) | (obj.get("stringData") or {})}
    return keys


def check_env_refs(m):
    out = []
    for w in m.workloads:
        for c in containers(w):
            defined = env_from_keys(m, c)
            every = defined | {e["name"] for e in c.get("env") or []}
            for e in c.get("env") or []:
                for ref in VAR_REF.findall(e.get("value") or ""):
                    if ref not in defined:
                        later = " (it is defined later: move it up)" if ref in every else ""
                        out.append(f"{where(w, c)}: env {e['name']} refers to $({ref}), not defined before it{later}")
                defined.add(e["name"])
            for field in ("command", "args"):
                for arg in c.get(field) or []:
                    for ref in VAR_REF.findall(arg):
                        if ref not in every:
                            out.append(f"{where(w, c)}: {field} refers to $({ref}), which no env var defines")
    return out


def check_references(m):
    """configMapKeyRef, configMapRef, configMap volumes, secrets, service accounts."""
    out = []

    def need(kind, name, what, key=None, optional=False):
        obj = m.named(kind, name)
        if optional:
            return
        if obj is None:
            out.append(f"{what}: {kind} '{name}' is not in the manifests")
        elif key is not None and key not in (obj.get("data") or {}) | (obj.get("binaryData") or {}) \
                | (obj.get("stringData") or {}):
            out.append(f"{what}: {kind} '{name}' has no key '{key}'")

    for w in m.workloads:
        sa = pod_spec(w).get("serviceAccountName")
        if sa and sa != "default":
            need("ServiceAccount", sa, ident(w))
        for v in pod_spec(w).get("volumes") or []:
            if "configMap" in v:
                need("ConfigMap", v["configMap"]["name"], f"{ident(w)} volume {v['name']}",
                     optional=v["configMap"].get("optional", False))
            if "secret" in v:
                need("Secret", v["secret"]["secretName"], f"{ident(w)} volume {v['name']}",
                     optional=v["secret"].get("optional", False))
        for c in containers(w):
            for e in c.get("env") or []:
                src = e.get("valueFrom") or {}
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if field in src:
                        r = src[field]
                        need(kind, r["name"], f"{where(w, c)} env {e['name']}", r["key"], r.get("optional", False))
            for src in c.get("envFrom") or []:
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in src:
                        r = src[field]
                        need(kind, r["name"], f"{where(w, c)} envFrom", optional=r.get("optional", False))
    return out


def check_volume_mounts(m):
    out = []
    for w in m.workloads:
        volumes = {v["name"] for v in pod_spec(w).get("volumes") or []}
        volumes |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates") or []}
        for c in containers(w):
            for v in c.get("volumeMounts") or []:
                if v["name"] not in volumes:
                    out.append(f"{where(w, c)}: volumeMount '{v['name']}' names no volume or volumeClaimTemplate")
    return out


def check_hardening(m):
    out = []
    for w in m.workloads:
        pod = pod_spec(w).get("securityContext") or {}
        for c in containers(w):
            sc = c.get("securityContext") or {}
            if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
                out.append(f"{where(w, c)}: runAsNonRoot is not set")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{where(w, c)}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{where(w, c)}: readOnlyRootFilesystem must be true")
            if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
                out.append(f"{where(w, c)}: capabilities must drop ALL")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part) or {})
                if missing:
                    out.append(f"{where(w, c)}: resources.{part} lacks {', '.join(sorted(missing))}")
    return out


def exec_commands(c):
    """Every argv the container's runtime executes: its command, exec probes
    and lifecycle hooks."""
    if c.get("command"):
        yield "command", c["command"]
    for kind in PROBES:
        if "exec" in (c.get(kind) or {}):
            yield kind, c[kind]["exec"]["command"]
    for hook, h in (c.get("lifecycle") or {}).items():
        if "exec" in h:
            yield hook, h["exec"]["command"]


def check_commands(m):
    """The image has no shell; and a preStop that waits must fit in the
    grace period."""
    out = []
    for w in m.workloads:
        grace = pod_spec(w).get("terminationGracePeriodSeconds", 30)
        for c in containers(w):
            tessera = c.get("image", "").split(":")[0].endswith("tessera")
            for what, argv in exec_commands(c):
                prog = argv[0] if argv else ""
                if prog.rsplit("/", 1)[-1] in SHELLS:
                    out.append(f"{where(w, c)}: {what} runs a shell ({prog}); the image has none")
                elif tessera and prog not in BINARIES:
                    out.append(f"{where(w, c)}: {what} runs {prog!r}, which is not in the image "
                               f"({', '.join(sorted(BINARIES))})")
                if what == "preStop" and "--timeout-secs" in argv[:-1]:
                    wait = int(argv[argv.index("--timeout-secs") + 1])
                    if grace <= wait:
                        out.append(f"{where(w, c)}: terminationGracePeriodSeconds {grace} does not exceed "
                                   f"the preStop's --timeout-secs {wait}")
    return out


def port_of(addr):
    return int(addr.rsplit(":", 1)[1]) if addr and ":" in addr and addr.rsplit(":", 1)[1].isdigit() else None


def check_tessera_wiring(m):
    """Listen ports match the container ports; the peer list names the
    StatefulSet's pods by their stable DNS names, node N+1 being pod N;
    routers reach listed peers and advertise ports their Service exposes."""
    out, peer_addrs = [], set()
    for w in m.workloads:
        for c in containers(w):
            named = {q.get("name"): q["containerPort"] for q in ports(c)}
            for var, pname in LISTEN_PORTS.items():
                port = port_of(env_value(c, var))
                if port is not None and named.get(pname) != port:
                    out.append(f"{where(w, c)}: {var} listens on {port} but container port '{pname}' "
                               f"is {named.get(pname)}")
            for addr in (env_value(c, "TESSERA_ROUTER_CLUSTER_LISTEN") or "").split(","):
                if addr and port_of(addr) not in named.values():
                    out.append(f"{where(w, c)}: TESSERA_ROUTER_CLUSTER_LISTEN {addr} is not a container port")
            peers = env_value(c, "TESSERA_NODE_PEERS")
            if peers is None or w["kind"] != "StatefulSet":
                continue
            sts, svc = w["metadata"]["name"], w["spec"].get("serviceName")
            entries = [p.split("=", 1) for p in peers.split(",")]
            if len(entries) < 3 or len(entries) > w["spec"].get("replicas", 1):
                out.append(f"{where(w, c)}: TESSERA_NODE_PEERS lists {len(entries)} nodes; "
                           f"the cluster forms with 3 to replicas ({w['spec'].get('replicas', 1)})")
            for e in entries:
                if len(e) != 2 or not e[0].isdigit():
                    out.append(f"{where(w, c)}: TESSERA_NODE_PEERS entry {'='.join(e)!r} is not ID=HOST:PORT")
                    continue
                want = f"{sts}-{int(e[0]) - 1}.{svc}:{named.get('grpc')}"
                if e[1] != want:
                    out.append(f"{where(w, c)}: TESSERA_NODE_PEERS has {e[0]}={e[1]}; node {e[0]} is pod "
                               f"{sts}-{int(e[0]) - 1}, reached at {want}")
                peer_addrs.add(e[1])
            advertise = env_value(c, "TESSERA_NODE_ADVERTISE")
            want = f"$(POD_NAME).{svc}:{named.get('grpc')}"
            if advertise != want:
                out.append(f"{where(w, c)}: TESSERA_NODE_ADVERTISE is {advertise!r}, not {want!r}")
            if env_value(c, "TESSERA_NODE_ID") != "from-hostname":
                out.append(f"{where(w, c)}: TESSERA_NODE_ID must be from-hostname (one spec for every pod)")
    for w in m.workloads:
        for c in containers(w):
            for addr in (env_value(c, "TESSERA_ROUTER_NODES") or "").split(","):
                if addr and addr not in peer_addrs:
                    out.append(f"{where(w, c)}: TESSERA_ROUTER_NODES lists {addr}, which is no storage peer")
            advertised = env_value(c, "TESSERA_ROUTER_ADVERTISE")
            if advertised is None:
                continue
            services = [s for s in m.of("Service") if selects(s["spec"].get("selector"), pod_labels(w))]
            for addr in advertised.split(","):
                host = addr.rsplit(":", 1)[0]
                ok = any(host.split(".")[0] == s["metadata"]["name"]
                         and port_of(addr) in {p["port"] for p in s["spec"].get("ports") or []} for s in services)
                if not ok:
                    out.append(f"{where(w, c)}: TESSERA_ROUTER_ADVERTISE {addr} is no port of a Service "
                               "selecting these pods")
    return out


def check_gpu(m, gpu):
    out = []
    for w in m.of("StatefulSet"):
        for c in containers(w):
            if env_value(c, "TESSERA_NODE_PEERS") is None:
                continue
            limit = ((c.get("resources") or {}).get("limits") or {}).get(GPU)
            if gpu and not limit:
                out.append(f"{where(w, c)}: the GPU overlay must limit {GPU} (the device plugin assigns GPUs by limit)")
            if not gpu and limit:
                out.append(f"{where(w, c)}: asks for {GPU} but this overlay is not the GPU one")
    return out


CHECKS = (check_workload_selectors, check_services, check_statefulset_services, check_pdbs, check_probes,
          check_env_refs, check_references, check_volume_mounts, check_hardening, check_commands,
          check_tessera_wiring)


def check(docs, gpu=False):
    """Every problem found in `docs` (parsed YAML documents), as messages."""
    m = Manifests(docs)
    problems = [p for c in CHECKS for p in c(m)] + check_gpu(m, gpu)
    if not m.workloads:
        problems.append("no workloads in the manifests")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="the storage pods must limit nvidia.com/gpu")
    ap.add_argument("file", help="rendered manifests (kubectl kustomize output), or - for stdin")
    args = ap.parse_args()
    with (sys.stdin if args.file == "-" else open(args.file)) as f:
        docs = list(yaml.safe_load_all(f))
    problems = check(docs, args.gpu)
    for p in problems:
        print(f"check_manifests: {p}")
    if problems:
        print(f"check_manifests: {len(problems)} problem(s) in {args.file}")
        return 1
    print(f"check_manifests: ok, {len([d for d in docs if d])} objects in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
