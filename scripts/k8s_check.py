#!/usr/bin/env python3
"""Helpers for scripts/k8s-check.sh (run with the venv's python, which has PyYAML).

Subcommands:
  split RENDER OUTDIR       Split a rendered kustomize stream into what
                            kubernetes-validate can check (OUTDIR/native.yaml) and
                            the Prometheus Operator objects it has no schema for,
                            which get structural and cross-reference checks here;
                            every PrometheusRule's spec.groups is written to
                            OUTDIR/<name>.rules.yaml for promtool. Also checks the
                            references between native objects that no JSON schema
                            can see (selectors, names, the shutdown time budget).
  dashboard JSON OUTFILE    Check a Grafana dashboard and write every panel query,
                            with Grafana's variables substituted, as recording rules
                            so `promtool check rules` parses the PromQL.
  config-coverage CONFIG_RS FILE...
                            Every ROOMCAST_* variable the gateway's config declares
                            must appear (set, or commented with an explanation) in
                            one of FILEs, so new knobs do not silently miss the
                            ConfigMap.
  metric-names METRICS_RS FILE...
                            Every roomcast_* metric that the dashboard or the alerts
                            query must be one the gateway defines in METRICS_RS
                            (histogram _bucket/_sum/_count series included), so a
                            renamed metric cannot leave a blank panel or a dead alert.

Exit status 1 with one line per problem on stderr.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

# Custom resources checked here (kubernetes-validate ships schemas for built-in
# kinds only). Any other custom resource fails the check until it gets one.
CHECKED_CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

problems: list[str] = []


def fail(msg: str) -> None:
    problems.append(msg)


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def is_builtin(api_version: str) -> bool:
    """Core (`v1`), the unqualified groups (apps, batch, policy, autoscaling) and the
    `*.k8s.io` groups are Kubernetes' own; everything else comes from a CRD."""
    group = group_of(api_version)
    return group == "" or "." not in group or group.endswith(".k8s.io")


def ident(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def parse_duration_s(text: str) -> float:
    """humantime / Prometheus durations as used in the ConfigMap: 30s, 1m30s, 200ms."""
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text):
        total += float(num) * units[unit]
    if total == 0 and text.strip() not in ("0", "0s"):
        raise ValueError(f"not a duration: {text!r}")
    return total


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def split(render: Path, outdir: Path) -> None:
    docs = [d for d in yaml.safe_load_all(render.read_text()) if d]
    outdir.mkdir(parents=True, exist_ok=True)
    native, custom = [], []
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            fail(f"{render}: a document without kind/apiVersion")
            continue
        (native if is_builtin(doc["apiVersion"]) else custom).append(doc)

    with open(outdir / "native.yaml", "w") as fh:
        yaml.safe_dump_all(native, fh, sort_keys=False)

    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)

    check_native_references(by_kind)

    for doc in custom:
        kind = doc["kind"]
        if kind not in CHECKED_CRD_KINDS:
            fail(f"{ident(doc)}: custom resource with neither a schema nor a check here")
        elif kind == "ServiceMonitor":
            check_servicemonitor(doc, by_kind.get("Service", []))
        elif kind == "PrometheusRule":
            groups = (doc.get("spec") or {}).get("groups")
            if not groups:
                fail(f"{ident(doc)}: spec.groups is empty")
                continue
            out = outdir / f"{doc['metadata']['name']}.rules.yaml"
            with open(out, "w") as fh:
                yaml.safe_dump({"groups": groups}, fh, sort_keys=False)
            print(f"  {ident(doc)}: {sum(len(g.get('rules', [])) for g in groups)} rules -> {out}")

    print(f"  {len(native)} built-in objects -> {outdir / 'native.yaml'}; "
          f"{len(custom)} custom resources checked here: "
          + ", ".join(ident(d) for d in custom))


def check_servicemonitor(sm: dict, services: list[dict]) -> None:
    spec = sm.get("spec") or {}
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"{ident(sm)}: apiVersion must be monitoring.coreos.com/v1")
    selector = (spec.get("selector") or {}).get("matchLabels")
    if not selector:
        fail(f"{ident(sm)}: spec.selector.matchLabels is required here")
        return
    targets = [s for s in services if labels_match(selector, s["metadata"].get("labels", {}))]
    if not targets:
        fail(f"{ident(sm)}: selects no Service in the render")
        return
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        fail(f"{ident(sm)}: spec.endpoints is empty")
    allowed = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
               "honorTimestamps", "relabelings", "metricRelabelings", "params", "tlsConfig",
               "bearerTokenSecret", "authorization", "basicAuth", "followRedirects",
               "enableHttp2", "filterRunning", "proxyUrl", "oauth2"}
    for ep in endpoints:
        unknown = set(ep) - allowed
        if unknown:
            fail(f"{ident(sm)}: unknown endpoint fields {sorted(unknown)}")
        for svc in targets:
            names = {p.get("name") for p in svc["spec"].get("ports", [])}
            if ep.get("port") not in names:
                fail(f"{ident(sm)}: port {ep.get('port')!r} is not a named port of {ident(svc)}")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not re.fullmatch(r"(\d+(ms|s|m|h))+", ep[key]):
                fail(f"{ident(sm)}: {key} {ep[key]!r} is not a Prometheus duration")
        if "interval" in ep and "scrapeTimeout" in ep and \
                parse_duration_s(ep["scrapeTimeout"]) > parse_duration_s(ep["interval"]):
            fail(f"{ident(sm)}: scrapeTimeout exceeds interval")
        if not str(ep.get("path", "/metrics")).startswith("/"):
            fail(f"{ident(sm)}: path must start with /")


def check_native_references(by_kind: dict[str, list[dict]]) -> None:
    """What the API server's schema cannot see: do the objects point at each other?"""
    deployments = by_kind.get("Deployment", [])
    pod_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for d in deployments]
    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    secrets = {s["metadata"]["name"] for s in by_kind.get("Secret", [])}
    sas = {s["metadata"]["name"] for s in by_kind.get("ServiceAccount", [])}

    for dep in deployments:
        spec = dep["spec"]
        tmpl = spec["template"]
        if not labels_match(spec["selector"].get("matchLabels"), tmpl["metadata"].get("labels", {})):
            fail(f"{ident(dep)}: selector does not match the pod template labels")
        pod = tmpl["spec"]
        sa = pod.get("serviceAccountName")
        if sa and sa not in sas:
            fail(f"{ident(dep)}: ServiceAccount {sa!r} is not in the render")
        for c in pod.get("containers", []):
            env = {}
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef")
                if ref and ref["name"] not in configmaps and not ref.get("optional"):
                    fail(f"{ident(dep)}: envFrom ConfigMap {ref['name']!r} is not in the render")
                elif ref and ref["name"] in configmaps:
                    env.update(configmaps[ref["name"]].get("data", {}))
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] not in secrets and not ref.get("optional"):
                    # The base ships no Secret on purpose; say so instead of failing.
                    print(f"  note: {ident(dep)} needs Secret {ref['name']!r} "
                          f"(key {ref['key']}), not part of this render")
            # Shutdown budget: preStop sleep + ROOMCAST_SHUTDOWN_GRACE < grace period.
            if "ROOMCAST_SHUTDOWN_GRACE" in env:
                pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
                grace = parse_duration_s(env["ROOMCAST_SHUTDOWN_GRACE"])
                tgps = pod.get("terminationGracePeriodSeconds", 30)
                if tgps <= pre + grace:
                    fail(f"{ident(dep)}: terminationGracePeriodSeconds {tgps} <= preStop {pre}s "
                         f"+ ROOMCAST_SHUTDOWN_GRACE {grace:g}s")
                else:
                    print(f"  {ident(dep)}: shutdown budget ok: preStop {pre}s + grace {grace:g}s "
                          f"< terminationGracePeriodSeconds {tgps}s")
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    fail(f"{ident(dep)}: {probe} uses unknown port name {port!r}")

    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector")
        if sel and not any(labels_match(sel, lbl) for lbl in pod_labels):
            fail(f"{ident(svc)}: selector matches no Deployment's pods")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind.get(kind, []):
            key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
            sel = (obj["spec"].get(key) or {}).get("matchLabels")
            if sel and not any(labels_match(sel, lbl) for lbl in pod_labels):
                fail(f"{ident(obj)}: {key} matches no Deployment's pods")
    dep_names = {d["metadata"]["name"] for d in deployments}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in dep_names:
            fail(f"{ident(hpa)}: scaleTargetRef {ref['kind']}/{ref['name']} is not in the render")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            fail(f"{ident(hpa)}: minReplicas > maxReplicas")
        for d in deployments:
            if d["metadata"]["name"] == ref["name"] and \
                    d["spec"].get("replicas", 1) < hpa["spec"].get("minReplicas", 1):
                fail(f"{ident(hpa)}: minReplicas above the Deployment's replicas")


GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$\{__rate_interval\}"), "5m"),
    (re.compile(r"\$__interval|\$\{__interval\}"), "1m"),
    (re.compile(r"\$__range|\$\{__range\}"), "1h"),
    # Template variables become match-anything regexes.
    (re.compile(r"\$\{?(namespace|pod|job)(:[a-z]+)?\}?"), ".*"),
]


def dashboard(path: Path, out: Path) -> None:
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        fail(f"{path}: invalid JSON: {err}")
        return
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dash:
            fail(f"{path}: missing top-level {key!r}")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail(f"{path}: needs a `datasource` variable of type datasource (prometheus)")
    rules, ids = [], set()
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    for p in panels:
        if p.get("type") == "row":
            continue
        if p.get("id") in ids:
            fail(f"{path}: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        uid = (p.get("datasource") or {}).get("uid")
        if uid != "${datasource}":
            fail(f"{path}: panel {p.get('title')!r} does not use the datasource variable")
        targets = p.get("targets") or []
        if not targets:
            fail(f"{path}: panel {p.get('title')!r} has no query")
        for i, t in enumerate(targets):
            expr = t.get("expr", "")
            for rx, repl in GRAFANA_VARS:
                expr = rx.sub(repl, expr)
            if "$" in expr:
                fail(f"{path}: panel {p.get('title')!r} uses an unknown variable: {expr}")
            rules.append({"record": f"dashboard:panel_{p.get('id')}:query_{i}", "expr": expr})
    with open(out, "w") as fh:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, fh, sort_keys=False)
    print(f"  {path}: {len(panels)} panels, {len(rules)} queries -> {out}")


def config_coverage(config_rs: Path, files: list[Path]) -> None:
    if not config_rs.exists():
        print(f"  note: {config_rs} not found; ConfigMap coverage not checked")
        return
    declared = sorted(set(re.findall(r'env\s*=\s*"(ROOMCAST_[A-Z0-9_]+)"', config_rs.read_text())))
    text = "\n".join(f.read_text() for f in files)
    missing = [name for name in declared if not re.search(rf"\b{name}\b", text)]
    for name in missing:
        fail(f"{name} is declared in {config_rs} but appears in none of the manifests")
    print(f"  {len(declared) - len(missing)}/{len(declared)} ROOMCAST_* variables of {config_rs} "
          "are set or documented in the manifests")


def metric_names(metrics_rs: Path, files: list[Path]) -> None:
    if not metrics_rs.exists():
        print(f"  note: {metrics_rs} not found; metric names not checked")
        return
    defined = set(re.findall(r'"(roomcast_[a-z0-9_]+)"', metrics_rs.read_text()))
    for f in files:
        used = set(re.findall(r"\b(roomcast_[a-z0-9_]+)", f.read_text()))
        unknown = sorted(m for m in used
                         if m not in defined and re.sub(r"_(bucket|sum|count)$", "", m) not in defined)
        for m in unknown:
            fail(f"{f}: queries {m}, which {metrics_rs} does not define")
        print(f"  {f}: {len(used) - len(unknown)}/{len(used)} roomcast_* metric names defined by the gateway")


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "split":
        split(Path(argv[1]), Path(argv[2]))
    elif len(argv) == 3 and argv[0] == "dashboard":
        dashboard(Path(argv[1]), Path(argv[2]))
    elif len(argv) >= 3 and argv[0] == "config-coverage":
        config_coverage(Path(argv[1]), [Path(a) for a in argv[2:]])
    elif len(argv) >= 3 and argv[0] == "metric-names":
        metric_names(Path(argv[1]), [Path(a) for a in argv[2:]])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
