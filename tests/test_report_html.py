"""The HTML report of an erasure request: self-contained, complete, faithful to the certificate, renders in a browser;
and the certificate data its plots are drawn from (the forget set is erased, so nothing is measured again)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html import unescape
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from disgorge.erasure import forget
from disgorge.errors import InvalidRequest, NotFound
from disgorge.evidence.certificate import CURVE_BINS, ROC_POINTS, VERDICTS, check_rows, figure_rows, robustness_rows
from disgorge.report.html import _overall, render_report, write_report_html
from disgorge.workspace import Workspace

REASON = "poisoned <script>alert(1)</script> images"


def _made(template: tuple[Path, str], factory: pytest.TempPathFactory, verify: str) -> dict[str, Any]:
    root = factory.mktemp("report") / "ws"
    shutil.copytree(template[0], root)
    with Workspace.open(root) as ws:
        result = forget(ws, sources=["contributor-07"], method="grad_diff", reason=REASON, verify=verify)
    (child,) = result.children
    (cert,) = result.certificates
    return {"root": root, "request": result.request_id, "child": child.id, "cert": cert, "parent": template[1]}


@pytest.fixture(scope="module")
def made(backdoor_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One erasure request (contributor-07 with grad_diff) verified at the exact level (a retrained reference) in a
    private copy of the template workspace, made once for the module: the workspace root, the request id, the child
    and its certificate."""
    return _made(backdoor_template, tmp_path_factory, "exact")


@pytest.fixture(scope="module")
def made_free(backdoor_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same request verified reference-free (against held-out data, nothing retrained), in another copy."""
    return _made(backdoor_template, tmp_path_factory, "heldout")


@pytest.fixture
def ws(made: dict[str, Any]) -> Any:
    with Workspace.open(made["root"]) as ws:
        yield ws


def _cells(table: str) -> list[list[str]]:
    """The text of each body row's cells in an HTML table."""
    body = table.split("<tbody>", 1)[1]
    return [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def _table(html: str, cls: str) -> str:
    match = re.search(rf'<table class="{cls}">.*?</table>', html, re.S)
    assert match, f"no table of class {cls}"
    return match.group(0)


def _self_contained(html: str) -> None:
    """Nothing in the page is fetched: no remote src/href, no script, no stylesheet link, no CSS import or URL."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()
    assert "@import" not in html and "url(http" not in html
    assert "<iframe" not in html.lower() and "<object" not in html.lower()


def test_certificate_keeps_loss_curves(made: dict[str, Any]):
    """The certificate carries the histograms and ROC curves the report draws: shared bins, counts summing to the
    forget and held-out sizes, ROC curves from (0, 0) to (1, 1) with at most ROC_POINTS points, the AUC equal to
    the certificate's MIA AUC; and small."""
    cert = made["cert"]
    curves = cert["curves"]
    n_forget, n_test = cert["records"]["forgotten"], cert["records"]["test"]
    assert (curves["forget"], curves["test"]) == (n_forget, n_test) == (72, 360)
    edges = curves["edges"]
    assert len(edges) == CURVE_BINS + 1 and all(a < b for a, b in pairwise(edges))
    assert set(curves["models"]) == {"original", "unlearned", "reference"}
    for name, entry in curves["models"].items():
        assert len(entry["forget_counts"]) == len(entry["test_counts"]) == CURVE_BINS
        assert sum(entry["forget_counts"]) == n_forget and sum(entry["test_counts"]) == n_test
        roc = entry["roc"]
        assert len(roc["fpr"]) == len(roc["tpr"]) <= ROC_POINTS
        assert (roc["fpr"][0], roc["tpr"][0]) == (0, 0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1, 1)
        assert all(a <= b for a, b in pairwise(roc["fpr"]))
        assert all(a <= b for a, b in pairwise(roc["tpr"]))
        assert roc["auc"] == pytest.approx(cert["metrics"][name]["mia_auc"], abs=0.01)
    # the memorised forget set has lower loss than held-out data before unlearning, not after
    assert curves["models"]["original"]["roc"]["auc"] > 70 > curves["models"]["unlearned"]["roc"]["auc"]
    assert len(json.dumps(curves)) < 12_000
    # the certificate file and the ledger's copy carry them too
    on_disk = json.loads((Path(made["root"]) / "reports" / f"r{made['request']}" / made["child"] /
                          "certificate.json").read_text())
    assert on_disk["curves"] == curves


def test_report_is_self_contained_and_shows_the_certificate(ws: Workspace, made: dict[str, Any]):
    """The page names the request, reason (escaped), selector, method, source, verdict; its figures and checks
    tables are the certificate's, cell for cell; plots are inline SVG; hashes are shown; nothing is fetched."""
    cert = made["cert"]
    html = render_report(ws, f"r{made['request']}")
    _self_contained(html)
    assert f"Erasure request r{made['request']}" in html
    assert "grad_diff" in html and "contributor-07" in html
    assert '<div class="word">PASSED</div>' in html and cert["passed"] and cert["verdict"] == "passed"
    assert cert["evidence"] == "exact" and "exact evidence" in html
    # user input is escaped, never markup
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # what the evidence proves and does not, the purpose and what decided
    text = unescape(html)
    assert cert["proves"] in text and cert["does_not_prove"] in text
    assert cert["purpose"]["name"] == "poison" and "Decided by" in text and "attack success rate" in text
    # the figures table holds exactly the certificate's formatted rows, with the reference's column
    figures = _table(html, "figures")
    assert _cells(figures) == [list(r) for r in figure_rows(cert)] and "retrained reference" in figures
    assert "Avg Gap to reference" in html
    # the checks: decisive first, with their measured figure, interval, target and original, all passed
    checks = _cells(_table(html, "checks"))
    assert [c[0].replace("decisive", "") for c in checks] == [r[0] for r in check_rows(cert)]
    assert [c[2] for c in checks] == [r[1] or "—" for r in check_rows(cert)]
    assert checks[0][0] == "effectdecisive" and "vs target" in checks[0][2]
    assert all(c[-1].startswith("✔ pass") for c in checks)
    assert not {"avg_gap", "mia_gap", "effect_gap"} & {c[0] for c in checks}
    # robustness: the attacks' rows and the reference's recovery (the floor)
    robustness = _cells(_table(html, "robustness"))
    rows = robustness_rows(cert)
    assert rows and [c[:6] for c in robustness] == [list(r) for r in rows]
    floor = cert["robustness"]["relearn"]["reference"]["figures"]["forget_accuracy"]["recovered"]
    assert float(robustness[0][6]) == pytest.approx(floor, abs=0.006)
    assert "0 means nothing came back" in html and "give the floor" in html
    (source,) = _cells(_table(html, "sources"))
    assert (source[0], source[1], source[3]) == ("contributor-07", "CC-BY-4.0", "72")
    # lineage + accuracy bars + loss histograms + ROC curves + effect probe
    assert html.count("<svg") >= 5
    assert "Not available" not in html
    for model in cert["models"].values():
        assert model["id"] in html and model["sha256"] in html
    assert f"{cert['seconds']['method']:.2f} s" in html and f"{cert['seconds']['retrain']:.2f} s" in html
    if "signature" in cert:  # signed certificates show the key and whether it verifies
        assert cert["signature"]["public_key"] in html and "The signature verifies" in html
    # the file: written atomically to the request's report folder, the same page
    path = write_report_html(ws, str(made["request"]))
    assert path == ws.report_dir(made["request"]) / "report.html"
    assert path.read_text().count("<svg") == html.count("<svg")


def test_report_of_one_model_and_refusals(ws: Workspace, made: dict[str, Any], tmp_path: Path):
    """An unlearned model's report covers it alone (next to its certificate); any other model, an unknown id or
    something that is no id at all is a one-line error."""
    child = made["child"]
    path = write_report_html(ws, child)
    assert path == ws.report_dir(made["request"]) / child / "report.html"
    assert f"Unlearned model {child}" in path.read_text()
    out = write_report_html(ws, f"R{made['request']}", tmp_path / "elsewhere" / "mine.html")
    assert out == tmp_path / "elsewhere" / "mine.html" and out.read_text().startswith("<!DOCTYPE html>")
    reference = made["cert"]["models"]["reference"]["id"]
    for target, error, words in ((made["parent"], InvalidRequest, "not the result of an erasure request"),
                                 (reference, InvalidRequest, "reference model"),
                                 ("m999", NotFound, "no model"), ("r99", NotFound, "no erasure request 99"),
                                 ("report.html", InvalidRequest, "request id (3 or r3)")):
        with pytest.raises(error, match=re.escape(words)) as exc:
            render_report(ws, target)
        assert "\n" not in str(exc.value)


NEW_KEYS = ("curves", "signature", "software", "machine", "issued_at", "erasure_request", "level", "evidence",
            "proves", "does_not_prove", "purpose", "verdict", "score", "robustness", "evidence_figures",
            "verified_time_ratio")
"""Keys an old certificate (format /1) lacks."""


def test_old_certificate_without_curves_says_so(made: dict[str, Any], tmp_path: Path):
    """A certificate made before the curves were kept (and unsigned), before evidence levels and verdicts (its
    checks the old ones, its verdict only ``passed``) still gives a report: the verdict from ``passed``, the
    reference's column, its own checks, the plots it can draw, a note where the loss plots would be, no signature or
    robustness."""
    root = tmp_path / "ws"
    shutil.copytree(made["root"], root)
    cert_path = root / "reports" / f"r{made['request']}" / made["child"] / "certificate.json"
    old = {k: v for k, v in json.loads(cert_path.read_text()).items() if k not in NEW_KEYS}
    old["format"] = "disgorge-certificate/1"
    old["checks"] = {"changed": {"value": True, "limit": True, "passed": True},
                     "avg_gap": {"value": 3.2, "limit": 10.0, "passed": True},
                     "ta_drop": {"value": 1.1, "limit": 3.0, "passed": True},
                     "mia_gap": {"value": 5.1, "limit": 20.0, "passed": True},
                     "effect_gap": {"value": 0.0, "limit": 5.0, "passed": True}}
    old["seconds"] = {"method": 1.5, "retrain": 30.0}
    cert_path.write_text(json.dumps(old))
    with Workspace.open(root) as ws:
        html = render_report(ws, str(made["request"]))
    _self_contained(html)
    assert '<div class="word">PASSED</div>' in html and "exact evidence" in html
    assert "Not available" in html and "cannot be drawn now" in html
    assert html.count("<svg") == 3  # lineage, accuracy bars, effect probe
    assert "<h3>Signature</h3>" not in html and "What this proves" not in html
    assert "records no robustness attack" in html
    assert 'id="environment"' in html  # where the certificate does not say, the rendering machine is shown
    assert _cells(_table(html, "figures")) == [list(r) for r in figure_rows(old)]
    checks = _cells(_table(html, "checks"))
    assert [c[0] for c in checks] == list(old["checks"]) and all(c[-1] == "✔ pass" for c in checks)
    assert "1.50 s" in html and "30.00 s" in html


def test_a_changed_certificate_shows_its_signature_fails(made: dict[str, Any], tmp_path: Path):
    """A signed certificate edited after signing is reported as such."""
    if "signature" not in made["cert"]:
        pytest.skip("certificates are not signed in this build")
    root = tmp_path / "ws"
    shutil.copytree(made["root"], root)
    cert_path = root / "reports" / f"r{made['request']}" / made["child"] / "certificate.json"
    cert = json.loads(cert_path.read_text())
    cert["metrics"]["unlearned"]["effect"] = 0.01
    cert_path.write_text(json.dumps(cert))
    with Workspace.open(root) as ws:
        html = render_report(ws, str(made["request"]))
    assert "The signature does not verify" in html and "The signature verifies" not in html


def test_a_rejected_request_is_reported_from_its_certificate(made: dict[str, Any], tmp_path: Path):
    """A request that failed verification is not in the ledger; its rejected certificate on disk still gives a
    report, FAILED, saying nothing was erased, with the failed checks."""
    root = tmp_path / "ws"
    shutil.copytree(made["root"], root)
    cert = json.loads((root / "reports" / f"r{made['request']}" / made["child"] / "certificate.json").read_text())
    cert.update(request=77, passed=False, verdict="failed", outcome="rejected")
    cert["models"]["child"]["id"] = "m77"
    cert["checks"]["ta_drop"].update(limit=0.01, passed=False)
    folder = root / "reports" / "r77" / "m77"
    folder.mkdir(parents=True)
    (folder / "certificate.json").write_text(json.dumps(cert))
    with Workspace.open(root) as ws:
        html = render_report(ws, "r77")
        with pytest.raises(NotFound):
            render_report(ws, "r78")
    _self_contained(html)
    assert '<div class="word">FAILED</div>' in html and "nothing was erased" in html
    assert "Unlearned model m77" in html and "not committed" in html
    checks = {c[0]: c[-1] for c in _cells(_table(html, "checks"))}
    assert checks["ta_drop"] == "✘ FAIL" and checks["changed"] == "✔ pass"


def test_reference_free_report(made_free: dict[str, Any]):
    """A reference-free certificate's report has no reference anywhere (no column, no lineage node, no Avg Gap, no
    caption about one): it names its evidence level, says what that proves and does not, shows the verdict, the
    checks against the level of unseen data, the robustness attacks without a floor and the cost against the
    original's training."""
    cert = made_free["cert"]
    assert cert["evidence"] == "reference-free" and "reference" not in cert["models"]
    with Workspace.open(made_free["root"]) as ws:
        html = render_report(ws, str(made_free["request"]))
    _self_contained(html)
    text = unescape(html)
    assert '<div class="word">PASSED</div>' in html and cert["verdict"] == "passed"
    assert "reference-free evidence" in html and "No model was retrained" in text
    assert cert["proves"] in text and cert["does_not_prove"] in text
    assert "What this proves" in html and "What it does not prove" in html
    # no reference: not in the figures table, the lineage, the cards, the plots or their captions
    assert "retrained reference" not in html and "Avg Gap" not in html
    figures = _table(html, "figures")
    assert re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", figures) == ["figure", "original", "unlearned"]
    assert _cells(figures) == [list(r) for r in figure_rows(cert)]
    assert all(len(row) == 3 for row in _cells(figures))
    lineage = re.search(r'<div class="lineage">.*?</svg>', html, re.S).group(0)
    assert "#2f9e44" not in lineage and "held-out data" in lineage
    assert f"{cert['records']['heldout_matched']} records, by {cert['records']['matched_by']}" in lineage
    assert "reference's" not in text and "the reference" not in text
    # the checks against unseen data, decisive first; utility against the original
    checks = _cells(_table(html, "checks"))
    assert [c[0].replace("decisive", "") for c in checks] == [r[0] for r in check_rows(cert)]
    assert "the level of unseen data" in checks[0][1] and "against the original" in text
    # robustness without a floor
    robustness = _table(html, "robustness")
    assert [c for c in _cells(robustness)] == [list(r) for r in robustness_rows(cert)]
    assert "floor" not in robustness and "no floor to compare with" in text
    # cost: method and verification against the original's training
    s = cert["seconds"]
    assert s["retrain"] is None
    assert f"{s['verification']:.2f} s" in html and f"{s['training']:.2f} s" in html
    assert f"{100 * cert['verified_time_ratio']:.1f}% of training the original" in html
    assert html.count("<svg") >= 5


def test_indistinguishable_is_never_shown_as_a_pass(made_free: dict[str, Any], tmp_path: Path):
    """A certificate whose original was already within the noise of the target says so, in a neutral colour, and
    never as a pass; so does the request it belongs to."""
    root = tmp_path / "ws"
    shutil.copytree(made_free["root"], root)
    cert_path = root / "reports" / f"r{made_free['request']}" / made_free["child"] / "certificate.json"
    cert = json.loads(cert_path.read_text())
    cert.update(verdict="indistinguishable", passed=False)
    for check in cert["checks"].values():
        if check.get("decisive"):
            check["indistinguishable"] = True
    cert_path.write_text(json.dumps(cert))
    with Workspace.open(root) as ws:
        html = render_report(ws, str(made_free["request"]))
    word = VERDICTS["indistinguishable"]
    assert f'<div class="word">{word}</div>' in html and ">PASSED<" not in html
    assert f'class="pill v-{word.replace(" ", "-")}"' in html and "This is not a pass" in html
    css = re.search(rf"\.v-{word.replace(' ', '-')} {{([^}}]*)}}", html).group(1)
    assert "var(--neutral)" in css and "--pass" not in css
    assert _cells(_table(html, "checks"))[0][-1] == "✔ pass (original within noise)"


def test_request_verdict_from_its_models():
    """A request passes only when every model passed; any failure fails it; a mix of passed and indistinguishable
    is indistinguishable, never a pass."""
    passed, failed, same = VERDICTS["passed"], VERDICTS["failed"], VERDICTS["indistinguishable"]
    assert _overall([passed, passed]) == passed
    assert _overall([passed, same]) == same == _overall([same])
    assert _overall([same, failed, passed]) == failed
    assert _overall([passed, "NOT VERIFIED"]) == "NOT VERIFIED" == _overall([])


def test_template_ships_in_the_package():
    """The template is package data (found through importlib.resources and declared in pyproject.toml)."""
    assert resources.files("disgorge.report").joinpath("templates", "report.html.j2").is_file()
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "templates/*.j2" in pyproject["tool"]["setuptools"]["package-data"]["disgorge.report"]
    deps = " ".join(pyproject["project"]["dependencies"])
    assert "jinja2" in deps and "matplotlib" in deps


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no chromium, chromium-browser or google-chrome binary on PATH (apt-get install chromium)")
    return found


def _browse(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` in headless Chromium with name resolution off (a fetch could not succeed)."""
    return subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                           "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_report_renders_in_a_browser(ws: Workspace, made: dict[str, Any], tmp_path: Path):
    """Headless Chromium renders the page with no console message at all, the rendered DOM holds the verdict and
    the figures, and a screenshot is drawn. (A page with a script error shows the console check can fail.)"""
    browser = _chromium()
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>notAFunction()</script></body></html>")
    assert any("Uncaught" in line for line in _console(_browse(browser, broken, "--dump-dom").stderr))

    page = write_report_html(ws, str(made["request"]), tmp_path / "report.html")
    run = _browse(browser, page, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    dom = run.stdout
    assert '<div class="word">PASSED</div>' in dom and "contributor-07" in dom
    assert _cells(_table(dom, "figures")) == [list(r) for r in figure_rows(made["cert"])]
    assert dom.count("<svg") >= 5

    shot = tmp_path / "report.png"
    run = _browse(browser, page, f"--screenshot={shot}", "--window-size=1280,3000", "--hide-scrollbars")
    assert run.returncode == 0 and _console(run.stderr) == []
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1280)
    ink = (pixels.mean(-1) < 0.5).mean()  # dark pixels: text, rules, plot lines
    assert 0.005 < ink < 0.5, f"a drawn page, not a blank or black one ({ink:.3%} dark)"
