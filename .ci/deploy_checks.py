#!/usr/bin/env python3
"""Structure checks for deploy/ that need more than a linter. Called by .ci/deploy-checks.sh.

Subcommands (each prints what it checks, exits non-zero on any failure):
  k8s VERSION...   validate every manifest under deploy/kubernetes with kubernetes-validate
                   (strict), check every kustomization (resources and patches exist), render
                   each overlay with a small kustomize subset and validate the result, and
                   cross-check names, selectors, ports and the shenhe.yaml in the ConfigMap.
  metrics          every metric name used by the dashboard, the alert rules and their tests
                   exists in src/metrics.rs.
  promql OUT       write the dashboard's queries as recording rules into OUT, so that
                   `promtool check rules OUT` checks their PromQL syntax.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "shenhe.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
METRICS_RS = ROOT / "src" / "metrics.rs"

# API groups kubernetes-validate has schemas for are the built-in ones. Anything else is a CRD.
KNOWN_CRDS = {"monitoring.coreos.com"}
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def load_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kname(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------
def validate_docs(docs: list[tuple[str, dict]], versions: list[str]) -> None:
    import kubernetes_validate as kv
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    for where, doc in docs:
        group = doc.get("apiVersion", "").rpartition("/")[0]
        if group in KNOWN_CRDS:
            print(f"  SKIP {where} {kname(doc)}: CRD {doc['apiVersion']} has no bundled schema "
                  "(not validated; structure cross-checked below)")
            continue
        good = []
        for v in versions:
            try:
                kv.validate(doc, v, strict=True)
                good.append(v)
            except ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path)
                fail(f"{where} {kname(doc)} invalid for Kubernetes {v} at {path or '<root>'}: {e.message}")
            except SchemaNotFoundError as e:
                fail(f"{where} {kname(doc)}: {e.message} (unknown kind: add it to KNOWN_CRDS only if it is a CRD)")
        if len(good) == len(versions):
            ok(f"{where} {kname(doc)} valid (strict) for Kubernetes {', '.join(versions)}")


def kustomization_files() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def render(kdir: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """Render a kustomization with the subset of kustomize features this repository uses.

    Supported: resources (files and directories), namespace, images (name/newName/newTag),
    replicas, patches (strategic merge from a file, with a kind/name target). Any other field
    fails the check, so the render is never silently incomplete.
    """
    kfile = kdir / "kustomization.yaml"
    if kdir in seen:
        fail(f"{rel(kfile)}: kustomization cycle")
        return []
    k = load_docs(kfile)[0]
    extra = set(k) - KUSTOMIZE_KEYS
    if extra:
        fail(f"{rel(kfile)}: fields {sorted(extra)} are not supported by the render in .ci/deploy_checks.py; extend it")
    out: list[dict] = []
    for r in k.get("resources", []):
        p = (kdir / r).resolve()
        if p.is_dir():
            if not (p / "kustomization.yaml").is_file():
                fail(f"{rel(kfile)}: resource directory {r} has no kustomization.yaml")
                continue
            out += render(p, seen + (kdir,))
        elif p.is_file():
            out += copy.deepcopy(load_docs(p))
        else:
            fail(f"{rel(kfile)}: resource {r} does not exist")
    if "namespace" in k:
        for d in out:
            if d["kind"] not in CLUSTER_SCOPED:
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
    for img in k.get("images", []):
        hits = 0
        for d in out:
            for c in pod_containers(d):
                name = image_name(c["image"])
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}" if "newTag" in img else img.get("newName", img["name"])
                    hits += 1
        if hits == 0:
            fail(f"{rel(kfile)}: images entry {img['name']} matches no container image")
    for rep in k.get("replicas", []):
        targets = [d for d in out if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == rep["name"]]
        if not targets:
            fail(f"{rel(kfile)}: replicas entry {rep['name']} matches no Deployment/StatefulSet")
        for d in targets:
            d["spec"]["replicas"] = rep["count"]
    for patch in k.get("patches", []):
        if "path" not in patch:
            fail(f"{rel(kfile)}: inline patches are not supported by the render; use a file")
            continue
        pfile = kdir / patch["path"]
        if not pfile.is_file():
            fail(f"{rel(kfile)}: patch {patch['path']} does not exist")
            continue
        pdoc = load_docs(pfile)[0]
        tgt = patch.get("target", {"kind": pdoc["kind"], "name": pdoc["metadata"]["name"]})
        matched = [d for d in out if d["kind"] == tgt.get("kind") and d["metadata"]["name"] == tgt.get("name")]
        if not matched:
            fail(f"{rel(kfile)}: patch {patch['path']} matches no resource")
        for d in matched:
            strategic_merge(d, pdoc)
    ok(f"{rel(kfile)}: all resources and patches exist; rendered {len(out)} objects")
    return out


def image_name(image: str) -> str:
    """registry.example.com:5000/ai/shenhe:0.1.0@sha256:... -> registry.example.com:5000/ai/shenhe"""
    image = image.split("@", 1)[0]
    head, _, tail = image.rpartition(":")
    return head if head and "/" not in tail else image


def strategic_merge(dst: dict, src: dict) -> None:
    for key, val in src.items():
        if isinstance(val, dict) and isinstance(dst.get(key), dict):
            strategic_merge(dst[key], val)
        elif isinstance(val, list) and isinstance(dst.get(key), list) and all(isinstance(i, dict) and "name" in i for i in val):
            for item in val:
                same = [i for i in dst[key] if isinstance(i, dict) and i.get("name") == item["name"]]
                if same:
                    strategic_merge(same[0], item)
                else:
                    dst[key].append(copy.deepcopy(item))
        else:
            dst[key] = copy.deepcopy(val)


def pod_spec(d: dict) -> dict | None:
    if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return d["spec"]["template"]["spec"]
    return None


def pod_containers(d: dict) -> list[dict]:
    ps = pod_spec(d)
    return (ps.get("initContainers", []) + ps.get("containers", [])) if ps else []


def parse_duration(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(s))
    if not m:
        raise ValueError(f"bad duration {s!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def cross_check(objs: list[dict], label: str) -> None:
    """Names, selectors, ports and config that must agree across the rendered objects."""
    by = {(d["kind"], d["metadata"]["name"]): d for d in objs}
    deps = [d for d in objs if d["kind"] == "Deployment"]
    if not deps:
        fail(f"{label}: no Deployment rendered")
        return
    for dep in deps:
        before = len(failures)
        ps = pod_spec(dep)
        tmpl_labels = dep["spec"]["template"]["metadata"].get("labels", {})
        sel = dep["spec"]["selector"]["matchLabels"]
        if any(tmpl_labels.get(k) != v for k, v in sel.items()):
            fail(f"{label}: Deployment selector {sel} does not match its template labels")
        ports = {p["name"]: p["containerPort"] for c in ps["containers"] for p in c.get("ports", [])}

        def selects(selector: dict) -> bool:
            return all(tmpl_labels.get(k) == v for k, v in selector.items())

        for d in objs:
            kind = d["kind"]
            if kind == "Service":
                if not selects(d["spec"].get("selector", {})):
                    fail(f"{label}: Service {d['metadata']['name']} selector matches no pod of {kname(dep)}")
                for p in d["spec"]["ports"]:
                    tp = p.get("targetPort", p["port"])
                    if isinstance(tp, str) and tp not in ports:
                        fail(f"{label}: Service {d['metadata']['name']} targetPort {tp} is no container port")
                    if tp in (8000, "8000"):
                        fail(f"{label}: Service {d['metadata']['name']} exposes the model port 8000")
            elif kind in ("PodDisruptionBudget", "PodMonitor", "NetworkPolicy"):
                selector = d["spec"]["selector" if kind != "NetworkPolicy" else "podSelector"].get("matchLabels", {})
                if not selects(selector):
                    fail(f"{label}: {kname(d)} selector {selector} matches no pod of {kname(dep)}")
                if kind == "PodMonitor":
                    for ep in d["spec"]["podMetricsEndpoints"]:
                        if ep.get("port") not in ports:
                            fail(f"{label}: PodMonitor port {ep.get('port')} is no container port")
                if kind == "NetworkPolicy":
                    opened = {p.get("port") for r in d["spec"].get("ingress", []) for p in r.get("ports", [])}
                    if 8000 in opened or "8000" in opened:
                        fail(f"{label}: NetworkPolicy opens the model port 8000")
        # Volumes: every referenced ConfigMap/Secret/PVC exists, with the keys used.
        projected: dict[str, set[str]] = {}
        for v in ps.get("volumes", []):
            srcs = v.get("projected", {}).get("sources", [])
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                for s in srcs + [v]:
                    ref = s.get(field)
                    if not ref:
                        continue
                    name = ref.get("name") or ref.get("secretName")
                    obj = by.get((kind, name))
                    if obj is None:
                        fail(f"{label}: volume {v['name']} uses {kind} {name}, which is not rendered")
                        continue
                    keys = set(obj.get("data", {})) | set(obj.get("stringData", {}))
                    for item in ref.get("items", []):
                        if item["key"] not in keys:
                            fail(f"{label}: volume {v['name']} projects key {item['key']} missing from {kind} {name}")
                        projected.setdefault(v["name"], set()).add(item["path"])
                    if ref.get("items") and keys - {i["key"] for i in ref["items"]}:
                        fail(f"{label}: {kind} {name} keys {sorted(keys - {i['key'] for i in ref['items']})} "
                             f"are not projected into volume {v['name']} (add them to its items)")
            pvc = v.get("persistentVolumeClaim")
            if pvc and ("PersistentVolumeClaim", pvc["claimName"]) not in by:
                fail(f"{label}: volume {v['name']} uses PVC {pvc['claimName']}, which is not rendered")
        for c in ps["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    sec = by.get(("Secret", ref["name"]))
                    keys = set(sec.get("stringData", {})) | set(sec.get("data", {})) if sec else set()
                    if ref["key"] not in keys and not ref.get("optional"):
                        fail(f"{label}: env {e['name']} uses {ref['name']}/{ref['key']}, which is not rendered")
        # shenhe container and its config.
        shenhe = [c for c in ps["containers"] if c["name"] == "shenhe"]
        if not shenhe:
            fail(f"{label}: no container named shenhe")
            continue
        sh = shenhe[0]
        sc = sh.get("securityContext", {})
        for key, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)):
            if sc.get(key) is not want:
                fail(f"{label}: shenhe securityContext.{key} must be {want}")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{label}: shenhe must drop ALL capabilities")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            hg = sh.get(probe, {}).get("httpGet", {})
            if hg.get("path") != path or hg.get("port") not in ("admin", 9090):
                fail(f"{label}: shenhe {probe} must be GET {path} on the admin port")
        cfg_doc = by.get(("ConfigMap", "shenhe-config"))
        if not cfg_doc:
            fail(f"{label}: ConfigMap shenhe-config not rendered")
            continue
        cfg = yaml.safe_load(cfg_doc["data"]["shenhe.yaml"])
        for key in ("server", "upstream", "routes", "policy", "labels", "audit"):
            if key not in cfg:
                fail(f"{label}: shenhe.yaml lacks top-level {key} of the config skeleton")
        srv = cfg.get("server", {})
        if srv.get("admin_listen") != "0.0.0.0:9090" or srv.get("listen") != "0.0.0.0:8080":
            fail(f"{label}: shenhe.yaml must listen on 0.0.0.0:8080 and admin on 0.0.0.0:9090")
        if cfg.get("upstream", {}).get("base_url") != "http://127.0.0.1:8000":
            fail(f"{label}: shenhe.yaml upstream must be the in-pod model on http://127.0.0.1:8000")
        if cfg.get("audit", {}).get("retention_days", 0) < 180:
            fail(f"{label}: audit.retention_days must be >= 180")
        mounts = {m["name"]: m for m in sh.get("volumeMounts", [])}
        cfg_mount = next((m for m in mounts.values() if m["mountPath"] == "/etc/shenhe"), None)
        audit_dir = cfg.get("audit", {}).get("dir")
        if not any(m["mountPath"] == audit_dir for m in mounts.values()):
            fail(f"{label}: audit.dir {audit_dir} is not a volume mount of the shenhe container")
        files = [f for cat in cfg.get("policy", {}).get("categories", []) for f in cat.get("keyword_files", [])]
        files.append(cfg.get("labels", {}).get("implicit", {}).get("signing_key_file", "/etc/shenhe/keys/signing.pem"))
        if cfg_mount is None:
            fail(f"{label}: nothing is mounted at /etc/shenhe")
        else:
            paths = projected.get(cfg_mount["name"], set())
            for f in files:
                if not f.startswith("/etc/shenhe/") or f[len("/etc/shenhe/"):] not in paths:
                    fail(f"{label}: shenhe.yaml refers to {f}, which the /etc/shenhe volume does not provide")
        grace = ps.get("terminationGracePeriodSeconds", 30)
        pre = sh.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = parse_duration(srv.get("shutdown_grace", "30s"))
        if not grace > pre + drain:
            fail(f"{label}: terminationGracePeriodSeconds {grace} must exceed preStop {pre}s + shutdown_grace {drain}s")
        if len(failures) == before:
            ok(f"{label}: {kname(dep)} names, selectors, ports, secrets, volumes, config paths and grace period agree")


def cmd_k8s(versions: list[str]) -> None:
    import kubernetes_validate as kv
    from kubernetes_validate.utils import all_versions

    print(f"kubernetes-validate {kv.__version__ if hasattr(kv, '__version__') else ''} bundles schemas for "
          f"Kubernetes {', '.join(sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split('.')))))}; validating against {', '.join(versions)}")
    kfiles = kustomization_files()
    patch_files = {(kf.parent / p["path"]).resolve() for kf in kfiles
                   for p in load_docs(kf)[0].get("patches", []) if "path" in p}
    print("== each manifest file on its own")
    docs: list[tuple[str, dict]] = []
    for f in sorted(K8S.rglob("*.yaml")):
        if f.name == "kustomization.yaml":
            print(f"  SKIP {rel(f)}: kustomize configuration, not a Kubernetes object (checked below)")
            continue
        if f.resolve() in patch_files:
            print(f"  SKIP {rel(f)}: a patch fragment, not a whole object (validated inside the rendered overlay)")
            continue
        docs += [(rel(f), d) for d in load_docs(f)]
    validate_docs(docs, versions)
    print("== kustomizations: resources exist, render, validate the result, cross-check")
    for kf in kfiles:
        objs = render(kf.parent)
        label = rel(kf.parent)
        if kf.parent.parent.name == "overlays":
            validate_docs([(f"{label} (rendered)", d) for d in objs], versions)
        cross_check(objs, label)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def declared_metrics() -> tuple[set[str], set[str]]:
    src = METRICS_RS.read_text(encoding="utf-8")
    names, hists = set(), set()
    for ctor, name in re.findall(r'\b(counter_vec|counter|gauge_vec|gauge|histogram_vec|histogram)\(\s*&reg,\s*"(shenhe_[a-z0-9_]+)"', src):
        names.add(name)
        if ctor.startswith("histogram"):
            hists.add(name)
    return names, hists


def exprs_of_dashboard(d) -> list[str]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            if k == "expr" and isinstance(v, str):
                out.append(v)
            else:
                out += exprs_of_dashboard(v)
    elif isinstance(d, list):
        for v in d:
            out += exprs_of_dashboard(v)
    return out


def used_names(expr: str) -> set[str]:
    # Metric names are the identifiers directly before a {selector}, plus any shenhe_* token.
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))
    names |= set(re.findall(r"\bshenhe_[a-z0-9_]+", expr))
    return names


def cmd_metrics() -> None:
    names, hists = declared_metrics()
    print(f"src/metrics.rs declares {len(names)} metrics ({len(hists)} histograms)")
    if len(names) < 10:
        fail("could not parse metric declarations from src/metrics.rs")
    allowed = set(names) | {f"{h}{s}" for h in hists for s in ("_bucket", "_sum", "_count")} | {"up"}
    sources: list[tuple[str, str]] = []
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    sources += [(rel(DASHBOARD), e) for e in exprs_of_dashboard(dash)]
    for g in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]:
        sources += [(f"{rel(ALERTS)} {r.get('alert') or r.get('record')}", r["expr"]) for r in g["rules"]]
    for t in yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]:
        sources += [(rel(ALERT_TESTS), s["series"]) for s in t.get("input_series", [])]
    used: dict[str, set[str]] = {}
    for where, e in sources:
        for n in used_names(e):
            used.setdefault(n, set()).add(where)
    for n in sorted(used):
        if n in allowed or n.startswith("shenhe_process_"):
            continue
        fail(f"metric {n} (used in {', '.join(sorted(used[n]))}) is not declared in src/metrics.rs")
    unused = sorted(names - {n for n in used} - {n.rsplit('_', 1)[0] for n in used})
    ok(f"{len(used)} metric names used in {len(sources)} expressions all exist")
    if unused:
        print(f"  note metrics not shown anywhere yet: {', '.join(unused)}")


def cmd_promql(out: str) -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = exprs_of_dashboard(dash)
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": "shenhe", "$instance": ".*"}
    rules = []
    for i, e in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in e:
            fail(f"dashboard query {i} uses an unknown variable: {e}")
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    ok(f"{len(exprs)} dashboard queries written to {out} for promtool")


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "k8s":
        cmd_k8s(args or ["1.30.0", "1.37.0"])
    elif cmd == "metrics":
        cmd_metrics()
    elif cmd == "promql":
        cmd_promql(args[0])
    else:
        print(__doc__)
        return 2
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
