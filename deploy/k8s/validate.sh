#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests, no cluster needed. For each
# overlay: render it (`kubectl kustomize`), validate every object strictly
# (unknown fields are errors) against the Kubernetes API schemas that
# kubernetes-validate bundles, for the oldest and newest Kubernetes versions
# checked, then run check_manifests.py's cross-object checks. The checks'
# own tests: tests/python/test_k8s_manifests.py.
#
# Without kubectl it says so and skips (exit 0); kubernetes-validate comes
# with the venv of scripts/setup.sh.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${TESSERA_CACHE:-$HOME/.cache/tessera}/venv/bin/python"
KUBE_VERSIONS=(1.30.0 1.37.0)
OVERLAYS=(cpu gpu)

if ! command -v kubectl >/dev/null 2>&1; then
  echo "validate: SKIPPED: kubectl not found (it renders the kustomizations)"
  exit 0
fi
if ! "$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "validate: kubernetes-validate is not in $PY's venv: run scripts/setup.sh" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail=0
kv=()
for v in "${KUBE_VERSIONS[@]}"; do kv+=(-k "$v"); done
for o in "${OVERLAYS[@]}"; do
  out="$tmp/$o.yaml"
  if ! kubectl kustomize "$HERE/overlays/$o" >"$out"; then
    echo "validate: $o: kubectl kustomize failed"
    fail=1
    continue
  fi
  echo "validate: $o: $(grep -c '^kind:' "$out") objects rendered"
  # kubernetes-validate only warns (exit 0) about a kind it has no schema
  # for; here that is a failure too.
  if report="$("$PY" -m kubernetes_validate --strict --quiet "${kv[@]}" "$out" 2>&1)" && [ -z "$report" ]; then
    echo "validate: $o: strict schemas of Kubernetes ${KUBE_VERSIONS[*]}: ok"
  else
    echo "validate: $o: strict schemas of Kubernetes ${KUBE_VERSIONS[*]}: FAILED"
    echo "$report" | sed "s|$out|overlays/$o|g"
    fail=1
  fi
  flags=()
  [ "$o" = gpu ] && flags+=(--gpu)
  "$PY" "$HERE/check_manifests.py" "${flags[@]}" "$out" | sed "s|$out|overlays/$o|g" || fail=1
done
if [ $fail != 0 ]; then
  echo "validate: FAILED"
  exit 1
fi
echo "validate: ok"
